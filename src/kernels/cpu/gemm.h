// One thread's share of a matrix product with weights in their stored layout:
//   c[i * ldc + j] = sum_k a[i, k] * w[j * ldw + k] (+ bias[j]),  i < m, j < n.
// Every output is reduced over k in the same order whatever m, n or the tile it falls in, so a
// row's result does not depend on what else is in the batch (batch invariance).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace tessera::cpu {

struct GemmKernels {
  // Whether bf16 weights multiply bf16-rounded activations (a native bf16 dot product). Then the
  // caller converts `a` to bf16 rows of length round_up(k, 32), zero padded, and calls gemm_bf16.
  bool bf16_activations = false;
  void (*gemm_bf16)(const uint16_t* a, int64_t lda, int64_t m, int64_t k, const uint16_t* w,
                    int64_t ldw, int64_t n, float* c, int64_t ldc, const float* bias) = nullptr;
  // out[i, :kp] = bf16(a[i, :k]) then zeros; kp = round_up(k, 32).
  void (*to_bf16_rows)(const float* a, int64_t lda, int64_t m, int64_t k, uint16_t* out,
                       int64_t kp) = nullptr;
  // f32 activations with f32, f16 or bf16 weights (converted to f32 in registers).
  void (*gemm_f32)(const float* a, int64_t lda, int64_t m, int64_t k, const void* w, DType wdtype,
                   int64_t ldw, int64_t n, float* c, int64_t ldc, const float* bias) = nullptr;
};

GemmKernels gemm_kernels_generic();
GemmKernels gemm_kernels_avx512();

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

}  // namespace tessera::cpu
