// AVX-512 GEMMs. bf16 weights (the models' usual dtype) are packed once at load (gemm.h) for an
// outer-product kernel; f32 and f16 weights are read in their stored [n, k] layout, each output
// keeping its own 16-lane accumulator along k ("dot along k"). In both an output's additions
// happen in one fixed order whatever tile computes it. All products are f32 FMAs.
#include <immintrin.h>

#include <algorithm>
#include <vector>

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

// bf16 weights (packed, gemm.h) times f32 activations with f32 FMAs. On this generation of
// cores vdpbf16ps issues one per ~2 cycles (32 products) while f32 FMAs issue two per cycle (32
// products), so converting weights to f32 is twice as fast as the bf16 dot product and keeps the
// activations in full f32.
//
// An outer-product tile: RM activation rows x NG groups of 16 output columns, one 16-lane
// accumulator per (row, group), i.e. one f32 lane per output. Per pair of input columns it loads
// one 64-byte vector per group (16 columns x 2 weights), converts it to the even and odd f32
// vectors, and for each row broadcasts a[i][2p] and a[i][2p + 1] into two FMAs per group. Each
// output's additions are therefore one chain in k order, whatever tile, block or thread computes
// it: rows give the same bits in any batch. A weight vector serves RM rows and an activation
// value NG groups, so few loads feed the FMAs (12 x 2: 26 loads per 48 FMAs).

inline __m512 even_f32(__m512i v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}
inline __m512 odd_f32(__m512i v) {
  return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

// Lanes l of a group starting at column g0 with lo <= g0 + l < hi.
inline __mmask16 lane_mask(int64_t g0, int64_t lo, int64_t hi) {
  const int64_t b = std::clamp<int64_t>(lo - g0, 0, 16), e = std::clamp<int64_t>(hi - g0, 0, 16);
  if (e <= b) return 0;
  const uint32_t upto_e = e == 16 ? 0xffffu : (1u << e) - 1u;
  return static_cast<__mmask16>(upto_e & ~((1u << b) - 1u));
}

// Software prefetch this far ahead in each group's run, for every tile height: batched decode
// (5-16 rows) streams its weights from memory too, and the prefetch lifted it 1.1-1.3x
// (docs/performance.md); prefill, where later row tiles find the block in L2, is unchanged.
constexpr int64_t kPrefetchBytes = 1024;

// Rows [0, RM) of a times groups [0, NG) of packed weights (group stride gs); c and bias at the
// tile's first column; columns outside [lo, hi) (relative to it) untouched. a is row-major with
// row stride lda, or (kTiled) one tile of pack_tiles' layout, a[kk * kTileRows + i], which
// a single pointer walks (no register spills for 12 row pointers).
constexpr int kTileRows = 12;

template <int RM, int NG, bool kTiled>
__attribute__((noinline)) void tile_bf16(const float* a, int64_t lda, const uint16_t* w, int64_t gs,
                                         int64_t k, float* c, int64_t ldc, const float* bias,
                                         int64_t lo, int64_t hi) {
  auto at = [&](int i, int64_t kk) __attribute__((always_inline)) {
    return kTiled ? a[kk * kTileRows + i] : a[i * lda + kk];
  };
  __m512 acc[RM][NG];
#pragma GCC unroll 16
  for (int i = 0; i < RM; ++i)
#pragma GCC unroll 16
    for (int g = 0; g < NG; ++g) acc[i][g] = _mm512_setzero_ps();
  const int64_t full = k / 2;
#pragma GCC unroll 2
  for (int64_t p = 0; p < full; ++p) {
    __m512 we[NG], wo[NG];
#pragma GCC unroll 16
    for (int g = 0; g < NG; ++g) {
      const uint16_t* wp = w + g * gs + p * 32;
      _mm_prefetch(reinterpret_cast<const char*>(wp) + kPrefetchBytes, _MM_HINT_T0);
      const __m512i v = _mm512_loadu_si512(wp);
      we[g] = even_f32(v);
      wo[g] = odd_f32(v);
    }
#pragma GCC unroll 16
    for (int i = 0; i < RM; ++i) {
      const __m512 ae = _mm512_set1_ps(at(i, 2 * p));
#pragma GCC unroll 16
      for (int g = 0; g < NG; ++g) acc[i][g] = _mm512_fmadd_ps(ae, we[g], acc[i][g]);
      const __m512 ao = _mm512_set1_ps(at(i, 2 * p + 1));
#pragma GCC unroll 16
      for (int g = 0; g < NG; ++g) acc[i][g] = _mm512_fmadd_ps(ao, wo[g], acc[i][g]);
    }
  }
  if (k % 2 == 1) {  // the last column alone (its pair partner is zero padding)
#pragma GCC unroll 16
    for (int g = 0; g < NG; ++g) {
      const __m512 we = even_f32(_mm512_loadu_si512(w + g * gs + full * 32));
#pragma GCC unroll 16
      for (int i = 0; i < RM; ++i)
        acc[i][g] = _mm512_fmadd_ps(_mm512_set1_ps(at(i, k - 1)), we, acc[i][g]);
    }
  }
#pragma GCC unroll 16
  for (int g = 0; g < NG; ++g) {
    const __mmask16 mask = lane_mask(g * 16, lo, hi);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias + g * 16) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int i = 0; i < RM; ++i) {
      const __m512 v = bias ? _mm512_add_ps(acc[i][g], b) : acc[i][g];
      _mm512_mask_storeu_ps(c + i * ldc + g * 16, mask, v);
    }
  }
}

// Tile shapes: up to 12 rows; the widest run of groups for a given number of rows within 24
// accumulators (8 groups for 1-2 rows: 8 independent chains keep one row's FMAs flowing).
constexpr int tile_groups(int rm) {
  return rm <= 2 ? 8 : rm <= 3 ? 6 : rm <= 4 ? 4 : rm <= 6 ? 3 : 2;
}

// Calls Kernel::run<rm, ng>(args...) for runtime rm <= kTileRows and ng <= tile_groups(rm)
// (Kernel: one of the tile kernels below with its kTiled fixed).
template <class Kernel, int RM, int NG = 1, class... Args>
inline void dispatch_ng(int ng, Args... args) {
  if constexpr (NG <= tile_groups(RM)) {
    if (ng == NG) return Kernel::template run<RM, NG>(args...);
    return dispatch_ng<Kernel, RM, NG + 1>(ng, args...);
  } else {
    TESSERA_CHECK(false) << "tile width " << ng;
  }
}

template <class Kernel, int RM = 1, class... Args>
inline void dispatch_rm(int rm, int ng, Args... args) {
  if constexpr (RM <= kTileRows) {
    if (rm == RM) return dispatch_ng<Kernel, RM>(ng, args...);
    return dispatch_rm<Kernel, RM + 1>(rm, ng, args...);
  } else {
    TESSERA_CHECK(false) << "tile height " << rm;
  }
}

template <bool kTiled>
struct Bf16Tile {
  template <int RM, int NG, class... Args>
  static void run(Args... args) {
    tile_bf16<RM, NG, kTiled>(args...);
  }
};

// Blocks of output columns whose weights (~1 MB) stay in L2 while every row tile passes over
// them; within a block, row tiles of 12 rows (whose activations stay in L1/L2) sweep the groups.
// lda < 0: a is in pack_tiles' layout.
void gemm_bf16_avx512(const float* a, int64_t lda, int64_t m, int64_t k, const uint16_t* packed,
                      int64_t lo, int64_t hi, float* c, int64_t ldc, const float* bias) {
  if (lo >= hi || m == 0) return;
  const bool tiled = lda < 0;
  const int64_t gs = tile_stride(k);
  const int64_t g_lo = lo / 16, g_hi = (hi + 15) / 16;
  const int64_t block = std::clamp<int64_t>((int64_t{1} << 20) / (gs * 2), 2, 16);
  for (int64_t b0 = g_lo; b0 < g_hi; b0 += block) {
    const int64_t b1 = std::min(g_hi, b0 + block);
    for (int64_t i = 0; i < m; i += kTileRows) {
      const int rm = static_cast<int>(std::min<int64_t>(kTileRows, m - i));
      const int64_t width = tile_groups(rm);
      const float* ai = tiled ? a + i * k : a + i * lda;
      for (int64_t g = b0; g < b1; g += width) {
        const int ng = static_cast<int>(std::min(width, b1 - g));
        if (tiled) {
          dispatch_rm<Bf16Tile<true>>(rm, ng, ai, 0, packed + g * gs, gs, k, c + i * ldc + g * 16,
                                      ldc, bias ? bias + g * 16 : nullptr, lo - g * 16,
                                      hi - g * 16);
        } else {
          dispatch_rm<Bf16Tile<false>>(rm, ng, ai, lda, packed + g * gs, gs, k,
                                       c + i * ldc + g * 16, ldc, bias ? bias + g * 16 : nullptr,
                                       lo - g * 16, hi - g * 16);
        }
      }
    }
  }
}

// FP8 weights (kLayoutFp8Tiles) with f32 FMAs. One k step of a group is 16 codes. Sign-extended
// to 16 bits and shifted left by 7, a code becomes the f16 whose value is the E4M3 value times
// 2^-8 exactly (sign at bit 15, the 4 exponent bits at 10-13 with the bias 8 lower, the 3
// mantissa bits at 7-9; subnormals alike) once bit 14, a copy of the sign, is cleared; one
// VCVTPH2PS makes it f32. The 2^8 goes into the row scale at the end, which changes no bits:
// acc here is the reference acc times 2^-8 exactly. Two k steps (32 codes) widen at once. Tiles
// as tile_bf16: RM rows x NG groups of 16 columns, one chain per output in k order.
inline __m512i fp8_pair_to_f16(__m256i codes) {  // 32 codes -> 32 f16 (2 k steps)
  return _mm512_and_si512(_mm512_slli_epi16(_mm512_cvtepi8_epi16(codes), 7),
                          _mm512_set1_epi16(static_cast<short>(0xbfff)));
}
inline __m512 f16_lo(__m512i h) {
  return _mm512_cvtph_ps(_mm512_castsi512_si256(h));
}
inline __m512 f16_hi(__m512i h) {
  return _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
}
inline __m512 fp8_to_f32_times_2m8(__m128i codes) {  // 16 codes (1 k step)
  return f16_lo(fp8_pair_to_f16(_mm256_castsi128_si256(codes)));
}

template <int RM, int NG, bool kTiled>
__attribute__((noinline)) void tile_fp8(const float* a, int64_t lda, const uint8_t* w, int64_t gs,
                                        int64_t k, float* c, int64_t ldc, const float* scale,
                                        const float* bias, int64_t lo, int64_t hi) {
  // Tiled, RM may exceed kTileRows (two consecutive row tiles, up to kPairRows rows, one
  // group): each code converted then serves more rows. Tiled, lda > 0 is the tiles' input count
  // (a points at input k0 of a wider tile, for a range of inputs); else k.
  const int64_t tile_k = kTiled && lda > 0 ? lda : k;
  auto at = [&](int i, int64_t kk) __attribute__((always_inline)) {
    if (!kTiled) return a[i * lda + kk];
    return i < kTileRows ? a[kk * kTileRows + i] : a[(tile_k + kk) * kTileRows + (i - kTileRows)];
  };
  __m512 acc[RM][NG];
#pragma GCC unroll 16
  for (int i = 0; i < RM; ++i)
#pragma GCC unroll 16
    for (int g = 0; g < NG; ++g) acc[i][g] = _mm512_setzero_ps();
  auto step = [&](int64_t kk, const __m512(&wv)[NG]) __attribute__((always_inline)) {
#pragma GCC unroll 16
    for (int i = 0; i < RM; ++i) {
      const __m512 av = _mm512_set1_ps(at(i, kk));
#pragma GCC unroll 16
      for (int g = 0; g < NG; ++g) acc[i][g] = _mm512_fmadd_ps(av, wv[g], acc[i][g]);
    }
  };
  const int64_t full = k / 4;
  for (int64_t p = 0; p < full; ++p) {  // 4 k steps: one 64-byte line per group
    __m512i line[NG];
#pragma GCC unroll 16
    for (int g = 0; g < NG; ++g) {
      const uint8_t* wp = w + g * gs + p * 64;
      _mm_prefetch(reinterpret_cast<const char*>(wp) + kPrefetchBytes, _MM_HINT_T0);
      line[g] = _mm512_loadu_si512(wp);
    }
    __m512i h[NG];
    __m512 wv[NG];
#pragma GCC unroll 16
    for (int g = 0; g < NG; ++g) h[g] = fp8_pair_to_f16(_mm512_castsi512_si256(line[g]));
#pragma GCC unroll 16
    for (int g = 0; g < NG; ++g) wv[g] = f16_lo(h[g]);
    step(4 * p, wv);
#pragma GCC unroll 16
    for (int g = 0; g < NG; ++g) wv[g] = f16_hi(h[g]);
    step(4 * p + 1, wv);
#pragma GCC unroll 16
    for (int g = 0; g < NG; ++g) h[g] = fp8_pair_to_f16(_mm512_extracti64x4_epi64(line[g], 1));
#pragma GCC unroll 16
    for (int g = 0; g < NG; ++g) wv[g] = f16_lo(h[g]);
    step(4 * p + 2, wv);
#pragma GCC unroll 16
    for (int g = 0; g < NG; ++g) wv[g] = f16_hi(h[g]);
    step(4 * p + 3, wv);
  }
  for (int64_t kk = 4 * full; kk < k; ++kk) {
    __m512 wv[NG];
#pragma GCC unroll 16
    for (int g = 0; g < NG; ++g)
      wv[g] = fp8_to_f32_times_2m8(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + g * gs + kk * 16)));
    step(kk, wv);
  }
#pragma GCC unroll 16
  for (int g = 0; g < NG; ++g) {
    const __mmask16 mask = lane_mask(g * 16, lo, hi);
    const __m512 s = _mm512_mul_ps(_mm512_loadu_ps(scale + g * 16), _mm512_set1_ps(256.0f));
    const __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias + g * 16) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int i = 0; i < RM; ++i) {
      __m512 v = _mm512_mul_ps(acc[i][g], s);
      if (bias) v = _mm512_add_ps(v, b);
      _mm512_mask_storeu_ps(c + i * ldc + g * 16, mask, v);
    }
  }
}

template <bool kTiled>
struct Fp8Tile {
  template <int RM, int NG, class... Args>
  static void run(Args... args) {
    tile_fp8<RM, NG, kTiled>(args...);
  }
};

// 13-16 rows from two consecutive row tiles, one group at a time. Taller tiles ran slower
// (24 rows: 37 prompt tokens/s against 103 as 12 + 12 on the 1b preset), 16 rows faster (batch
// 16 decode 105-114 tokens/s against 93).
constexpr int kPairRows = 16;
template <int RM = kTileRows + 1>
inline void dispatch_fp8_pair(int rm, const float* a, int64_t tile_k, const uint8_t* w, int64_t gs,
                              int64_t k, float* c, int64_t ldc, const float* scale,
                              const float* bias, int64_t lo, int64_t hi) {
  if constexpr (RM <= kPairRows) {
    if (rm == RM) return tile_fp8<RM, 1, true>(a, tile_k, w, gs, k, c, ldc, scale, bias, lo, hi);
    return dispatch_fp8_pair<RM + 1>(rm, a, tile_k, w, gs, k, c, ldc, scale, bias, lo, hi);
  } else {
    TESSERA_CHECK(false) << "tile height " << rm;
  }
}

// Groups [g0, g1) of FP8 codes as bf16 weights in pack_bf16_tiles' layout (E4M3 values are
// exactly bf16 values): the lane of column j for pair p holds w[2p] in its low and w[2p + 1]
// in its high half.
void fp8_groups_to_bf16_tiles(const uint8_t* packed, int64_t k, int64_t g0, int64_t g1,
                              uint16_t* out) {
  const int64_t gs = 16 * k, bs = tile_stride(k);
  const __m512 two8 = _mm512_set1_ps(256.0f);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* w = packed + g * gs;
    uint16_t* o = out + (g - g0) * bs;
    for (int64_t p = 0; 2 * p < k; ++p) {
      __m512 even, odd;
      if (2 * p + 1 < k) {
        const __m512i h =
            fp8_pair_to_f16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + p * 32)));
        even = _mm512_mul_ps(f16_lo(h), two8);
        odd = _mm512_mul_ps(f16_hi(h), two8);
      } else {
        even = _mm512_mul_ps(
            fp8_to_f32_times_2m8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + p * 32))),
            two8);
        odd = _mm512_setzero_ps();
      }
      const __m512i lane =
          _mm512_or_si512(_mm512_srli_epi32(_mm512_castps_si512(even), 16),
                          _mm512_and_si512(_mm512_castps_si512(odd),
                                           _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
      _mm512_storeu_si512(o + p * 32, lane);
    }
  }
}

// Columns [lo, hi) of FP8 codes (group g at codes + g gs) for every row of a, in row tiles of
// kTileRows, or 13-16 tiled rows in one paired tile; a row-major (tile_k = 0) or in pack_tiles'
// layout of tile_k inputs per tile. The direct path of gemm_fp8_avx512 and of the block layout.
void fp8_row_tiles(const float* a, int64_t lda, int64_t tile_k, int64_t m, int64_t k,
                   const uint8_t* codes, int64_t gs, const float* scale, const float* bias,
                   int64_t lo, int64_t hi, float* c, int64_t ldc) {
  if (lo >= hi || m == 0) return;
  const bool tiled = tile_k > 0;
  const int64_t g_lo = lo / 16, g_hi = (hi + 15) / 16;
  for (int64_t i = 0; i < m;) {
    // Tiled, 13-16 rows left: both tiles at once, one group at a time .
    if (tiled && m - i > kTileRows && m - i <= kPairRows) {
      const int rm = static_cast<int>(m - i);
      for (int64_t g = g_lo; g < g_hi; ++g)
        dispatch_fp8_pair(rm, a + i * tile_k, tile_k, codes + g * gs, gs, k, c + i * ldc + g * 16,
                          ldc, scale + g * 16, bias ? bias + g * 16 : nullptr, lo - g * 16,
                          hi - g * 16);
      i += rm;
      continue;
    }
    const int rm = static_cast<int>(std::min<int64_t>(kTileRows, m - i));
    const int64_t width = tile_groups(rm);
    for (int64_t g = g_lo; g < g_hi; g += width) {
      const int ng = static_cast<int>(std::min(width, g_hi - g));
      const float* bg = bias ? bias + g * 16 : nullptr;
      if (tiled) {
        dispatch_rm<Fp8Tile<true>>(rm, ng, a + i * tile_k, tile_k, codes + g * gs, gs, k,
                                   c + i * ldc + g * 16, ldc, scale + g * 16, bg, lo - g * 16,
                                   hi - g * 16);
      } else {
        dispatch_rm<Fp8Tile<false>>(rm, ng, a + i * lda, lda, codes + g * gs, gs, k,
                                    c + i * ldc + g * 16, ldc, scale + g * 16, bg, lo - g * 16,
                                    hi - g * 16);
      }
    }
    i += rm;
  }
}

// As gemm_bf16_avx512: blocks of groups that stay in L2 while the row tiles pass over them.
// Up to kWidenRows rows (decode) read the codes in the FP8 tiles. More rows (a prompt) first
// widen each block to bf16 tiles, where converting once serves every row tile and the
// bf16 kernel runs at its full rate, and then scale: the bf16 kernel's sum is exactly 2^8 times
// the FP8 tiles' (the same products in the same order), so the outputs have the same bits.
// From this many rows the bf16 widening pays: below it (batched decode), converting the codes
// in every row tile costs less than writing and reading the widened block (16 rows on the
// 1b preset: 93 tokens/s against 74).
constexpr int64_t kWidenRows = 48;

void gemm_fp8_avx512(const float* a, int64_t lda, int64_t m, int64_t k, const uint8_t* packed,
                     int64_t n, int64_t lo, int64_t hi, float* c, int64_t ldc, const float* bias) {
  if (lo >= hi || m == 0) return;
  const bool tiled = lda < 0;
  const int64_t gs = 16 * k;
  const float* scales = packed_fp8_scales(packed, n, k);
  const int64_t g_lo = lo / 16, g_hi = (hi + 15) / 16;
  if (tiled && m >= kWidenRows) {
    const int64_t bs = tile_stride(k);
    const int64_t block = std::clamp<int64_t>((int64_t{1} << 20) / (bs * 2), 2, 16);
    thread_local std::vector<uint16_t> widened;
    widened.resize(static_cast<size_t>(block * bs));
    for (int64_t b0 = g_lo; b0 < g_hi; b0 += block) {
      const int64_t b1 = std::min(g_hi, b0 + block);
      fp8_groups_to_bf16_tiles(packed, k, b0, b1, widened.data());
      for (int64_t i = 0; i < m; i += kTileRows) {
        const int rm = static_cast<int>(std::min<int64_t>(kTileRows, m - i));
        const int64_t width = tile_groups(rm);
        for (int64_t g = b0; g < b1; g += width) {
          const int ng = static_cast<int>(std::min(width, b1 - g));
          dispatch_rm<Bf16Tile<true>>(rm, ng, a + i * k, 0, widened.data() + (g - b0) * bs, bs, k,
                                      c + i * ldc + g * 16, ldc, nullptr, lo - g * 16, hi - g * 16);
        }
      }
      const int64_t j0 = std::max(lo, b0 * 16), j1 = std::min(hi, b1 * 16);
      for (int64_t i = 0; i < m; ++i) {
        float* ci = c + i * ldc;
        for (int64_t j = j0; j < j1; ++j) {
          const float v = ci[j] * scales[j];
          ci[j] = bias ? v + bias[j] : v;
        }
      }
    }
    return;
  }
  const int64_t block = std::clamp<int64_t>((int64_t{1} << 20) / gs, 2, 32);
  for (int64_t b0 = g_lo; b0 < g_hi; b0 += block) {
    const int64_t b1 = std::min(g_hi, b0 + block);
    fp8_row_tiles(a, lda, tiled ? k : 0, m, k, packed, gs, scales, bias, std::max(lo, b0 * 16),
                  std::min(hi, b1 * 16), c, ldc);
  }
}

void gemm_fp8_codes_avx512(const float* a, int64_t lda, int64_t tile_k, int64_t m, int64_t k,
                           const uint8_t* codes, int64_t gs, const float* scale, int64_t lo,
                           int64_t hi, float* c, int64_t ldc) {
  fp8_row_tiles(a, lda, tile_k, m, k, codes, gs, scale, nullptr, lo, hi, c, ldc);
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

// With VCVTNEPS2BF16, the instruction the bf16 precision has always rounded with here (core's
// f32_to_bf16 is its portable twin; the hardware's handling of denormals is its own).
inline float round_to_bf16_f32(float x) {
  const __m512 v = _mm512_set1_ps(x);
  const __m256bh r = _mm512_cvtneps_pbh(v);
  return _mm_cvtss_f32(_mm512_castps512_ps128(
      _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)r), 16))));
}

void pack_tiles_avx512(const float* a, int64_t lda, int64_t m, int64_t k, float* out,
                       int64_t t_begin, int64_t t_end, bool round_bf16) {
  for (int64_t t = t_begin; t < t_end; ++t) {
    float* o = out + t * k * kTileRows;
    const int rows = static_cast<int>(std::min<int64_t>(kTileRows, m - t * kTileRows));
    const float* row[kTileRows];
    for (int i = 0; i < rows; ++i) row[i] = a + (t * kTileRows + i) * lda;
    for (int64_t kk = 0; kk < k; ++kk) {
      int i = 0;
      for (; i < rows; ++i)
        o[kk * kTileRows + i] = round_bf16 ? round_to_bf16_f32(row[i][kk]) : row[i][kk];
      for (; i < kTileRows; ++i) o[kk * kTileRows + i] = 0.0f;
    }
  }
}

}  // namespace

GemmKernels gemm_kernels_avx512() {
  GemmKernels kernels;
  kernels.bf16_packed = true;
  kernels.gemm_bf16 = gemm_bf16_avx512;
  kernels.pack_tiles = pack_tiles_avx512;
  kernels.tile_rows = kTileRows;
  kernels.gemm_f32 = gemm_f32_avx512;
  kernels.gemm_fp8 = gemm_fp8_avx512;
  kernels.gemm_fp8_codes = gemm_fp8_codes_avx512;
  return kernels;
}

}  // namespace tessera::cpu
