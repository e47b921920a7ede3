// What the communicator tests share: each rank builds the same pseudo-random inputs for every
// rank, so that it can compute the expected result of a collective itself.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "core/tensor.h"

namespace tessera::testing {

// The values rank `r` contributes in test `seed`.
inline std::vector<float> rank_values(int r, int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed * 1000 + r);
  std::uniform_real_distribution<float> dist(-4.0f, 4.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// A host f32 tensor holding `v`.
inline Tensor host_f32(const std::vector<float>& v) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::kF32);
  std::copy(v.begin(), v.end(), t.data<float>());
  return t;
}

}  // namespace tessera::testing
