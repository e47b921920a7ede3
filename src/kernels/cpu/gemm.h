// One thread's share of a matrix product with weights in their stored layout:
//   c[i * ldc + j] = sum_k a[i, k] * w[j * ldw + k] (+ bias[j]),  i < m, j < n.
// Every output is reduced over k in the same order whatever m, n or the tile it falls in, so a
// row's result does not depend on what else is in the batch (batch invariance).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace tessera::cpu {

struct GemmKernels {
  // Whether bf16 weights take the f32-FMA path below. Then the caller packs `a` with pack_rows
  // into f32 rows of round_up(k, 32) values, each group of 32 columns stored as its 16 even
  // columns then its 16 odd ones (zero padded), and calls gemm_bf16. That layout lets a 64-byte
  // load of 32 bf16 weights become two f32 vectors (even, odd) with one shift and one mask.
  bool bf16_fma = false;
  void (*gemm_bf16)(const float* a, int64_t lda, int64_t m, int64_t k, const uint16_t* w,
                    int64_t ldw, int64_t n, float* c, int64_t ldc, const float* bias) = nullptr;
  // out[i * ldo + (0 .. round_up(k, 32))] = a[i, :k] in the even/odd layout, zero padded;
  // round_bf16 rounds each value to bf16 first (the bf16 matmul precision, as PyTorch rounds
  // bf16 matmul inputs).
  void (*pack_rows)(const float* a, int64_t lda, int64_t m, int64_t k, float* out, int64_t ldo,
                    bool round_bf16) = nullptr;
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
