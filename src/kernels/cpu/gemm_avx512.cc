// AVX-512 GEMM for weights in their stored [n, k] layout. Each output keeps its own 16-lane
// accumulator along k ("dot along k"), so weights are read in place, row by row, and an output's
// additions happen in one fixed order whatever tile computes it. All weights meet f32
// activations in f32 FMAs: bf16 weights through the even/odd split below, f32 and f16 weights
// converted per 16 lanes.
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
  if constexpr (Shape::kRows >= 5)
    if (rm == 5) return dispatch_rn<Tile, Shape, 5>(rn, args...);
  if constexpr (Shape::kRows >= 6)
    if (rm == 6) return dispatch_rn<Tile, Shape, 6>(rn, args...);
  if constexpr (Shape::kRows >= 7)
    if (rm == 7) return dispatch_rn<Tile, Shape, 7>(rn, args...);
  if constexpr (Shape::kRows >= 8)
    if (rm == 8) return dispatch_rn<Tile, Shape, 8>(rn, args...);
  TESSERA_CHECK(false) << "tile height " << rm;
}

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

// bf16 weights times f32 activations with f32 FMAs. On this generation of cores vdpbf16ps
// issues one per ~2 cycles (32 products) while f32 FMAs issue two per cycle (32 products), so
// converting weights to f32 is twice as fast as the bf16 dot product, and keeps activations
// in full f32. A 64-byte load of 32 bf16 weights holds pairs (w[2l], w[2l+1]) in each 32-bit
// lane: a shift left by 16 gives f32 w[2l], masking the low half gives f32 w[2l+1]. Activations
// are packed (pack_rows) into the matching even/odd order, so every output accumulates, per
// group of 32 columns, fma(even) then fma(odd) into one 16-lane accumulator: the same sequence
// of operations in both kernels below, whatever m is (batch invariance).
//
// Two kernels with identical arithmetic: tile_bf16_direct converts weights in registers (few
// rows: decode); tile_bf16_panel reads weights converted once into an f32 panel in L1 and
// reused by every row tile of a block (many rows: prefill).

inline __m512 even_f32(__m512i v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}
inline __m512 odd_f32(__m512i v) {
  return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

// Software prefetch distance along each weight row: the hardware prefetcher follows one stream
// per page well but a tile reads RN rows at once.
constexpr int64_t kPrefetchBytes = 1024;

template <int RM, int RN>
__attribute__((noinline)) void tile_bf16_direct(const float* a, int64_t lda, const uint16_t* w,
                                                int64_t ldw, int64_t k, float* c, int64_t ldc,
                                                const float* bias) {
  __m512 acc[RM][RN];
#pragma GCC unroll 16
  for (int i = 0; i < RM; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < RN; ++j) acc[i][j] = _mm512_setzero_ps();
  auto step = [&](int64_t kk, __mmask32 mask, bool masked) __attribute__((always_inline)) {
    __m512 ae[RM], ao[RM];
#pragma GCC unroll 16
    for (int i = 0; i < RM; ++i) {
      ae[i] = _mm512_loadu_ps(a + i * lda + kk);
      ao[i] = _mm512_loadu_ps(a + i * lda + kk + 16);
    }
#pragma GCC unroll 16
    for (int j = 0; j < RN; ++j) {
      const uint16_t* wp = w + j * ldw + kk;
      if (!masked) _mm_prefetch(reinterpret_cast<const char*>(wp) + kPrefetchBytes, _MM_HINT_T0);
      const __m512i v = masked ? _mm512_maskz_loadu_epi16(mask, wp) : _mm512_loadu_si512(wp);
      const __m512 we = even_f32(v), wo = odd_f32(v);
#pragma GCC unroll 16
      for (int i = 0; i < RM; ++i) {
        acc[i][j] = _mm512_fmadd_ps(ae[i], we, acc[i][j]);
        acc[i][j] = _mm512_fmadd_ps(ao[i], wo, acc[i][j]);
      }
    }
  };
  int64_t kk = 0;
  for (; kk + 32 <= k; kk += 32) step(kk, 0, false);
  if (kk < k) step(kk, _cvtu32_mask32((1u << (k - kk)) - 1u), true);
  store_tile<RM, RN>(acc, c, ldc, bias);
}

// Weight rows [0, RN) of columns [k0, k1) converted to f32, row r at panel + r * ldp, each
// group of 32 as even then odd (exactly the vectors tile_bf16_direct makes).
inline void convert_panel(const uint16_t* w, int64_t ldw, int rn, int64_t k0, int64_t k1, int64_t k,
                          float* panel, int64_t ldp) {
#pragma GCC unroll 16
  for (int r = 0; r < rn; ++r) {
    float* p = panel + r * ldp;
    for (int64_t kk = k0; kk < k1; kk += 32) {
      const uint16_t* wp = w + r * ldw + kk;
      const __m512i v = kk + 32 <= k
                            ? _mm512_loadu_si512(wp)
                            : _mm512_maskz_loadu_epi16(_cvtu32_mask32((1u << (k - kk)) - 1u), wp);
      _mm512_store_ps(p + (kk - k0), even_f32(v));
      _mm512_store_ps(p + (kk - k0) + 16, odd_f32(v));
    }
  }
}

// Columns [k0, k1) (multiples of 32, k1 <= round_up(k, 32)) of a tile; accumulators are parked
// in `state` between column blocks (first: start from zero; last: reduce into c).
template <int RM, int RN>
__attribute__((noinline)) void tile_bf16_panel(const float* a, int64_t lda, const float* panel,
                                               int64_t ldp, int64_t k0, int64_t k1, float* state,
                                               bool first, bool last, float* c, int64_t ldc,
                                               const float* bias) {
  __m512 acc[RM][RN];
#pragma GCC unroll 16
  for (int i = 0; i < RM; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < RN; ++j)
      acc[i][j] = first ? _mm512_setzero_ps() : _mm512_load_ps(state + (i * RN + j) * 16);
  for (int64_t kk = k0; kk < k1; kk += 32) {
#pragma GCC unroll 16
    for (int half = 0; half < 32; half += 16) {
      __m512 wv[RN];
      for (int j = 0; j < RN; ++j) wv[j] = _mm512_load_ps(panel + j * ldp + (kk - k0) + half);
#pragma GCC unroll 16
      for (int i = 0; i < RM; ++i) {
        const __m512 av = _mm512_loadu_ps(a + i * lda + kk + half);
#pragma GCC unroll 16
        for (int j = 0; j < RN; ++j) acc[i][j] = _mm512_fmadd_ps(av, wv[j], acc[i][j]);
      }
    }
  }
  if (last) {
    store_tile<RM, RN>(acc, c, ldc, bias);
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < RM; ++i)
#pragma GCC unroll 16
      for (int j = 0; j < RN; ++j) _mm512_store_ps(state + (i * RN + j) * 16, acc[i][j]);
  }
}

// Few rows: tiles of up to 4 rows x 8, 8, 5, 4 weight rows, weights converted in registers.
// One row: 8 rows with a 1 KB prefetch read DRAM fastest of 16/12/8 rows and 0-2 KB (best of
// 12 interleaved rounds, three runs; differences ~15%, near the noise of the loaded machine).
struct DirectShape {
  static constexpr int kRows = 4;
  static constexpr int max_rn(int rm) { return rm == 1 ? 8 : rm == 2 ? 8 : rm == 3 ? 5 : 4; }
};
// Many rows: 4 x 6 tiles over the f32 panel (24 accumulators, 6 weights, 1 activation).
// (Measured on one core at k = 2048: 4 x 6 ~125 GFLOP/s, 6 x 4 and 5 x 5 ~110, 8 x 3 ~55.)
struct PanelShape {
  static constexpr int kRows = 4;
  static constexpr int max_rn(int rm) { return 6; }
};

struct DirectTile {
  template <int RM, int RN>
  static void run(const float* a, int64_t lda, const uint16_t* w, int64_t ldw, int64_t k, float* c,
                  int64_t ldc, const float* bias) {
    tile_bf16_direct<RM, RN>(a, lda, w, ldw, k, c, ldc, bias);
  }
};

struct PanelTile {
  template <int RM, int RN>
  static void run(const float* a, int64_t lda, const float* panel, int64_t ldp, int64_t k0,
                  int64_t k1, float* state, bool first, bool last, float* c, int64_t ldc,
                  const float* bias) {
    tile_bf16_panel<RM, RN>(a, lda, panel, ldp, k0, k1, state, first, last, c, ldc, bias);
  }
};

void gemm_bf16_direct(const float* a, int64_t lda, int64_t m, int64_t k, const uint16_t* w,
                      int64_t ldw, int64_t n, float* c, int64_t ldc, const float* bias) {
  constexpr int64_t kBlockM = 64;
  for (int64_t m0 = 0; m0 < m; m0 += kBlockM) {
    const int64_t m1 = std::min(m, m0 + kBlockM);
    const int rows_main = static_cast<int>(std::min<int64_t>(DirectShape::kRows, m1 - m0));
    const int rn_main = DirectShape::max_rn(rows_main);
    for (int64_t j = 0; j < n; j += rn_main) {
      const int rn = static_cast<int>(std::min<int64_t>(rn_main, n - j));
      for (int64_t i = m0; i < m1; i += DirectShape::kRows) {
        const int rm = static_cast<int>(std::min<int64_t>(DirectShape::kRows, m1 - i));
        dispatch_tile<DirectTile, DirectShape>(rm, rn, a + i * lda, lda, w + j * ldw, ldw, k,
                                               c + i * ldc + j, ldc, bias ? bias + j : nullptr);
      }
    }
  }
}

// Blocks of kBlockM rows x kBlockK columns of activations (512 KB) stay in L2 while each
// 6 x kBlockK f32 weight panel (24 KB) is converted once and reused from L1 by all the block's
// row tiles.
void gemm_bf16_panel(const float* a, int64_t lda, int64_t m, int64_t k, const uint16_t* w,
                     int64_t ldw, int64_t n, float* c, int64_t ldc, const float* bias) {
  constexpr int64_t kBlockM = 128, kBlockK = 1024;
  constexpr int kRows = PanelShape::kRows, kWidth = PanelShape::max_rn(kRows);
  constexpr int64_t kLdp = kBlockK + 16;  // padded: rows of the panel fall in different L1 sets
  alignas(64) float panel[kWidth * kLdp];
  alignas(64) float state[kBlockM / kRows][kRows * kWidth * 16];
  const int64_t kp = round_up(k, 32);
  const int64_t kblocks = (kp + kBlockK - 1) / kBlockK;
  for (int64_t m0 = 0; m0 < m; m0 += kBlockM) {
    const int64_t m1 = std::min(m, m0 + kBlockM);
    for (int64_t j = 0; j < n; j += kWidth) {
      const int rn = static_cast<int>(std::min<int64_t>(kWidth, n - j));
      const uint16_t* wj = w + j * ldw;
      const float* bj = bias ? bias + j : nullptr;
      for (int64_t kb = 0; kb < kblocks; ++kb) {
        const int64_t k0 = kb * kBlockK, k1 = std::min(kp, k0 + kBlockK);
        convert_panel(wj, ldw, rn, k0, k1, k, panel, kLdp);
        for (int64_t i = m0; i < m1; i += kRows) {
          const int rm = static_cast<int>(std::min<int64_t>(kRows, m1 - i));
          dispatch_tile<PanelTile, PanelShape>(rm, rn, a + i * lda, lda, panel, kLdp, k0, k1,
                                               state[(i - m0) / kRows], kb == 0, kb == kblocks - 1,
                                               c + i * ldc + j, ldc, bj);
        }
      }
    }
  }
}

// Below this many rows converting weights in registers is cheaper than a panel.
constexpr int64_t kPanelMinRows = 16;

void gemm_bf16_avx512(const float* a, int64_t lda, int64_t m, int64_t k, const uint16_t* w,
                      int64_t ldw, int64_t n, float* c, int64_t ldc, const float* bias) {
  if (m >= kPanelMinRows) {
    gemm_bf16_panel(a, lda, m, k, w, ldw, n, c, ldc, bias);
  } else {
    gemm_bf16_direct(a, lda, m, k, w, ldw, n, c, ldc, bias);
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

void pack_rows_avx512(const float* a, int64_t lda, int64_t m, int64_t k, float* out, int64_t ldo,
                      bool round_bf16) {
  const int64_t kp = round_up(k, 32);
  // Gathers 32 consecutive columns as 16 even then 16 odd ones.
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t i = 0; i < m; ++i) {
    const float* ai = a + i * lda;
    float* o = out + i * ldo;
    for (int64_t kk = 0; kk < kp; kk += 32) {
      __m512 v[2];
      for (int h = 0; h < 2; ++h) {
        const int64_t left = k - kk - 16 * h;
        const __mmask16 mask = left >= 16  ? 0xffff
                               : left <= 0 ? 0
                                           : static_cast<__mmask16>((1u << left) - 1u);
        v[h] = _mm512_maskz_loadu_ps(mask, ai + kk + 16 * h);
        if (round_bf16) {
          const __m256bh r = _mm512_cvtneps_pbh(v[h]);
          v[h] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)r), 16));
        }
      }
      _mm512_storeu_ps(o + kk, _mm512_permutex2var_ps(v[0], even, v[1]));
      _mm512_storeu_ps(o + kk + 16, _mm512_permutex2var_ps(v[0], odd, v[1]));
    }
  }
}

}  // namespace

GemmKernels gemm_kernels_avx512() {
  GemmKernels kernels;
  kernels.bf16_fma = true;
  kernels.gemm_bf16 = gemm_bf16_avx512;
  kernels.pack_rows = pack_rows_avx512;
  kernels.gemm_f32 = gemm_f32_avx512;
  return kernels;
}

}  // namespace tessera::cpu
