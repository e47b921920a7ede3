// Falcon (FalconForCausalLM, and RWForCausalLM of the first "RefinedWeb" releases): LayerNorm
// with biases, rotary positions, one fused query_key_value, an ungated GELU MLP and a tied LM
// head. By default attention and MLP run in parallel from the same input and join the residual
// together (parallel_attn), so the two row-parallel outputs are summed before one all-reduce.
// Ranks never appear here.
//
// query_key_value's rows come in groups, one per key/value head: the group's query heads, then
// its key head, then its value head (FalconAttention._split_heads). Multi-query Falcon-7B is one
// group of 71 query heads; the new decoder (40B/180B) has num_kv_heads groups; the old decoder
// without multi_query has one group per head.
#include <fmt/format.h>

#include "core/status.h"
#include "model/arch/registry.h"
#include "model/layers/embedding.h"
#include "model/layers/linear.h"
#include "model/layers/norm.h"
#include "model/layers/rotary.h"
#include "model/layers/scratch.h"

namespace tessera {

namespace {

struct Buffers {
  Scratch residual, normed, normed_mlp, qkv, attn, proj, mlp_out, fc;
};

std::string layer_prefix(int64_t layer) {
  return fmt::format("transformer.h.{}.", layer);
}

class FalconBlock {
 public:
  FalconBlock(ModelContext& ctx, WeightSource& w, const ModelConfig& c, int64_t layer) : ctx_(ctx) {
    const std::string p = layer_prefix(layer);
    const int tp = ctx.tp_size(), rank = ctx.tp_rank();
    const int64_t h = c.hidden_size, d = c.head_dim, kv = c.num_kv_heads;
    const int64_t per_group = c.num_heads / kv;  // query heads per key/value head
    const int64_t group_rows = (per_group + 2) * d;
    heads_ = c.num_heads / tp;
    // This rank's groups and, within each, its query heads [q_begin, q_end). With more ranks
    // than key/value heads, a group's key and value are replicated on the ranks that split its
    // query heads.
    const Range groups = kv_heads_of_rank(kv, tp, rank);
    kv_heads_ = groups.size();
    const int64_t group_begin = groups.begin;
    int64_t q_begin = 0, q_end = per_group;
    if (tp > kv) {  // the group is replicated: this rank takes its share of the query heads
      q_begin = (rank % (tp / kv)) * heads_;
      q_end = q_begin + heads_;
    }
    const std::string qkv_name = p + "self_attention.query_key_value";
    const int64_t rows = (c.num_heads + 2 * kv) * d;
    const bool bias = c.attention_bias;
    std::vector<ColumnPart> q_parts, k_parts, v_parts;
    for (int64_t g = group_begin; g < group_begin + kv_heads_; ++g) {
      const int64_t base = g * group_rows;
      q_parts.push_back({qkv_name, rows, base + q_begin * d, base + q_end * d, bias});
      k_parts.push_back({qkv_name, rows, base + per_group * d, base + (per_group + 1) * d, bias});
      v_parts.push_back(
          {qkv_name, rows, base + (per_group + 1) * d, base + (per_group + 2) * d, bias});
    }
    // Output columns [q heads | k heads | v heads], as attention expects them.
    std::vector<ColumnPart> parts = q_parts;
    parts.insert(parts.end(), k_parts.begin(), k_parts.end());
    parts.insert(parts.end(), v_parts.begin(), v_parts.end());
    qkv_.emplace(ctx, w, parts, h, /*merge=*/kv_heads_ > 1);
    dense_.emplace(ctx, w, p + "self_attention.dense", h, c.num_heads * d,
                   Range{rank * heads_ * d, (rank + 1) * heads_ * d}, c.o_proj_bias);
    const Range part = split_evenly(c.intermediate_size, tp, rank);
    fc_.emplace(ctx, w,
                std::vector<ColumnPart>{{p + "mlp.dense_h_to_4h", c.intermediate_size, part.begin,
                                         part.end, c.mlp_bias}},
                h);
    proj_.emplace(ctx, w, p + "mlp.dense_4h_to_h", h, c.intermediate_size, part, c.mlp_bias);
    ffn_local_ = part.size();
    act_ = c.hidden_act;
    parallel_ = c.parallel_attn;
    separate_mlp_norm_ = c.separate_mlp_norm;
    if (separate_mlp_norm_) {
      ln_attn_ = load_layer_norm(ctx, w, p + "ln_attn", c);
      ln_mlp_ = load_layer_norm(ctx, w, p + "ln_mlp", c);
    } else {
      ln_attn_ = load_layer_norm(ctx, w, p + "input_layernorm", c);
      if (!parallel_) ln_mlp_ = load_layer_norm(ctx, w, p + "post_attention_layernorm", c);
    }
    // Rotary buffers that some conversions of the first releases saved.
    for (const char* buffer :
         {"self_attention.maybe_rotary.inv_freq", "self_attention.rotary_emb.inv_freq"})
      if (w.has(p + buffer)) w.ignore(p + buffer);
    params_.num_heads = static_cast<int>(heads_);
    params_.num_kv_heads = static_cast<int>(kv_heads_);
    params_.head_dim = static_cast<int>(d);
    params_.scale = c.attention_scale();
  }

  int64_t kv_heads() const { return kv_heads_; }
  int64_t heads() const { return heads_; }

  // residual [T, hidden] is updated in place.
  void forward(const Tensor& residual, const Tensor& rope_table, const AttentionMetadata& meta,
               const Tensor& k_cache, const Tensor& v_cache, Buffers& buf) {
    Backend& b = ctx_.backend;
    const int64_t t = residual.size(0), h = residual.size(1);
    Tensor normed = buf.normed.get(b, t, h);
    Tensor proj = buf.proj.get(b, t, h);
    ln_attn_.forward(b, residual, normed);
    if (parallel_) {
      // out = residual + attention(ln_attn(x)) + mlp(ln_mlp(x) or ln_attn(x)), with the two
      // partial products summed before a single all-reduce.
      Tensor mlp_in = normed;
      if (separate_mlp_norm_) {
        mlp_in = buf.normed_mlp.get(b, t, h);
        ln_mlp_.forward(b, residual, mlp_in);
      }
      attention(normed, rope_table, meta, k_cache, v_cache, buf, proj);
      Tensor mlp_out = buf.mlp_out.get(b, t, h);
      mlp(mlp_in, buf, mlp_out);
      b.add(proj, mlp_out, proj);
      dense_->reduce(proj);
      b.add(residual, proj, residual);
      return;
    }
    attention(normed, rope_table, meta, k_cache, v_cache, buf, proj);
    dense_->reduce(proj);
    b.add(residual, proj, residual);
    ln_mlp_.forward(b, residual, normed);
    mlp(normed, buf, proj);
    proj_->reduce(proj);
    b.add(residual, proj, residual);
  }

 private:
  // x [T, hidden] -> out [T, hidden], this rank's partial sum (not yet all-reduced).
  void attention(const Tensor& x, const Tensor& rope_table, const AttentionMetadata& meta,
                 const Tensor& k_cache, const Tensor& v_cache, Buffers& buf, const Tensor& out) {
    Backend& b = ctx_.backend;
    const int64_t t = x.size(0), d = params_.head_dim;
    Tensor qkv = buf.qkv.get(b, t, qkv_->out_features());
    qkv_->forward(x, qkv);
    Tensor q = qkv.slice(1, 0, heads_ * d);
    Tensor k = qkv.slice(1, heads_ * d, (heads_ + kv_heads_) * d);
    Tensor v = qkv.slice(1, (heads_ + kv_heads_) * d, (heads_ + 2 * kv_heads_) * d);
    b.rope(q, static_cast<int>(d), rope_table);
    b.rope(k, static_cast<int>(d), rope_table);
    b.write_kv(k, v, k_cache, v_cache, meta);
    Tensor attn = buf.attn.get(b, t, heads_ * d);
    b.paged_attention(q, k_cache, v_cache, meta, params_, attn);
    dense_->forward_unreduced(attn, out);
  }

  // x [T, hidden] -> out [T, hidden], this rank's partial sum.
  void mlp(const Tensor& x, Buffers& buf, const Tensor& out) {
    Backend& b = ctx_.backend;
    Tensor fc = buf.fc.get(b, x.size(0), ffn_local_);
    fc_->forward(x, fc);
    b.activation(fc, act_, fc);
    proj_->forward_unreduced(fc, out);
  }

  ModelContext& ctx_;
  int64_t heads_ = 0, kv_heads_ = 0, ffn_local_ = 0;
  std::optional<ColumnParallelLinear> qkv_, fc_;
  std::optional<RowParallelLinear> dense_, proj_;
  // ln_attn_: input_layernorm or ln_attn. ln_mlp_: ln_mlp (two norms in parallel) or
  // post_attention_layernorm (sequential blocks); unused with one norm in parallel.
  LayerNorm ln_attn_, ln_mlp_;
  Activation act_ = Activation::kGelu;
  bool parallel_ = true, separate_mlp_norm_ = false;
  AttentionParams params_;
};

class FalconModel : public CausalLM {
 public:
  FalconModel(ModelContext& ctx, WeightSource& w, const ModelConfig& config)
      : ctx_(ctx), config_(config) {
    const ModelConfig& c = config_;
    if (const std::string why = tp_head_split_problem(c.num_heads, c.num_kv_heads, ctx.tp_size());
        !why.empty())
      fail("tensor-parallel size {}", why);
    const std::string wte = "transformer.word_embeddings.weight";
    const bool tied = c.tie_word_embeddings;
    const Range owned = ctx.owned_layers(c.num_layers);
    if (ctx.owns_embedding()) {
      embed_.emplace(ctx, w, wte, c.vocab_size, c.hidden_size, 1.0f, tied && ctx.owns_lm_head());
    } else if (!(tied && ctx.owns_lm_head())) {
      w.ignore(wte);
    }
    for (int64_t l = 0; l < c.num_layers; ++l) {
      if (l >= owned.begin && l < owned.end) {
        blocks_.emplace_back(ctx, w, c, l);
      } else {
        w.ignore_prefix(layer_prefix(l));
      }
    }
    if (ctx.owns_lm_head()) {
      ln_f_ = load_layer_norm(ctx, w, "transformer.ln_f", c);
      lm_head_.emplace(load_lm_head(ctx, w, embed_ ? &*embed_ : nullptr, tied, wte, c.vocab_size,
                                    c.hidden_size));
    } else {
      w.ignore("transformer.ln_f.weight");
      w.ignore("transformer.ln_f.bias");
      if (w.has("lm_head.weight")) w.ignore("lm_head.weight");
    }
    rotary_ = RotaryEmbedding(ctx.backend, c);
    weight_bytes_ = w.bytes_used();  // this rank's share, everything taken above
  }

  const ModelConfig& config() const override { return config_; }
  int64_t kv_heads_local() const override { return blocks_.front().kv_heads(); }
  int64_t num_layers_local() const override { return static_cast<int64_t>(blocks_.size()); }
  uint64_t weight_bytes() const override { return weight_bytes_; }
  int64_t activation_bytes(int64_t t) const override {
    const ModelConfig& c = config_;
    const FalconBlock& block = blocks_.front();
    const int64_t d = c.head_dim, heads = block.heads(), kv = block.kv_heads();
    const int64_t ffn = c.intermediate_size / ctx_.tp_size() + 1;
    // residual, normed, normed_mlp, proj, mlp_out, qkv, attn, fc, rope table; plus one row of
    // logits.
    const int64_t floats =
        t * (5 * c.hidden_size + (heads + 2 * kv) * d + heads * d + ffn + rotary_.table_width()) +
        (ctx_.owns_lm_head() ? c.vocab_size : 0);
    return floats * 4;
  }

  Tensor forward(const ForwardBatch& batch, KVCache& cache) override {
    Backend& b = ctx_.backend;
    const int64_t t = batch.token_ids.numel(), h = config_.hidden_size;
    Tensor residual = buf_.residual.get(b, t, h);
    if (embed_) {
      embed_->forward(batch.token_ids, residual);
    } else {
      take_hidden_in(b, batch, residual);
    }
    const Tensor table = rotary_.table(b, batch.positions, rope_table_);
    for (size_t l = 0; l < blocks_.size(); ++l)
      blocks_[l].forward(residual, table, batch.attention, cache.k[l], cache.v[l], buf_);
    if (!lm_head_) return residual;  // to the next stage
    const int64_t r = batch.logit_rows.numel();
    Tensor rows = gather_logit_rows(b, batch, residual);
    ln_f_.forward(b, rows, rows);
    Tensor logits = b.empty({r, config_.vocab_size}, DType::kF32);
    lm_head_->forward(rows, logits);
    return logits;
  }

 private:
  ModelContext& ctx_;
  ModelConfig config_;
  std::optional<VocabParallelEmbedding> embed_;
  std::vector<FalconBlock> blocks_;
  LayerNorm ln_f_;
  std::optional<ParallelLMHead> lm_head_;
  RotaryEmbedding rotary_;
  Buffers buf_;
  Scratch rope_table_;
  uint64_t weight_bytes_ = 0;
};

}  // namespace

std::unique_ptr<CausalLM> build_falcon(ModelContext& ctx, WeightSource& weights,
                                       const ModelConfig& config) {
  return std::make_unique<FalconModel>(ctx, weights, config);
}

// As FalconForCausalLM.save_pretrained writes them: no lm_head.weight when tied.
std::vector<WeightSpec> falcon_weight_specs(const ModelConfig& c) {
  std::vector<WeightSpec> specs;
  const int64_t h = c.hidden_size, f = c.intermediate_size, d = c.head_dim;
  specs.push_back(
      {"transformer.word_embeddings.weight", {c.vocab_size, h}, WeightRole::kEmbedding});
  std::vector<const char*> norms;
  if (c.separate_mlp_norm) {
    norms = {"ln_attn", "ln_mlp"};
  } else if (c.parallel_attn) {
    norms = {"input_layernorm"};
  } else {
    norms = {"input_layernorm", "post_attention_layernorm"};
  }
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = layer_prefix(l);
    for (const char* ln : norms) {
      specs.push_back({p + ln + ".weight", {h}, WeightRole::kNorm});
      specs.push_back({p + ln + ".bias", {h}, WeightRole::kBias});
    }
    const int64_t qkv = (c.num_heads + 2 * c.num_kv_heads) * d;
    const auto linear = [&](const std::string& name, int64_t out, int64_t in) {
      specs.push_back({p + name + ".weight", {out, in}, WeightRole::kLinear});
      if (c.attention_bias) specs.push_back({p + name + ".bias", {out}, WeightRole::kBias});
    };
    linear("self_attention.query_key_value", qkv, h);
    linear("self_attention.dense", h, c.num_heads * d);
    linear("mlp.dense_h_to_4h", f, h);
    linear("mlp.dense_4h_to_h", h, f);
  }
  specs.push_back({"transformer.ln_f.weight", {h}, WeightRole::kNorm});
  specs.push_back({"transformer.ln_f.bias", {h}, WeightRole::kBias});
  if (!c.tie_word_embeddings)
    specs.push_back({"lm_head.weight", {c.vocab_size, h}, WeightRole::kLmHead});
  return specs;
}

}  // namespace tessera
