// Activation buffers that models reuse from step to step.
#pragma once

#include "core/tensor.h"
#include "kernels/backend.h"

namespace tessera {

// A [rows, width] f32 view of a buffer that grows to the largest batch seen.
class Scratch {
 public:
  Tensor get(Backend& backend, int64_t rows, int64_t width) {
    if (rows * width > capacity_) {
      capacity_ = rows * width;
      buffer_ = Tensor();  // the old buffer goes first: growing must not hold both at once
      buffer_ = backend.empty({capacity_}, DType::kF32);
    }
    return buffer_.slice(0, 0, rows * width).reshape({rows, width});
  }

 private:
  Tensor buffer_;
  int64_t capacity_ = 0;
};

}  // namespace tessera
