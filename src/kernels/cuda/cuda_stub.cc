// The CUDA backend's entry points in a build without CUDA: they say so (cuda_backend.h).
#include "core/status.h"
#include "kernels/cuda/cuda_backend.h"

namespace tessera {

bool cuda_backend_built() {
  return false;
}

int cuda_device_count(std::string* why_none) {
  if (why_none) *why_none = "this build has no CUDA backend (configure with -DTESSERA_CUDA=ON)";
  return 0;
}

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions&) {
  fail(ErrorKind::kUnavailable,
       "--device cuda: this build of tessera has no CUDA backend (it was configured without "
       "nvcc; install the CUDA toolkit and rebuild with -DTESSERA_CUDA=ON)");
}

CudaQueue cuda_queue_of(Backend&) {
  TESSERA_CHECK(false) << "this build has no CUDA backend";
  return {};
}

}  // namespace tessera
