// AVX-512 GEMM for weights in their stored [n, k] layout. Each output keeps its own 16-lane
// accumulator along k ("dot along k"), so weights are read in place, row by row, and an output's
// additions happen in one fixed order whatever tile computes it. bf16 weights use the native bf16
// dot product (vdpbf16ps) on bf16-rounded activations, as PyTorch's bf16 matmul rounds its
// inputs; f32 and f16 weights use f32 FMAs.
#include <immintrin.h>

#include <algorithm>

#include "core/status.h"
#include "kernels/cpu/gemm.h"

namespace tessera::cpu {
namespace {

// Horizontal sum; the pairing is: (l_i + l_{i+8}), then (+4), then (x0 + x2) + (x1 + x3).
inline float hsum(__m512 v) {
  __m256 lo = _mm512_castps512_ps256(v);
  __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  __m256 s8 = _mm256_add_ps(lo, hi);
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  __m128 s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
  return _mm_cvtss_f32(s1);
}

// Four horizontal sums at once with exactly the additions of hsum() for each.
inline __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                            _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0)),
                            _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2)));
  __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
  __m512 t = _mm512_add_ps(s, _mm512_permute_ps(s, _MM_SHUFFLE(1, 0, 3, 2)));
  __m512 u = _mm512_add_ps(t, _mm512_permute_ps(t, _MM_SHUFFLE(2, 3, 0, 1)));
  const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_castps512_ps128(_mm512_permutexvar_ps(idx, u));
}

template <int RM, int RN>
inline void store_tile(__m512 (&acc)[RM][RN], float* c, int64_t ldc, const float* bias) {
  for (int i = 0; i < RM; ++i) {
    int j = 0;
    for (; j + 4 <= RN; j += 4) {
      __m128 s = hsum4(acc[i][j], acc[i][j + 1], acc[i][j + 2], acc[i][j + 3]);
      if (bias) s = _mm_add_ps(s, _mm_loadu_ps(bias + j));
      _mm_storeu_ps(c + i * ldc + j, s);
    }
    for (; j < RN; ++j) {
      float s = hsum(acc[i][j]);
      c[i * ldc + j] = bias ? s + bias[j] : s;
    }
  }
}

// bf16 x bf16 tile. The activations come as hi = bf16(a) and, in exact mode, lo = bf16(a - hi):
// two dot products per step recover a to about 16 bits of mantissa, so bf16 weights meet
// f32-accurate activations at half the bf16 rate (still twice the f32 FMA rate). Both are zero
// padded to a multiple of 32 columns; w is read with a tail mask. Weights stream one row at a
// time across the rows of activations held in registers.
//
// Columns [k0, k1) only: long rows are done in blocks whose accumulators are parked in `state`
// between blocks (first: start from zero; last: reduce into c), which keeps a block's weights
// and activations in L1 and changes no result bit.
template <int RM, int RN, bool kSplit>
void tile_bf16(const uint16_t* hi, const uint16_t* lo, int64_t lda, const uint16_t* w, int64_t ldw,
               int64_t k0, int64_t k1, float* state, bool first, bool last, float* c, int64_t ldc,
               const float* bias) {
  __m512 acc[RM][RN];
  for (int i = 0; i < RM; ++i)
    for (int j = 0; j < RN; ++j)
      acc[i][j] = first ? _mm512_setzero_ps() : _mm512_load_ps(state + (i * RN + j) * 16);
  auto step = [&](int64_t kk, __mmask32 mask, bool masked) {
    __m512i ah[RM], al[RM];
    for (int i = 0; i < RM; ++i) {
      ah[i] = _mm512_loadu_si512(hi + i * lda + kk);
      if constexpr (kSplit) al[i] = _mm512_loadu_si512(lo + i * lda + kk);
    }
    for (int j = 0; j < RN; ++j) {
      const __m512i b = masked ? _mm512_maskz_loadu_epi16(mask, w + j * ldw + kk)
                               : _mm512_loadu_si512(w + j * ldw + kk);
      for (int i = 0; i < RM; ++i) {
        acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)ah[i], (__m512bh)b);
        if constexpr (kSplit) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)al[i], (__m512bh)b);
      }
    }
  };
  int64_t kk = k0;
  for (; kk + 32 <= k1; kk += 32) step(kk, 0, false);
  if (kk < k1) step(kk, _cvtu32_mask32((1u << (k1 - kk)) - 1u), true);
  if (last) {
    store_tile<RM, RN>(acc, c, ldc, bias);
  } else {
    for (int i = 0; i < RM; ++i)
      for (int j = 0; j < RN; ++j) _mm512_store_ps(state + (i * RN + j) * 16, acc[i][j]);
  }
}

template <DType W>
inline __m512 load_w16(const void* w, int64_t offset, __mmask16 mask) {
  if constexpr (W == DType::kF32) {
    return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(w) + offset);
  } else if constexpr (W == DType::kBF16) {
    __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(w) + offset);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(w) + offset);
    return _mm512_cvtph_ps(h);
  }
}

// f32 activations times f32/f16/bf16 weights converted to f32.
template <DType W, int RM, int RN>
void tile_f32(const float* a, int64_t lda, const void* w, int64_t ldw, int64_t k, float* c,
              int64_t ldc, const float* bias) {
  __m512 acc[RM][RN];
  for (int i = 0; i < RM; ++i)
    for (int j = 0; j < RN; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t kk = 0;
  const __mmask16 full = 0xffff;
  for (; kk + 16 <= k; kk += 16) {
    __m512 b[RN];
    for (int j = 0; j < RN; ++j) b[j] = load_w16<W>(w, j * ldw + kk, full);
    for (int i = 0; i < RM; ++i) {
      __m512 av = _mm512_loadu_ps(a + i * lda + kk);
      for (int j = 0; j < RN; ++j) acc[i][j] = _mm512_fmadd_ps(av, b[j], acc[i][j]);
    }
  }
  if (kk < k) {
    __mmask16 mask = static_cast<__mmask16>((1u << (k - kk)) - 1u);
    __m512 b[RN];
    for (int j = 0; j < RN; ++j) b[j] = load_w16<W>(w, j * ldw + kk, mask);
    for (int i = 0; i < RM; ++i) {
      __m512 av = _mm512_maskz_loadu_ps(mask, a + i * lda + kk);
      for (int j = 0; j < RN; ++j) acc[i][j] = _mm512_fmadd_ps(av, b[j], acc[i][j]);
    }
  }
  store_tile<RM, RN>(acc, c, ldc, bias);
}

// Tile shapes (16 accumulators each): kRows activation rows at most, and the widest run of
// weight rows for a given number of activation rows.
struct Bf16Shape {
  static constexpr int kRows = 2;
  static constexpr int max_rn(int rm) { return 8; }
};
struct F32Shape {
  static constexpr int kRows = 4;
  static constexpr int max_rn(int rm) { return rm == 1 ? 8 : rm == 2 ? 8 : rm == 3 ? 5 : 4; }
};

// Calls Tile::run<RM, RN> for runtime rm <= Shape::kRows, rn <= Shape::max_rn(rm).
template <typename Tile, typename Shape, int RM, int RN = 1, typename... Args>
inline void dispatch_rn(int rn, Args... args) {
  if constexpr (RN <= Shape::max_rn(RM)) {
    if (rn == RN) return Tile::template run<RM, RN>(args...);
    return dispatch_rn<Tile, Shape, RM, RN + 1>(rn, args...);
  } else {
    TESSERA_CHECK(false) << "tile width " << rn;
  }
}

template <typename Tile, typename Shape, typename... Args>
inline void dispatch_tile(int rm, int rn, Args... args) {
  if constexpr (Shape::kRows >= 1)
    if (rm == 1) return dispatch_rn<Tile, Shape, 1>(rn, args...);
  if constexpr (Shape::kRows >= 2)
    if (rm == 2) return dispatch_rn<Tile, Shape, 2>(rn, args...);
  if constexpr (Shape::kRows >= 3)
    if (rm == 3) return dispatch_rn<Tile, Shape, 3>(rn, args...);
  if constexpr (Shape::kRows >= 4)
    if (rm == 4) return dispatch_rn<Tile, Shape, 4>(rn, args...);
  TESSERA_CHECK(false) << "tile height " << rm;
}

template <bool kSplit>
struct Bf16Tile {
  template <int RM, int RN>
  static void run(const uint16_t* hi, const uint16_t* lo, int64_t lda, const uint16_t* w,
                  int64_t ldw, int64_t k0, int64_t k1, float* state, bool first, bool last,
                  float* c, int64_t ldc, const float* bias) {
    tile_bf16<RM, RN, kSplit>(hi, lo, lda, w, ldw, k0, k1, state, first, last, c, ldc, bias);
  }
};

template <DType W>
struct F32Tile {
  template <int RM, int RN>
  static void run(const float* a, const float* /*unused*/, int64_t lda, const void* w, int64_t ldw,
                  int64_t k, float* c, int64_t ldc, const float* bias) {
    tile_f32<W, RM, RN>(a, lda, w, ldw, k, c, ldc, bias);
  }
};

// Loops over tiles: blocks of kBlockM activation rows stay in L2 while each tile of weight rows
// is reused from L1 across them.
template <typename Tile, typename Shape, typename A, typename WPtr>
void gemm_blocked(const A* a, const A* a2, int64_t lda, int64_t m, int64_t k, WPtr w, size_t w_elem,
                  int64_t ldw, int64_t n, float* c, int64_t ldc, const float* bias) {
  constexpr int64_t kBlockM = 64;
  const char* wb = static_cast<const char*>(static_cast<const void*>(w));
  for (int64_t m0 = 0; m0 < m; m0 += kBlockM) {
    const int64_t m1 = std::min(m, m0 + kBlockM);
    const int rows_main = static_cast<int>(std::min<int64_t>(Shape::kRows, m1 - m0));
    const int rn_main = Shape::max_rn(rows_main);
    for (int64_t j = 0; j < n; j += rn_main) {
      const int rn = static_cast<int>(std::min<int64_t>(rn_main, n - j));
      const WPtr wj =
          static_cast<WPtr>(static_cast<const void*>(wb + static_cast<size_t>(j * ldw) * w_elem));
      const float* bj = bias ? bias + j : nullptr;
      for (int64_t i = m0; i < m1; i += Shape::kRows) {
        const int rm = static_cast<int>(std::min<int64_t>(Shape::kRows, m1 - i));
        // rn <= max_rn(rm) holds because max_rn falls as rows grow and rm <= rows_main.
        dispatch_tile<Tile, Shape>(rm, rn, a + i * lda, a2 ? a2 + i * lda : nullptr, lda, wj, ldw,
                                   k, c + i * ldc + j, ldc, bj);
      }
    }
  }
}

// Blocks of kBlockM activation rows x block_k columns stay in L2 while each tile of weight rows
// (8 x block_k) is reused from L1 across the block's rows.
template <bool kSplit>
void gemm_bf16_blocked(const uint16_t* hi, const uint16_t* lo, int64_t lda, int64_t m, int64_t k,
                       const uint16_t* w, int64_t ldw, int64_t n, float* c, int64_t ldc,
                       const float* bias) {
  constexpr int64_t kBlockM = 64;
  constexpr int kRows = Bf16Shape::kRows, kWidth = Bf16Shape::max_rn(kRows);
  alignas(64) float state[kBlockM / kRows][kRows * kWidth * 16];
  // Few rows (decode) stream the weights once whatever k is: no blocking.
  const int64_t block_k = m >= 16 ? 2048 : k;
  const int64_t kblocks = (k + block_k - 1) / block_k;
  for (int64_t m0 = 0; m0 < m; m0 += kBlockM) {
    const int64_t m1 = std::min(m, m0 + kBlockM);
    for (int64_t j = 0; j < n; j += kWidth) {
      const int rn = static_cast<int>(std::min<int64_t>(kWidth, n - j));
      const uint16_t* wj = w + j * ldw;
      const float* bj = bias ? bias + j : nullptr;
      for (int64_t kb = 0; kb < kblocks; ++kb) {
        const int64_t k0 = kb * block_k, k1 = std::min(k, k0 + block_k);
        for (int64_t i = m0; i < m1; i += kRows) {
          const int rm = static_cast<int>(std::min<int64_t>(kRows, m1 - i));
          dispatch_tile<Bf16Tile<kSplit>, Bf16Shape>(
              rm, rn, hi + i * lda, lo ? lo + i * lda : nullptr, lda, wj, ldw, k0, k1,
              state[(i - m0) / kRows], kb == 0, kb == kblocks - 1, c + i * ldc + j, ldc, bj);
        }
      }
    }
  }
}

void gemm_bf16_avx512(const uint16_t* hi, const uint16_t* lo, int64_t lda, int64_t m, int64_t k,
                      const uint16_t* w, int64_t ldw, int64_t n, float* c, int64_t ldc,
                      const float* bias) {
  if (lo) {
    gemm_bf16_blocked<true>(hi, lo, lda, m, k, w, ldw, n, c, ldc, bias);
  } else {
    gemm_bf16_blocked<false>(hi, lo, lda, m, k, w, ldw, n, c, ldc, bias);
  }
}

void gemm_f32_avx512(const float* a, int64_t lda, int64_t m, int64_t k, const void* w, DType wdtype,
                     int64_t ldw, int64_t n, float* c, int64_t ldc, const float* bias) {
  switch (wdtype) {
    case DType::kF32:
      return gemm_blocked<F32Tile<DType::kF32>, F32Shape>(a, static_cast<const float*>(nullptr),
                                                          lda, m, k, w, 4, ldw, n, c, ldc, bias);
    case DType::kBF16:
      return gemm_blocked<F32Tile<DType::kBF16>, F32Shape>(a, static_cast<const float*>(nullptr),
                                                           lda, m, k, w, 2, ldw, n, c, ldc, bias);
    case DType::kF16:
      return gemm_blocked<F32Tile<DType::kF16>, F32Shape>(a, static_cast<const float*>(nullptr),
                                                          lda, m, k, w, 2, ldw, n, c, ldc, bias);
    default:
      TESSERA_CHECK(false) << "gemm weight dtype " << dtype_name(wdtype);
  }
}

void to_bf16_rows_avx512(const float* a, int64_t lda, int64_t m, int64_t k, uint16_t* hi,
                         uint16_t* lo, int64_t kp) {
  for (int64_t i = 0; i < m; ++i) {
    const float* ai = a + i * lda;
    for (int64_t kk = 0; kk < kp; kk += 16) {
      const int64_t left = k - kk;
      const __mmask16 mask = left >= 16  ? 0xffff
                             : left <= 0 ? 0
                                         : static_cast<__mmask16>((1u << left) - 1u);
      const __m512 v = _mm512_maskz_loadu_ps(mask, ai + kk);
      const __m256bh h = _mm512_cvtneps_pbh(v);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi + i * kp + kk), (__m256i)h);
      if (lo) {
        // The remainder v - hi is exact in f32; rounding it to bf16 keeps ~16 bits of v.
        const __m512 hv =
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16));
        const __m256bh l = _mm512_cvtneps_pbh(_mm512_sub_ps(v, hv));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo + i * kp + kk), (__m256i)l);
      }
    }
  }
}

}  // namespace

GemmKernels gemm_kernels_avx512() {
  GemmKernels kernels;
  kernels.bf16_dot = true;
  kernels.gemm_bf16 = gemm_bf16_avx512;
  kernels.to_bf16_rows = to_bf16_rows_avx512;
  kernels.gemm_f32 = gemm_f32_avx512;
  return kernels;
}

}  // namespace tessera::cpu
