// Helpers shared by the tests: deterministic random tensors and comparisons.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/tensor.h"

namespace tessera::testing {

// Uniform values in [-scale, scale], stored in `dtype`.
inline Tensor random_tensor(std::initializer_list<int64_t> shape, DType dtype, uint64_t seed,
                            float scale = 1.0f) {
  Tensor t = Tensor::empty(shape, dtype);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  for (int64_t i = 0; i < t.numel(); ++i) store_from_f32(t.raw(), dtype, i, dist(rng));
  return t;
}

// Element (i, j) of a 2-d float tensor as f32, honouring strides.
inline float at(const Tensor& t, int64_t i, int64_t j) {
  const char* row = static_cast<const char*>(t.raw()) + i * t.stride(0) * dtype_size(t.dtype());
  return load_as_f32(row, t.dtype(), j);
}

inline Tensor i32_tensor(const std::vector<int32_t>& values) {
  Tensor t = Tensor::empty({static_cast<int64_t>(values.size())}, DType::kI32);
  for (size_t i = 0; i < values.size(); ++i) t.data<int32_t>()[i] = values[i];
  return t;
}

}  // namespace tessera::testing
