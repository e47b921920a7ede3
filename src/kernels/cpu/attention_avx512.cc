// Paged attention with AVX-512 intrinsics (f32 arithmetic over an f32, bf16, f16 or FP8 E4M3
// cache).
//
// Keys of a block are stored [kv_heads, d, block_size], so a tile of 16 positions is d rows of
// 16 contiguous values: scores for a query are d broadcast-FMAs into one 16-lane vector, with no
// transposition. Values are [kv_heads, block_size, d]. Every query vector (a row and one of the
// heads sharing the kv head) keeps its own online-softmax state, and keys are visited in tiles
// and partitions aligned to absolute positions, as in the portable kernel (ops_impl.h), so a
// row's result does not depend on the rows computed with it.
#include <immintrin.h>

#include <algorithm>
#include <limits>

#include "core/status.h"
#include "kernels/cpu/ops.h"

namespace tessera::cpu {
namespace {

constexpr int kTile = kAttentionTile;
constexpr int kPartition = kAttentionPartition;

// exp on 16 lanes: 2^n * p(r) with a degree-7 polynomial (about 1 ulp); inputs below -87 give
// ~1e-38, never used for masked lanes (those are zeroed explicitly).
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  x = _mm512_min_ps(x, _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __m512i e =
      _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

inline float exp1(float x) {
  return _mm512_cvtss_f32(exp16(_mm512_set1_ps(x)));
}

// cap * tanh(x / cap) = cap * (1 - 2 / (exp(2x / cap) + 1)), sign-symmetric.
inline __m512 softcap16(__m512 x, float cap) {
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 e = exp16(_mm512_mul_ps(ax, _mm512_set1_ps(2.0f / cap)));
  const __m512 t =
      _mm512_sub_ps(_mm512_set1_ps(1.0f),
                    _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, _mm512_set1_ps(1.0f))));
  const __m512 s = _mm512_mul_ps(t, _mm512_set1_ps(cap));
  return _mm512_mask_sub_ps(s, _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ),
                            _mm512_setzero_ps(), s);
}

template <DType KV>
inline __m512 load16(const void* base, int64_t i) {
  if constexpr (KV == DType::kF32) {
    return _mm512_loadu_ps(static_cast<const float*>(base) + i);
  } else if constexpr (KV == DType::kBF16) {
    const __m256i h = _mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else if constexpr (KV == DType::kF16) {
    const __m256i h = _mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + i));
    return _mm512_cvtph_ps(h);
  } else {
    // E4M3: sign-extended to 16 bits and shifted left by 7, with bit 14 (a sign copy) cleared,
    // a code is the f16 of its value times 2^-8 (subnormals too; see gemm_avx512.cc's FP8
    // tiles); the cache never holds the NaN codes.
    const __m128i codes =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint8_t*>(base) + i));
    const __m256i h = _mm256_and_si256(_mm256_slli_epi16(_mm256_cvtepi8_epi16(codes), 7),
                                       _mm256_set1_epi16(static_cast<short>(0xbfff)));
    return _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(256.0f));
  }
}

// DC: head_dim / 16. QV: query vectors processed together (their accumulators stay in registers).
template <int DC, DType KV>
void attention_tiles(const AttentionArgs& args, int seq, int kv_head, int64_t row_begin,
                     int64_t row_end, float* scratch) {
  constexpr int QV = DC >= 16 ? 1 : DC >= 8 ? 2 : 4;
  constexpr int D = DC * 16;
  const AttentionParams& p = args.params;
  const int group = p.num_heads / p.num_kv_heads;
  const int64_t nq = (row_end - row_begin) * group;
  const int64_t bs = args.block_size;
  const float neg_inf = -std::numeric_limits<float>::infinity();

  float* qs = scratch;  // [nq, D] queries times the attention scale
  alignas(64) float pbuf[QV][kTile];

  const int32_t q_begin = args.query_start[seq];
  const int32_t first_pos = args.seq_lens[seq] - (args.query_start[seq + 1] - q_begin);
  const int32_t* table = args.block_tables + static_cast<int64_t>(seq) * args.max_blocks;
  auto pos_of = [&](int64_t qi) {
    return first_pos + static_cast<int32_t>(row_begin + qi / group - q_begin);
  };
  auto lo_of = [&](int32_t pos) {
    return p.sliding_window > 0 ? std::max<int32_t>(0, pos - p.sliding_window + 1) : 0;
  };
  const __m512 scale = _mm512_set1_ps(p.scale);
  for (int64_t qi = 0; qi < nq; ++qi) {
    const float* q = args.q + (row_begin + qi / group) * args.ldq +
                     static_cast<int64_t>(kv_head * group + qi % group) * D;
    for (int c = 0; c < DC; ++c)
      _mm512_storeu_ps(qs + qi * D + 16 * c, _mm512_mul_ps(_mm512_loadu_ps(q + 16 * c), scale));
  }

  for (int64_t g0 = 0; g0 < nq; g0 += QV) {
    const int nv = static_cast<int>(std::min<int64_t>(QV, nq - g0));
    int32_t pos[QV], lo[QV];
    for (int v = 0; v < QV; ++v) {
      pos[v] = pos_of(g0 + std::min(v, nv - 1));
      lo[v] = lo_of(pos[v]);
    }
    const int32_t key_lo = *std::min_element(lo, lo + nv),
                  key_hi = *std::max_element(pos, pos + nv);
    // Running totals over partitions, in memory: they change once per partition, and keeping
    // them in registers beside the partition accumulators would spill both.
    float mt[QV], lt[QV];
    alignas(64) float at[QV][D];
    for (int v = 0; v < QV; ++v) {
      mt[v] = neg_inf;
      lt[v] = 0;
      for (int c = 0; c < DC; ++c) _mm512_store_ps(at[v] + 16 * c, _mm512_setzero_ps());
    }
    for (int32_t part = key_lo / kPartition * kPartition; part <= key_hi; part += kPartition) {
      float m[QV], l[QV];
      __m512 acc[QV][DC];
      for (int v = 0; v < QV; ++v) {
        m[v] = neg_inf;
        l[v] = 0;
        for (int c = 0; c < DC; ++c) acc[v][c] = _mm512_setzero_ps();
      }
      const int32_t part_end = std::min(part + kPartition, key_hi + 1);
      for (int32_t tile = std::max(part, key_lo / kTile * kTile); tile < part_end; tile += kTile) {
        const int64_t block = table[tile / bs];
        const int64_t off = tile % bs;
        const int64_t kbase = (block * p.num_kv_heads + kv_head) * D * bs + off;      // + e * bs
        const int64_t vbase = (block * p.num_kv_heads + kv_head) * bs * D + off * D;  // + j * D
        __m512 s[QV];
        for (int v = 0; v < QV; ++v) s[v] = _mm512_setzero_ps();
        for (int e = 0; e < D; ++e) {
          const __m512 k = load16<KV>(args.k_cache, kbase + e * bs);
          for (int v = 0; v < QV; ++v)
            s[v] = _mm512_fmadd_ps(_mm512_set1_ps(qs[(g0 + v) * D + e]), k, s[v]);
        }
        // Softmax of the tile per query, over the lanes [j0, j1) it sees.
        int32_t jmin = kTile, jmax = 0, j0s[QV], j1s[QV];
        for (int v = 0; v < nv; ++v) {
          const int32_t j0 = std::max(lo[v] - tile, 0), j1 = std::min(pos[v] + 1 - tile, kTile);
          j0s[v] = j0;
          j1s[v] = j1;
          if (j0 >= j1) continue;  // this query does not see this tile
          jmin = std::min(jmin, j0);
          jmax = std::max(jmax, j1);
          const __mmask16 valid = static_cast<__mmask16>(((1u << j1) - 1u) & ~((1u << j0) - 1u));
          __m512 sv = s[v];
          if (p.softcap > 0) sv = softcap16(sv, p.softcap);
          const float tile_max = _mm512_mask_reduce_max_ps(valid, sv);
          const float m_new = std::max(m[v], tile_max);
          const __m512 pv =
              _mm512_maskz_mov_ps(valid, exp16(_mm512_sub_ps(sv, _mm512_set1_ps(m_new))));
          // When the maximum stays, the correction is exp(0) = 1 exactly and rescaling by it
          // changes no bit: skip it (most tiles after the first few).
          if (m_new != m[v]) {
            const float corr = m[v] == neg_inf ? 0.0f : exp1(m[v] - m_new);
            l[v] *= corr;
            const __m512 cv = _mm512_set1_ps(corr);
            for (int c = 0; c < DC; ++c) acc[v][c] = _mm512_mul_ps(acc[v][c], cv);
          }
          l[v] += _mm512_reduce_add_ps(pv);
          _mm512_store_ps(pbuf[v], pv);
          m[v] = m_new;
        }
        // P x V with each value row loaded once for all the queries that see it; a query's
        // accumulators take exactly the FMAs they would alone, in the same order.
        for (int32_t j = jmin; j < jmax; ++j) {
          __m512 vv[DC];
          for (int c = 0; c < DC; ++c) vv[c] = load16<KV>(args.v_cache, vbase + j * D + 16 * c);
          for (int v = 0; v < nv; ++v) {
            if (j < j0s[v] || j >= j1s[v]) continue;
            const __m512 pj = _mm512_set1_ps(pbuf[v][j]);
            for (int c = 0; c < DC; ++c) acc[v][c] = _mm512_fmadd_ps(pj, vv[c], acc[v][c]);
          }
        }
      }
      // Merge the partition into the running totals.
      for (int v = 0; v < nv; ++v) {
        if (m[v] == neg_inf) continue;
        const float mm = std::max(mt[v], m[v]);
        const float a = mt[v] == neg_inf ? 0.0f : exp1(mt[v] - mm);
        const float b = exp1(m[v] - mm);
        lt[v] = lt[v] * a + l[v] * b;
        for (int c = 0; c < DC; ++c)
          _mm512_store_ps(at[v] + 16 * c,
                          _mm512_fmadd_ps(_mm512_load_ps(at[v] + 16 * c), _mm512_set1_ps(a),
                                          _mm512_mul_ps(acc[v][c], _mm512_set1_ps(b))));
        mt[v] = mm;
      }
    }
    for (int v = 0; v < nv; ++v) {
      const int64_t qi = g0 + v;
      float* o = args.out + (row_begin + qi / group) * args.ldo +
                 static_cast<int64_t>(kv_head * group + qi % group) * D;
      const __m512 inv = _mm512_set1_ps(1.0f / lt[v]);
      for (int c = 0; c < DC; ++c)
        _mm512_storeu_ps(o + 16 * c, _mm512_mul_ps(_mm512_load_ps(at[v] + 16 * c), inv));
    }
  }
}

template <int DC>
void attention_dc(const AttentionArgs& args, int seq, int kv_head, int64_t b, int64_t e,
                  float* scratch) {
  switch (args.kv_dtype) {
    case DType::kF32:
      return attention_tiles<DC, DType::kF32>(args, seq, kv_head, b, e, scratch);
    case DType::kBF16:
      return attention_tiles<DC, DType::kBF16>(args, seq, kv_head, b, e, scratch);
    case DType::kF16:
      return attention_tiles<DC, DType::kF16>(args, seq, kv_head, b, e, scratch);
    case DType::kF8E4M3:
      return attention_tiles<DC, DType::kF8E4M3>(args, seq, kv_head, b, e, scratch);
    default:
      TESSERA_CHECK(false) << "kv dtype";
  }
}

using AttentionFn = void (*)(const AttentionArgs&, int, int, int64_t, int64_t, float*);

template <int... DCs>
constexpr auto make_table(std::integer_sequence<int, DCs...>) {
  return std::array<AttentionFn, sizeof...(DCs)>{&attention_dc<DCs + 1>...};
}
constexpr auto kByDc = make_table(std::make_integer_sequence<int, 16>{});

}  // namespace

// Beyond 256: the widths of DeepSeek's latent attention (kv_lora_rank + qk_rope_head_dim), 576
// for the released models and 288 for `make-model --arch deepseek_v3 --preset small`.
bool attention_avx512_supports(const AttentionParams& params, int block_size) {
  const bool width = params.head_dim % 16 == 0 &&
                     (params.head_dim <= 256 || params.head_dim == 288 || params.head_dim == 576);
  return width && block_size % kTile == 0;
}

void attention_avx512(const AttentionArgs& args, int seq, int kv_head, int64_t row_begin,
                      int64_t row_end, float* scratch) {
  switch (args.params.head_dim) {
    case 288:
      return attention_dc<18>(args, seq, kv_head, row_begin, row_end, scratch);
    case 576:
      return attention_dc<36>(args, seq, kv_head, row_begin, row_end, scratch);
    default:
      kByDc[args.params.head_dim / 16 - 1](args, seq, kv_head, row_begin, row_end, scratch);
  }
}

}  // namespace tessera::cpu
