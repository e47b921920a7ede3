#include "kernels/cpu/isa.h"

#include <cstdlib>
#include <string>

#include "core/status.h"

namespace tessera::cpu {

Isa detect_isa() {
  bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("fma");
  Isa best = avx512 ? Isa::kAvx512 : Isa::kGeneric;
  if (const char* forced = std::getenv("TESSERA_CPU_ISA")) {
    std::string name = forced;
    if (name == "generic") return Isa::kGeneric;
    if (name == "avx512") {
      if (!avx512)
        fail(ErrorKind::kUnsupported, "TESSERA_CPU_ISA=avx512 but this CPU lacks AVX-512 BF16");
      return Isa::kAvx512;
    }
    if (!name.empty() && name != "auto")
      fail("TESSERA_CPU_ISA={} is not one of: auto, generic, avx512", name);
  }
  return best;
}

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::kGeneric:
      return "generic";
    case Isa::kAvx512:
      return "avx512-bf16";
  }
  return "?";
}

}  // namespace tessera::cpu
