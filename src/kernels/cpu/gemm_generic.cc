// Portable GEMM: plain C++, 16 partial sums per output so the compiler can vectorise it without
// reassociating (the order of additions is fixed, hence batch invariant).
#include "core/status.h"
#include "kernels/cpu/gemm.h"

namespace tessera::cpu {
namespace {

template <typename LoadW>
void gemm_generic_impl(const float* a, int64_t lda, int64_t m, int64_t k, LoadW load_w, int64_t ldw,
                       int64_t n, float* c, int64_t ldc, const float* bias) {
  constexpr int kLanes = 16;
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i < m; ++i) {
      const float* ai = a + i * lda;
      float part[kLanes] = {};
      int64_t kk = 0;
      for (; kk + kLanes <= k; kk += kLanes)
        for (int l = 0; l < kLanes; ++l) part[l] += ai[kk + l] * load_w(j * ldw + kk + l);
      for (int l = 0; kk + l < k; ++l) part[l] += ai[kk + l] * load_w(j * ldw + kk + l);
      // Same pairing as the AVX-512 horizontal sum.
      float s8[8], s4[4];
      for (int l = 0; l < 8; ++l) s8[l] = part[l] + part[l + 8];
      for (int l = 0; l < 4; ++l) s4[l] = s8[l] + s8[l + 4];
      float sum = (s4[0] + s4[2]) + (s4[1] + s4[3]);
      c[i * ldc + j] = bias ? sum + bias[j] : sum;
    }
  }
}

void gemm_f32_generic(const float* a, int64_t lda, int64_t m, int64_t k, const void* w,
                      DType wdtype, int64_t ldw, int64_t n, float* c, int64_t ldc,
                      const float* bias) {
  switch (wdtype) {
    case DType::kF32: {
      const float* wf = static_cast<const float*>(w);
      gemm_generic_impl(
          a, lda, m, k, [wf](int64_t i) { return wf[i]; }, ldw, n, c, ldc, bias);
      return;
    }
    case DType::kBF16: {
      const uint16_t* wh = static_cast<const uint16_t*>(w);
      gemm_generic_impl(
          a, lda, m, k, [wh](int64_t i) { return bf16_to_f32(wh[i]); }, ldw, n, c, ldc, bias);
      return;
    }
    case DType::kF16: {
      const uint16_t* wh = static_cast<const uint16_t*>(w);
      gemm_generic_impl(
          a, lda, m, k, [wh](int64_t i) { return f16_to_f32(wh[i]); }, ldw, n, c, ldc, bias);
      return;
    }
    default:
      TESSERA_CHECK(false) << "gemm weight dtype " << dtype_name(wdtype);
  }
}

}  // namespace

GemmKernels gemm_kernels_generic() {
  GemmKernels kernels;
  kernels.bf16_fma = false;
  kernels.gemm_f32 = gemm_f32_generic;
  return kernels;
}

}  // namespace tessera::cpu
