// One thread's share of a matrix product with weights in their stored layout:
//   c[i * ldc + j] = sum_k a[i, k] * w[j * ldw + k] (+ bias[j]),  i < m, j < n.
// Every output is reduced over k in the same order whatever m, n or the tile it falls in, so a
// row's result does not depend on what else is in the batch (batch invariance).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace tessera::cpu {

struct GemmKernels {
  // Whether bf16 weights use the native bf16 dot product. Then the caller splits `a` into bf16
  // rows hi = bf16(a) and (exact precision) lo = bf16(a - hi), each round_up(k, 32) long and zero
  // padded, and calls gemm_bf16; lo == nullptr multiplies by hi alone (bf16 precision).
  bool bf16_dot = false;
  void (*gemm_bf16)(const uint16_t* hi, const uint16_t* lo, int64_t lda, int64_t m, int64_t k,
                    const uint16_t* w, int64_t ldw, int64_t n, float* c, int64_t ldc,
                    const float* bias) = nullptr;
  // hi[i, :kp] = bf16(a[i, :k]), lo[i, :kp] = bf16(a - hi) (when lo != nullptr), then zeros.
  void (*to_bf16_rows)(const float* a, int64_t lda, int64_t m, int64_t k, uint16_t* hi,
                       uint16_t* lo, int64_t kp) = nullptr;
  // f32 activations with f32, f16 or bf16 weights (converted to f32 in registers).
  void (*gemm_f32)(const float* a, int64_t lda, int64_t m, int64_t k, const void* w, DType wdtype,
                   int64_t ldw, int64_t n, float* c, int64_t ldc, const float* bias) = nullptr;
};

GemmKernels gemm_kernels_generic();
GemmKernels gemm_kernels_avx512();

inline int64_t round_up(int64_t x, int64_t m) {
  return (x + m - 1) / m * m;
}

}  // namespace tessera::cpu
