// Portable GEMM: plain C++, 16 partial sums per output so the compiler can vectorise it without
// reassociating (the order of additions is fixed, hence batch invariant).
#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
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

void pack_bf16_tiles(const uint16_t* w, int64_t ldw, int64_t n, int64_t k, uint16_t* packed,
                     int64_t g_begin, int64_t g_end) {
  const int64_t full = k / 2, stride = tile_stride(k);
  for (int64_t g = g_begin; g < g_end; ++g) {
    uint16_t* out = packed + g * stride;
    const int rows = static_cast<int>(std::clamp<int64_t>(n - g * 16, 0, 16));
    const uint16_t* row[16];
    for (int l = 0; l < rows; ++l) row[l] = w + (g * 16 + l) * ldw;
    // Pair p of the 16 columns is 32 consecutive values; the 16 source rows are read in step.
    for (int64_t p = 0; p < full; ++p) {
      uint16_t* o = out + p * 32;
      int l = 0;
      for (; l < rows; ++l) {
        o[2 * l] = row[l][2 * p];
        o[2 * l + 1] = row[l][2 * p + 1];
      }
      for (; l < 16; ++l) o[2 * l] = o[2 * l + 1] = 0;
    }
    if (k % 2 == 1) {
      uint16_t* o = out + full * 32;
      for (int l = 0; l < 16; ++l) {
        o[2 * l] = l < rows ? row[l][k - 1] : 0;
        o[2 * l + 1] = 0;
      }
    }
  }
}

void pack_fp8_tiles(const void* w, DType dtype, int64_t ldw, int64_t n, int64_t k,
                    const float* row_absmax, uint8_t* packed, int64_t g_begin, int64_t g_end) {
  float* scales = reinterpret_cast<float*>(packed + fp8_scales_offset(n, k));
  const size_t elem = dtype_size(dtype);
  std::vector<float> row(static_cast<size_t>(k));
  for (int64_t g = g_begin; g < g_end; ++g) {
    uint8_t* out = packed + g * 16 * k;
    for (int l = 0; l < 16; ++l) {
      const int64_t j = g * 16 + l;
      if (j >= n) {
        scales[j] = 1.0f;
        for (int64_t i = 0; i < k; ++i) out[i * 16 + l] = 0;
        continue;
      }
      const char* src = static_cast<const char*>(w) + static_cast<size_t>(j * ldw) * elem;
      float amax = 0.0f;
      for (int64_t i = 0; i < k; ++i) {
        row[i] = load_as_f32(src, dtype, i);
        amax = std::max(amax, std::fabs(row[i]));
      }
      if (row_absmax) amax = row_absmax[j];
      const float scale = amax > 0.0f && std::isfinite(amax) ? amax / kFp8E4M3Max : 1.0f;
      scales[j] = scale;
      for (int64_t i = 0; i < k; ++i) out[i * 16 + l] = f32_to_fp8_e4m3(row[i] / scale);
    }
  }
}

void pack_fp8_codes(const uint8_t* q, int64_t ldq, int64_t n, int64_t k, const float* row_scales,
                    uint8_t* packed, int64_t g_begin, int64_t g_end) {
  float* scales = reinterpret_cast<float*>(packed + fp8_scales_offset(n, k));
  for (int64_t g = g_begin; g < g_end; ++g) {
    uint8_t* out = packed + g * 16 * k;
    for (int l = 0; l < 16; ++l) {
      const int64_t j = g * 16 + l;
      if (row_scales) scales[j] = j < n ? row_scales[j] : 1.0f;
      const uint8_t* row = q + j * ldq;
      for (int64_t i = 0; i < k; ++i) out[i * 16 + l] = j < n ? row[i] : 0;
    }
  }
}

namespace {

// Columns [lo, hi) of a packed FP8 weight, one output at a time (the reference order).
void gemm_fp8_generic(const float* a, int64_t lda, int64_t m, int64_t k, const uint8_t* packed,
                      int64_t n, int64_t lo, int64_t hi, float* c, int64_t ldc, const float* bias) {
  TESSERA_CHECK(lda >= k) << "the generic FP8 kernel reads row-major activations";
  static const std::array<float, 256> lut = [] {  // every code's value, made once
    std::array<float, 256> t{};
    for (int v = 0; v < 256; ++v) t[v] = fp8_e4m3_to_f32(static_cast<uint8_t>(v));
    return t;
  }();
  const float* scales = packed_fp8_scales(packed, n, k);
  for (int64_t i = 0; i < m; ++i) {
    const float* ai = a + i * lda;
    for (int64_t j = lo; j < hi; ++j) {
      const uint8_t* q = packed + (j / 16) * 16 * k + j % 16;
      float acc = 0.0f;
      for (int64_t kk = 0; kk < k; ++kk) acc = std::fma(ai[kk], lut[q[kk * 16]], acc);
      float v = acc * scales[j];
      if (bias) v += bias[j];
      c[i * ldc + j] = v;
    }
  }
}

// The same for a range of inputs of a wider weight (group stride gs).
void gemm_fp8_codes_generic(const float* a, int64_t lda, int64_t tile_k, int64_t m, int64_t k,
                            const uint8_t* codes, int64_t gs, const float* scale, int64_t lo,
                            int64_t hi, float* c, int64_t ldc) {
  TESSERA_CHECK(tile_k == 0) << "the generic FP8 kernel reads row-major activations";
  static const std::array<float, 256> lut = [] {
    std::array<float, 256> t{};
    for (int v = 0; v < 256; ++v) t[v] = fp8_e4m3_to_f32(static_cast<uint8_t>(v));
    return t;
  }();
  for (int64_t i = 0; i < m; ++i) {
    const float* ai = a + i * lda;
    for (int64_t j = lo; j < hi; ++j) {
      const uint8_t* q = codes + (j / 16) * gs + j % 16;
      float acc = 0.0f;
      for (int64_t kk = 0; kk < k; ++kk) acc = std::fma(ai[kk], lut[q[kk * 16]], acc);
      c[i * ldc + j] = acc * scale[j];
    }
  }
}

}  // namespace

GemmKernels gemm_kernels_generic() {
  GemmKernels kernels;
  kernels.bf16_packed = false;
  kernels.gemm_f32 = gemm_f32_generic;
  kernels.gemm_fp8 = gemm_fp8_generic;
  kernels.gemm_fp8_codes = gemm_fp8_codes_generic;
  return kernels;
}

}  // namespace tessera::cpu
