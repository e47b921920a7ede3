// Fuzz target: an arbitrary byte string as a whole safetensors file. Any tessera::Error is an
// accepted answer; a crash, hang or sanitizer report is a bug.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "loader/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = memfd_create("fuzz.safetensors", 0);
  if (fd < 0) return 0;
  if (size > 0 && write(fd, data, size) != static_cast<ssize_t>(size)) {
    close(fd);
    return 0;
  }
  try {
    auto file = tessera::SafetensorsFile::open("/proc/self/fd/" + std::to_string(fd));
    // Touch every tensor's bytes: offsets were validated, so this must stay inside the file.
    volatile uint8_t sink = 0;
    for (const auto& [name, info] : file->tensors()) {
      tessera::Tensor t = file->tensor(name);
      const auto* p = static_cast<const uint8_t*>(t.raw());
      for (size_t i = 0; i < t.nbytes(); i += 61) sink ^= p[i];
    }
  } catch (const tessera::Error&) {
  }
  close(fd);
  return 0;
}

std::vector<std::string> fuzz_default_seeds() {
  auto file = [](const std::string& header, size_t data) {
    uint64_t n = header.size();
    return std::string(reinterpret_cast<const char*>(&n), 8) + header + std::string(data, '\x01');
  };
  return {
      file(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})", 24),
      file(
          R"({"__metadata__":{"format":"pt"},"w":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]},)"
          R"("b":{"dtype":"I64","shape":[],"data_offsets":[8,16]}})",
          16),
      file("{}", 0)};
}
