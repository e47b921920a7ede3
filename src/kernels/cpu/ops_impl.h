// Implementation of OpsKernels in plain C++, written so that the compiler vectorises it (fixed
// 16-wide inner loops, no reassociation needed). Included by ops_avx512.cc and ops_generic.cc
// inside their own namespaces; do not include elsewhere.
//
// -ffp-contract=off (set for the whole project) keeps every multiply and add separately rounded,
// so the two builds give the same results.

// The including file provides <algorithm>, <cmath>, <cstring>, <limits> and kernels/cpu/ops.h.

namespace {

constexpr int kLanes = 16;

// exp(x) to about 1 ulp: 2^n * p(r), |r| <= ln2 / 2, degree-7 Taylor polynomial. Inputs below
// -87 return about 1e-38 (callers never rely on exp(-inf) == 0).
inline float exp_f32(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  float t = x * 1.44269504088896341f;
  float n = (t + 12582912.0f) - 12582912.0f;  // round to nearest integer
  float r = x - n * 0.693145751953125f;       // ln 2, high part: n * it is exact
  r = r - n * 1.428606765330187045e-06f;      // ln 2, low part
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// tanh(x) = sign(x) (1 - 2 / (exp(2|x|) + 1)); absolute error about 1e-7.
inline float tanh_f32(float x) {
  float ax = x < 0 ? -x : x;
  float e = exp_f32(2.0f * ax);
  float t = 1.0f - 2.0f / (e + 1.0f);
  return x < 0 ? -t : t;
}

inline float load_kv(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kBF16:
      return tessera::bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::kF16:
      return tessera::f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::kF8E4M3:
      return tessera::fp8_e4m3_to_f32(static_cast<const uint8_t*>(base)[i]);
    default:
      return static_cast<const float*>(base)[i];
  }
}

void rms_norm(const float* x, int64_t ldx, float* out, int64_t ldo, int64_t rows, int64_t width,
              const float* weight, float eps, bool unit_offset) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    float part[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= width; i += kLanes)
      for (int l = 0; l < kLanes; ++l) part[l] += xr[i + l] * xr[i + l];
    for (int l = 0; i + l < width; ++l) part[l] += xr[i + l] * xr[i + l];
    float sum = 0;
    for (int l = 0; l < kLanes; ++l) sum += part[l];
    float inv = 1.0f / std::sqrt(sum / static_cast<float>(width) + eps);
    float* o = out + r * ldo;
    if (unit_offset) {
      for (int64_t j = 0; j < width; ++j) o[j] = (xr[j] * inv) * (1.0f + weight[j]);
    } else {
      for (int64_t j = 0; j < width; ++j) o[j] = (xr[j] * inv) * weight[j];
    }
  }
}

// Two passes (mean, then the centred sum of squares), as torch's LayerNorm computes it.
void layer_norm(const float* x, int64_t ldx, float* out, int64_t ldo, int64_t rows, int64_t width,
                const float* weight, const float* bias, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    float part[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= width; i += kLanes)
      for (int l = 0; l < kLanes; ++l) part[l] += xr[i + l];
    for (int l = 0; i + l < width; ++l) part[l] += xr[i + l];
    float sum = 0;
    for (int l = 0; l < kLanes; ++l) sum += part[l];
    const float mean = sum / static_cast<float>(width);
    float sq[kLanes] = {};
    i = 0;
    for (; i + kLanes <= width; i += kLanes)
      for (int l = 0; l < kLanes; ++l) sq[l] += (xr[i + l] - mean) * (xr[i + l] - mean);
    for (int l = 0; i + l < width; ++l) sq[l] += (xr[i + l] - mean) * (xr[i + l] - mean);
    float var = 0;
    for (int l = 0; l < kLanes; ++l) var += sq[l];
    const float inv = 1.0f / std::sqrt(var / static_cast<float>(width) + eps);
    float* o = out + r * ldo;
    for (int64_t j = 0; j < width; ++j) o[j] = (xr[j] - mean) * inv * weight[j] + bias[j];
  }
}

inline float activate(float x, tessera::Activation act) {
  switch (act) {
    case tessera::Activation::kSilu:
      return x / (1.0f + exp_f32(-x));
    case tessera::Activation::kGeluTanh:
      return 0.5f * x * (1.0f + tanh_f32(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case tessera::Activation::kGelu:
      return 0.5f * x * (1.0f + std::erf(x * 0.7071067811865476f));
    case tessera::Activation::kRelu:
      return x > 0.0f ? x : 0.0f;
  }
  return x;
}

// One loop per activation, so that each vectorizes.
template <tessera::Activation kAct>
void activation_rows(const float* x, int64_t ldx, float* out, int64_t ldo, int64_t rows,
                     int64_t width) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < width; ++i) out[r * ldo + i] = activate(x[r * ldx + i], kAct);
}

void activation(const float* x, int64_t ldx, float* out, int64_t ldo, int64_t rows, int64_t width,
                tessera::Activation act) {
  switch (act) {
    case tessera::Activation::kSilu:
      return activation_rows<tessera::Activation::kSilu>(x, ldx, out, ldo, rows, width);
    case tessera::Activation::kGeluTanh:
      return activation_rows<tessera::Activation::kGeluTanh>(x, ldx, out, ldo, rows, width);
    case tessera::Activation::kGelu:
      return activation_rows<tessera::Activation::kGelu>(x, ldx, out, ldo, rows, width);
    case tessera::Activation::kRelu:
      return activation_rows<tessera::Activation::kRelu>(x, ldx, out, ldo, rows, width);
  }
}

void rope_table(const int32_t* positions, int64_t rows, const float* inv_freq, int rot_half,
                float scaling, float* table) {
  for (int64_t r = 0; r < rows; ++r) {
    float pos = static_cast<float>(positions[r]);
    float* t = table + r * 2 * rot_half;
    for (int i = 0; i < rot_half; ++i) {
      float angle = pos * inv_freq[i];  // f32 product, as Hugging Face computes it
      t[i] = std::cos(angle) * scaling;
      t[rot_half + i] = std::sin(angle) * scaling;
    }
  }
}

void rope(float* x, int64_t ldx, int64_t rows, int heads, int head_dim, const float* table,
          int rot_half) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* cs = table + r * 2 * rot_half;
    const float* sn = cs + rot_half;
    for (int h = 0; h < heads; ++h) {
      float* v = x + r * ldx + static_cast<int64_t>(h) * head_dim;
      for (int i = 0; i < rot_half; ++i) {
        float x1 = v[i], x2 = v[i + rot_half];
        v[i] = x1 * cs[i] - x2 * sn[i];
        v[i + rot_half] = x2 * cs[i] + x1 * sn[i];
      }
    }
  }
}

void gated_activation(const float* gate_up, int64_t ldg, float* out, int64_t ldo, int64_t rows,
                      int64_t width, tessera::Activation act) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gate_up + r * ldg;
    const float* u = g + width;
    float* o = out + r * ldo;
    switch (act) {
      case tessera::Activation::kSilu:
        for (int64_t i = 0; i < width; ++i) o[i] = g[i] / (1.0f + exp_f32(-g[i])) * u[i];
        break;
      case tessera::Activation::kGeluTanh:
        for (int64_t i = 0; i < width; ++i) {
          float x = g[i];
          float inner = 0.7978845608028654f * (x + 0.044715f * x * x * x);
          o[i] = 0.5f * x * (1.0f + tanh_f32(inner)) * u[i];
        }
        break;
      case tessera::Activation::kGelu:
        for (int64_t i = 0; i < width; ++i) {
          float x = g[i];
          o[i] = 0.5f * x * (1.0f + std::erf(x * 0.7071067811865476f)) * u[i];
        }
        break;
      case tessera::Activation::kRelu:
        for (int64_t i = 0; i < width; ++i) o[i] = (g[i] > 0.0f ? g[i] : 0.0f) * u[i];
        break;
    }
  }
}

void add(const float* a, int64_t lda, const float* b, int64_t ldb, float* out, int64_t ldo,
         int64_t rows, int64_t width) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < width; ++i) out[r * ldo + i] = a[r * lda + i] + b[r * ldb + i];
}

void softcap(float* x, int64_t ldx, int64_t rows, int64_t width, float cap) {
  float inv = 1.0f / cap;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < width; ++i) x[r * ldx + i] = cap * tanh_f32(x[r * ldx + i] * inv);
}

// Attention: keys are visited in tiles of kTile positions aligned to absolute positions, grouped
// in partitions of kPartition positions; each partition runs an online softmax from a fresh state
// and partitions merge in order. A query's result therefore depends only on its position and
// the cache contents, not on which rows share its work item or how a sequence was chunked.
constexpr int kTile = tessera::cpu::kAttentionTile;
constexpr int kPartition = tessera::cpu::kAttentionPartition;

void attention(const tessera::cpu::AttentionArgs& args, int seq, int kv_head, int64_t row_begin,
               int64_t row_end, float* scratch) {
  const tessera::AttentionParams& p = args.params;
  const int group = p.num_heads / p.num_kv_heads;
  const int d = p.head_dim;
  const int64_t nrows = row_end - row_begin;
  const int64_t nq = nrows * group;  // (row, head) pairs in this item

  // Scratch layout (attention_scratch_floats): per (row, head) running state of the whole range
  // and of the current partition, then one K tile (transposed) and one V tile.
  float* m_tot = scratch;
  float* l_tot = m_tot + nq;
  float* m_par = l_tot + nq;
  float* l_par = m_par + nq;
  float* acc_tot = l_par + nq;                       // [nq, d]
  float* acc_par = acc_tot + nq * d;                 // [nq, d]
  float* kt = acc_par + nq * d;                      // [d, kTile]
  float* vt = kt + static_cast<int64_t>(d) * kTile;  // [kTile, d]

  const int32_t q_begin = args.query_start[seq];
  const int32_t q_len = args.query_start[seq + 1] - q_begin;
  const int32_t ctx = args.seq_lens[seq];
  const int32_t first_pos = ctx - q_len;
  const int32_t* table = args.block_tables + static_cast<int64_t>(seq) * args.max_blocks;
  auto pos_of = [&](int64_t row) { return first_pos + static_cast<int32_t>(row - q_begin); };
  auto lo_of = [&](int32_t pos) {
    return p.sliding_window > 0 ? std::max<int32_t>(0, pos - p.sliding_window + 1) : 0;
  };
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < nq; ++i) {
    m_tot[i] = neg_inf;
    l_tot[i] = 0;
  }
  std::fill(acc_tot, acc_tot + nq * d, 0.0f);

  const int32_t key_lo = lo_of(pos_of(row_begin));
  const int32_t key_hi = pos_of(row_end - 1);  // inclusive
  for (int32_t part = key_lo / kPartition * kPartition; part <= key_hi; part += kPartition) {
    for (int64_t i = 0; i < nq; ++i) {
      m_par[i] = neg_inf;
      l_par[i] = 0;
    }
    std::fill(acc_par, acc_par + nq * d, 0.0f);
    const int32_t part_end = std::min(part + kPartition, key_hi + 1);
    for (int32_t tile = std::max(part, key_lo / kTile * kTile); tile < part_end; tile += kTile) {
      const int32_t tile_n = std::min(kTile, key_hi + 1 - tile);
      for (int j = 0; j < tile_n; ++j) {
        int32_t pos = tile + j;
        // Within a block, keys are [kv_heads, d, block_size] and values [kv_heads, block_size, d].
        const int64_t bs = args.block_size, off = pos % bs;
        const int64_t head_base =
            (static_cast<int64_t>(table[pos / bs]) * p.num_kv_heads + kv_head) * d * bs;
        for (int e = 0; e < d; ++e) {
          kt[e * kTile + j] = load_kv(args.k_cache, args.kv_dtype, head_base + e * bs + off);
          vt[j * d + e] = load_kv(args.v_cache, args.kv_dtype, head_base + off * d + e);
        }
      }
      for (int j = tile_n; j < kTile; ++j)
        for (int e = 0; e < d; ++e) kt[e * kTile + j] = 0;
      for (int64_t row = row_begin; row < row_end; ++row) {
        const int32_t pos = pos_of(row);
        const int32_t j0 = std::max(lo_of(pos) - tile, 0);
        const int32_t j1 = std::min(pos + 1 - tile, kTile);  // exclusive
        if (j0 >= j1) continue;
        for (int g = 0; g < group; ++g) {
          const int64_t qi = (row - row_begin) * group + g;
          const float* qv = args.q + row * args.ldq + static_cast<int64_t>(kv_head * group + g) * d;
          float s[kTile] = {};
          for (int e = 0; e < d; ++e) {
            float qe = qv[e];
            for (int j = 0; j < kTile; ++j) s[j] += qe * kt[e * kTile + j];
          }
          float tile_max = neg_inf;
          for (int j = j0; j < j1; ++j) {
            float v = s[j] * p.scale;
            if (p.softcap > 0) v = p.softcap * tanh_f32(v / p.softcap);
            s[j] = v;
            tile_max = std::max(tile_max, v);
          }
          const float m_new = std::max(m_par[qi], tile_max);
          const float corr = m_par[qi] == neg_inf ? 0.0f : exp_f32(m_par[qi] - m_new);
          float sum = 0;
          float* acc = acc_par + qi * d;
          for (int e = 0; e < d; ++e) acc[e] *= corr;
          for (int j = j0; j < j1; ++j) {
            float pj = exp_f32(s[j] - m_new);
            sum += pj;
            const float* vj = vt + j * d;
            for (int e = 0; e < d; ++e) acc[e] += pj * vj[e];
          }
          l_par[qi] = l_par[qi] * corr + sum;
          m_par[qi] = m_new;
        }
      }
    }
    // Merge this partition into the running totals of the rows it touched.
    for (int64_t qi = 0; qi < nq; ++qi) {
      if (m_par[qi] == neg_inf) continue;
      const float m = std::max(m_tot[qi], m_par[qi]);
      const float a = m_tot[qi] == neg_inf ? 0.0f : exp_f32(m_tot[qi] - m);
      const float b = exp_f32(m_par[qi] - m);
      l_tot[qi] = l_tot[qi] * a + l_par[qi] * b;
      float* at = acc_tot + qi * d;
      const float* ap = acc_par + qi * d;
      for (int e = 0; e < d; ++e) at[e] = at[e] * a + ap[e] * b;
      m_tot[qi] = m;
    }
  }
  for (int64_t row = row_begin; row < row_end; ++row) {
    for (int g = 0; g < group; ++g) {
      const int64_t qi = (row - row_begin) * group + g;
      float* o = args.out + row * args.ldo + static_cast<int64_t>(kv_head * group + g) * d;
      const float inv = 1.0f / l_tot[qi];
      for (int e = 0; e < d; ++e) o[e] = acc_tot[qi * d + e] * inv;
    }
  }
}

tessera::cpu::OpsKernels make_ops_kernels() {
  tessera::cpu::OpsKernels k;
  k.rms_norm = rms_norm;
  k.layer_norm = layer_norm;
  k.activation = activation;
  k.rope_table = rope_table;
  k.rope = rope;
  k.gated_activation = gated_activation;
  k.add = add;
  k.softcap = softcap;
  k.attention = attention;
  return k;
}

}  // namespace
