#include "model/layers/mla.h"

#include <cmath>

#include "core/status.h"

namespace tessera {

namespace {

// The rows of a rotary block of `dim` rows at `base` in the order evens then odds, one part per
// row: interleaved pairs (2i, 2i + 1) become rotate-half pairs (i, i + dim / 2).
void add_rotary_rows(std::vector<ColumnPart>& parts, const std::string& name, int64_t rows,
                     int64_t base, int64_t dim) {
  for (int64_t i = 0; i < dim; i += 2) parts.push_back({name, rows, base + i, base + i + 1});
  for (int64_t i = 1; i < dim; i += 2) parts.push_back({name, rows, base + i, base + i + 1});
}

}  // namespace

float MlaAttention::softmax_scale(const ModelConfig& c) {
  double scale = 1.0 / std::sqrt(static_cast<double>(c.qk_nope_head_dim + c.qk_rope_head_dim));
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type == "yarn" && rs.mscale_all_dim && *rs.mscale_all_dim != 0 && rs.factor > 1) {
    const double m = 0.1 * *rs.mscale_all_dim * std::log(rs.factor) + 1.0;
    scale *= m * m;
  }
  return static_cast<float>(scale);
}

MlaAttention::MlaAttention(ModelContext& ctx, WeightSource& w, const std::string& p,
                           const ModelConfig& c)
    : ctx_(ctx) {
  const int tp = ctx.tp_size(), rank = ctx.tp_rank();
  const int64_t h = c.hidden_size, qk = c.qk_nope_head_dim + c.qk_rope_head_dim;
  heads_ = c.num_heads / tp;
  nope_ = c.qk_nope_head_dim;
  rope_ = c.qk_rope_head_dim;
  v_ = c.v_head_dim;
  latent_ = c.kv_lora_rank;
  q_lora_ = c.q_lora_rank;
  eps_ = static_cast<float>(c.rms_norm_eps);
  const int64_t h0 = rank * heads_;
  // This rank's query heads, each [nope | rope (reordered)].
  const std::string q_name = p + (q_lora_ > 0 ? "q_b_proj" : "q_proj");
  std::vector<ColumnPart> q_parts;
  for (int64_t i = h0; i < h0 + heads_; ++i) {
    q_parts.push_back({q_name, c.num_heads * qk, i * qk, i * qk + nope_});
    add_rotary_rows(q_parts, q_name, c.num_heads * qk, i * qk + nope_, rope_);
  }
  if (q_lora_ > 0) {
    q_a_.emplace(ctx, w, std::vector<ColumnPart>{{p + "q_a_proj", q_lora_, 0, q_lora_}}, h);
    q_a_norm_ = load_f32_vector(ctx, w, p + "q_a_layernorm.weight", q_lora_);
    q_b_.emplace(ctx, w, q_parts, q_lora_, /*merge=*/true);
  } else {
    q_proj_.emplace(ctx, w, q_parts, h, /*merge=*/true);
  }
  // [k_rope (reordered) | c], whole on every rank.
  const std::string kv_a = p + "kv_a_proj_with_mqa";
  std::vector<ColumnPart> kv_parts;
  add_rotary_rows(kv_parts, kv_a, latent_ + rope_, latent_, rope_);
  kv_parts.push_back({kv_a, latent_ + rope_, 0, latent_});
  kv_a_.emplace(ctx, w, kv_parts, h, /*merge=*/true);
  kv_a_norm_ = load_f32_vector(ctx, w, p + "kv_a_layernorm.weight", latent_);
  // kv_b_proj [heads * (nope + v), kv_lora]: per head W_UK_h [nope, kv_lora] then W_UV_h.
  const std::string kv_b = p + "kv_b_proj.weight";
  const int64_t per_head = nope_ + v_;
  const std::vector<int64_t> kv_b_shape = {c.num_heads * per_head, latent_};
  // Not quantized by --quantization (vLLM's MLA keeps these products in 16 bits too). An FP8
  // checkpoint's codes stay as stored where the backend runs them, else they are dequantized.
  auto prepare = [&](Slice rows, bool transposed) {
    if (ctx.backend.takes_fp8_weights())
      if (std::optional<Fp8Rows> fp8 = w.get_fp8_rows(kv_b, kv_b_shape, rows, transposed))
        return ctx.backend.prepare_fp8_layer_weight(fp8->codes, fp8->scales, fp8->block_cols,
                                                    fp8->block_offset);
    Tensor t = w.get(kv_b, kv_b_shape, rows);
    return ctx.backend.prepare_linear_weight(transposed ? t.transposed() : std::move(t));
  };
  for (int64_t i = h0; i < h0 + heads_; ++i) {
    LinearSegment uk, uv;
    uk.weight = prepare(Slice{0, i * per_head, i * per_head + nope_}, /*transposed=*/true);
    uv.weight = prepare(Slice{0, i * per_head + nope_, (i + 1) * per_head}, false);
    uk_t_.push_back(std::move(uk));
    uv_.push_back(std::move(uv));
  }
  o_.emplace(ctx, w, p + "o_proj", h, c.num_heads * v_, Range{h0 * v_, (h0 + heads_) * v_}, false);
  params_.num_heads = static_cast<int>(heads_);
  params_.num_kv_heads = 1;
  params_.head_dim = static_cast<int>(rope_ + latent_);
  params_.scale = softmax_scale(c);
}

int64_t MlaAttention::activation_floats(const ModelConfig& c, int tp) {
  const int64_t heads = c.num_heads / tp, d = c.kv_lora_rank + c.qk_rope_head_dim;
  // q_a, q, [k_rope | c], absorbed queries, latent outputs, per-head values.
  return c.q_lora_rank + heads * (c.qk_nope_head_dim + c.qk_rope_head_dim) + d + 2 * heads * d +
         heads * c.v_head_dim;
}

void MlaAttention::forward(const Tensor& x, const Tensor& rope_table, const AttentionMetadata& meta,
                           const Tensor& k_cache, const Tensor& v_cache, const Tensor& out,
                           Buffers& buf) {
  Backend& b = ctx_.backend;
  const int64_t t = x.size(0), qk = nope_ + rope_, d = rope_ + latent_;
  Tensor q = buf.q.get(b, t, heads_ * qk);
  if (q_lora_ > 0) {
    Tensor qa = buf.q_a_out.get(b, t, q_lora_);
    q_a_->forward(x, qa);
    b.rms_norm(qa, q_a_norm_, eps_, false, qa);
    q_b_->forward(qa, q);
  } else {
    q_proj_->forward(x, q);
  }
  Tensor kv = buf.kv_a_out.get(b, t, d);
  kv_a_->forward(x, kv);
  Tensor c = kv.slice(1, rope_, d);
  b.rms_norm(c, kv_a_norm_, eps_, false, c);
  // Absorbed queries [q_rope_h | W_UK_h^T q_nope_h] per head.
  Tensor q_abs = buf.q_abs.get(b, t, heads_ * d);
  for (int64_t i = 0; i < heads_; ++i) {
    b.copy(q.slice(1, i * qk + nope_, (i + 1) * qk), q_abs.slice(1, i * d, i * d + rope_));
    b.linear(q.slice(1, i * qk, i * qk + nope_), {&uk_t_[i], 1},
             q_abs.slice(1, i * d + rope_, (i + 1) * d));
  }
  // The rotary dims lead every head: rotate them in the queries and in the shared key.
  b.rope(q_abs, static_cast<int>(d), rope_table);
  b.rope(kv, static_cast<int>(d), rope_table);
  b.write_kv(kv, kv, k_cache, v_cache, meta);
  Tensor lat = buf.latent_out.get(b, t, heads_ * d);
  b.paged_attention(q_abs, k_cache, v_cache, meta, params_, lat);
  Tensor attn = buf.attn.get(b, t, heads_ * v_);
  for (int64_t i = 0; i < heads_; ++i)
    b.linear(lat.slice(1, i * d + rope_, (i + 1) * d), {&uv_[i], 1},
             attn.slice(1, i * v_, (i + 1) * v_));
  o_->forward(attn, out);
}

}  // namespace tessera
