// Which instruction set the CPU kernels use. Detected once at start; TESSERA_CPU_ISA=generic|avx512
// forces one (tests use it to check every path against the reference).
#pragma once

#include <string_view>

namespace tessera::cpu {

enum class Isa { kGeneric, kAvx512 };

// The best ISA this CPU supports, unless TESSERA_CPU_ISA asks for a lower one.
Isa detect_isa();
std::string_view isa_name(Isa isa);

}  // namespace tessera::cpu
