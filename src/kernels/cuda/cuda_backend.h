// The CUDA backend's public face: plain C++, no CUDA headers, and the same in every build. In a
// build without CUDA (TESSERA_CUDA off, or no nvcc) these functions say so instead of failing to
// link, so that the engine and the CLI need no #ifdefs.
#pragma once

#include <memory>
#include <string>

#include "kernels/backend.h"

namespace tessera {

// Whether this build has the CUDA backend.
bool cuda_backend_built();

// CUDA devices this process can use: 0 without the backend, a driver or a GPU, with the reason
// in *why_none when given.
int cuda_device_count(std::string* why_none = nullptr);

struct CudaBackendOptions {
  int device = 0;  // CUDA device index (ranks on one node take their local rank)
};

// The backend on one device. Throws tessera::Error (kUnavailable) when the build has no CUDA
// backend or the device cannot be used, naming the reason.
std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options);

// What work on a CUDA backend's tensors must be ordered with (NCCL's collectives go on the
// backend's one stream): its cudaStream_t, as a plain pointer, and its device index. CHECKs that
// `backend` is the CUDA backend.
struct CudaQueue {
  void* stream = nullptr;
  int device = 0;
  std::string uuid;  // the GPU's 16-byte UUID: the same GPU whatever CUDA_VISIBLE_DEVICES says
};
CudaQueue cuda_queue_of(Backend& backend);

}  // namespace tessera
