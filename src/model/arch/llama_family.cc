// Llama, Mistral, Qwen2, Qwen3 and Gemma 2: one pre-norm decoder that differs only by what
// config.json says (q/k/v biases, per-head q/k norms, sliding windows, Gemma's (1 + w) norms,
// scaled embeddings, sandwich norms and soft-capping). Ranks never appear here: the parallel
// layers take each rank's share.
#include <fmt/format.h>
#include <cmath>

#include "core/status.h"
#include "model/arch/registry.h"
#include "model/layers/embedding.h"
#include "model/layers/linear.h"
#include "model/layers/mla.h"
#include "model/layers/moe.h"
#include "model/layers/rotary.h"
#include "model/layers/scratch.h"

namespace tessera {

namespace {

struct RMSNorm {
  Tensor weight;  // f32
  float eps = 1e-6f;
  bool unit_offset = false;
  void forward(Backend& backend, const Tensor& x, const Tensor& out) const {
    backend.rms_norm(x, weight, eps, unit_offset, out);
  }
};

RMSNorm load_norm(ModelContext& ctx, WeightSource& weights, const std::string& name, int64_t size,
                  const ModelConfig& config) {
  return RMSNorm{load_f32_vector(ctx, weights, name, size), static_cast<float>(config.rms_norm_eps),
                 config.norm_unit_offset};
}

struct Buffers {
  Scratch residual, normed, qkv, attn, proj, gate_up, act;
  MlaAttention::Buffers mla;
  SparseMoe::Buffers moe;
};

class Attention {
 public:
  Attention(ModelContext& ctx, WeightSource& w, const ModelConfig& c, int64_t layer) : ctx_(ctx) {
    const std::string prefix = fmt::format("model.layers.{}.self_attn.", layer);
    const int tp = ctx.tp_size(), rank = ctx.tp_rank();
    const int64_t d = c.head_dim;
    heads_ = c.num_heads / tp;
    // KV heads are split across ranks, or replicated when there are more ranks than heads.
    const Range kv_range = kv_heads_of_rank(c.num_kv_heads, tp, rank);
    kv_heads_ = kv_range.size();
    const int64_t kv_begin = kv_range.begin;
    const int64_t q_rows = c.num_heads * d, kv_rows = c.num_kv_heads * d;
    qkv_.emplace(ctx, w,
                 std::vector<ColumnPart>{{prefix + "q_proj", q_rows, rank * heads_ * d,
                                          (rank + 1) * heads_ * d, c.attention_bias},
                                         {prefix + "k_proj", kv_rows, kv_begin * d,
                                          (kv_begin + kv_heads_) * d, c.attention_bias},
                                         {prefix + "v_proj", kv_rows, kv_begin * d,
                                          (kv_begin + kv_heads_) * d, c.attention_bias}},
                 c.hidden_size);
    o_.emplace(ctx, w, prefix + "o_proj", c.hidden_size, q_rows,
               Range{rank * heads_ * d, (rank + 1) * heads_ * d}, c.o_proj_bias);
    if (c.qk_norm) {
      q_norm_ = load_norm(ctx, w, prefix + "q_norm.weight", d, c);
      k_norm_ = load_norm(ctx, w, prefix + "k_norm.weight", d, c);
    }
    params_.num_heads = static_cast<int>(heads_);
    params_.num_kv_heads = static_cast<int>(kv_heads_);
    params_.head_dim = static_cast<int>(d);
    params_.scale = c.attention_scale();
    params_.softcap = static_cast<float>(c.attn_logit_softcapping);
    params_.sliding_window = c.layer_window(layer);
    qk_norm_ = c.qk_norm;
  }

  int64_t kv_heads() const { return kv_heads_; }

  // x [T, hidden] -> out [T, hidden]
  void forward(const Tensor& x, const Tensor& rope_table, const AttentionMetadata& meta,
               const Tensor& k_cache, const Tensor& v_cache, Buffers& buf, const Tensor& out) {
    Backend& b = ctx_.backend;
    const int64_t t = x.size(0), d = params_.head_dim;
    Tensor qkv = buf.qkv.get(b, t, qkv_->out_features());
    qkv_->forward(x, qkv);
    Tensor q = qkv.slice(1, 0, heads_ * d);
    Tensor k = qkv.slice(1, heads_ * d, (heads_ + kv_heads_) * d);
    Tensor v = qkv.slice(1, (heads_ + kv_heads_) * d, (heads_ + 2 * kv_heads_) * d);
    if (qk_norm_) {
      q_norm_.forward(b, q.split_dim(1, d), q.split_dim(1, d));
      k_norm_.forward(b, k.split_dim(1, d), k.split_dim(1, d));
    }
    b.rope(q, static_cast<int>(d), rope_table);
    b.rope(k, static_cast<int>(d), rope_table);
    b.write_kv(k, v, k_cache, v_cache, meta);
    Tensor attn = buf.attn.get(b, t, heads_ * d);
    b.paged_attention(q, k_cache, v_cache, meta, params_, attn);
    o_->forward(attn, out);
  }

 private:
  ModelContext& ctx_;
  int64_t heads_ = 0, kv_heads_ = 0;
  std::optional<ColumnParallelLinear> qkv_;
  std::optional<RowParallelLinear> o_;
  bool qk_norm_ = false;
  RMSNorm q_norm_, k_norm_;
  AttentionParams params_;
};

class Mlp {
 public:
  Mlp(ModelContext& ctx, WeightSource& w, const ModelConfig& c, int64_t layer) : ctx_(ctx) {
    const std::string prefix = fmt::format("model.layers.{}.mlp.", layer);
    const Range part = split_evenly(c.intermediate_size, ctx.tp_size(), ctx.tp_rank());
    const int64_t f = c.intermediate_size;
    gate_up_.emplace(
        ctx, w,
        std::vector<ColumnPart>{{prefix + "gate_proj", f, part.begin, part.end, c.mlp_bias},
                                {prefix + "up_proj", f, part.begin, part.end, c.mlp_bias}},
        c.hidden_size);
    down_.emplace(ctx, w, prefix + "down_proj", c.hidden_size, f, part, c.mlp_bias);
    width_ = part.size();
    act_ = c.hidden_act;
  }

  void forward(const Tensor& x, Buffers& buf, const Tensor& out) {
    Backend& b = ctx_.backend;
    const int64_t t = x.size(0);
    Tensor gate_up = buf.gate_up.get(b, t, 2 * width_);
    gate_up_->forward(x, gate_up);
    Tensor act = buf.act.get(b, t, width_);
    b.gated_activation(gate_up, act_, act);
    down_->forward(act, out);
  }

 private:
  ModelContext& ctx_;
  std::optional<ColumnParallelLinear> gate_up_;
  std::optional<RowParallelLinear> down_;
  int64_t width_ = 0;
  Activation act_ = Activation::kSilu;
};

// Where a layer's sparse experts are stored.
std::string moe_prefix(const ModelConfig& c, int64_t layer) {
  return fmt::format("model.layers.{}.{}", layer,
                     c.arch == Arch::kMixtral ? "block_sparse_moe." : "mlp.");
}
MoeNames moe_names(const ModelConfig& c) {
  if (c.arch == Arch::kMixtral) return {"gate", "experts.{}.", "w1", "w3", "w2"};
  MoeNames n{"gate", "experts.{}.", "gate_proj", "up_proj", "down_proj"};
  if (c.arch == Arch::kDeepseekV3) n.shared = "shared_experts";
  return n;
}
bool sparse_layer(const ModelConfig& c, int64_t layer) {
  return c.num_experts > 0 && layer >= c.first_dense_layers;
}

class DecoderLayer {
 public:
  DecoderLayer(ModelContext& ctx, WeightSource& w, const ModelConfig& c, int64_t layer)
      : ctx_(ctx) {
    if (c.mla()) {
      mla_.emplace(ctx, w, fmt::format("model.layers.{}.self_attn.", layer), c);
    } else {
      attn_.emplace(ctx, w, c, layer);
    }
    if (sparse_layer(c, layer)) {
      moe_.emplace(ctx, w, moe_prefix(c, layer), moe_names(c), c);
    } else {
      mlp_.emplace(ctx, w, c, layer);
    }
    const std::string prefix = fmt::format("model.layers.{}.", layer);
    input_norm_ = load_norm(ctx, w, prefix + "input_layernorm.weight", c.hidden_size, c);
    post_attn_norm_ =
        load_norm(ctx, w, prefix + "post_attention_layernorm.weight", c.hidden_size, c);
    sandwich_ = c.sandwich_norms;
    if (sandwich_) {
      pre_ff_norm_ =
          load_norm(ctx, w, prefix + "pre_feedforward_layernorm.weight", c.hidden_size, c);
      post_ff_norm_ =
          load_norm(ctx, w, prefix + "post_feedforward_layernorm.weight", c.hidden_size, c);
    }
  }

  int64_t kv_heads() const { return mla_ ? 1 : attn_->kv_heads(); }

  // residual [T, hidden] is updated in place.
  void forward(const Tensor& residual, const Tensor& rope_table, const AttentionMetadata& meta,
               const Tensor& k_cache, const Tensor& v_cache, Buffers& buf) {
    Backend& b = ctx_.backend;
    const int64_t t = residual.size(0), h = residual.size(1);
    Tensor normed = buf.normed.get(b, t, h);
    Tensor proj = buf.proj.get(b, t, h);
    input_norm_.forward(b, residual, normed);
    if (mla_) {
      mla_->forward(normed, rope_table, meta, k_cache, v_cache, proj, buf.mla);
    } else {
      attn_->forward(normed, rope_table, meta, k_cache, v_cache, buf, proj);
    }
    if (sandwich_) {
      // Gemma 2: post_attention_layernorm normalises the attention output; a separate
      // pre_feedforward_layernorm precedes the MLP.
      post_attn_norm_.forward(b, proj, proj);
      b.add(residual, proj, residual);
      pre_ff_norm_.forward(b, residual, normed);
      mlp(normed, buf, proj);
      post_ff_norm_.forward(b, proj, proj);
    } else {
      b.add(residual, proj, residual);
      post_attn_norm_.forward(b, residual, normed);
      mlp(normed, buf, proj);
    }
    b.add(residual, proj, residual);
  }

 private:
  void mlp(const Tensor& x, Buffers& buf, const Tensor& out) {
    if (moe_) {
      moe_->forward(x, out, buf.moe);
    } else {
      mlp_->forward(x, buf, out);
    }
  }

  ModelContext& ctx_;
  std::optional<Attention> attn_;
  std::optional<MlaAttention> mla_;  // DeepSeek-V3
  std::optional<Mlp> mlp_;           // dense
  std::optional<SparseMoe> moe_;
  RMSNorm input_norm_, post_attn_norm_, pre_ff_norm_, post_ff_norm_;
  bool sandwich_ = false;
};

class LlamaFamilyModel : public CausalLM {
 public:
  LlamaFamilyModel(ModelContext& ctx, WeightSource& w, const ModelConfig& config)
      : ctx_(ctx), config_(config) {
    const ModelConfig& c = config_;
    if (const std::string why = tp_head_split_problem(c.num_heads, c.num_kv_heads, ctx.tp_size());
        !why.empty())
      fail("tensor-parallel size {}", why);
    // Gemma scales embeddings by sqrt(hidden) computed in the model's dtype.
    float scale = 1.0f;
    if (c.scale_embeddings) {
      scale = static_cast<float>(std::sqrt(static_cast<double>(c.hidden_size)));
      if (c.dtype == DType::kBF16) scale = round_to_bf16(scale);
      if (c.dtype == DType::kF16) scale = f16_to_f32(f32_to_f16(scale));
    }
    // Pipeline stages: the first holds the embedding, the last the final norm and LM head, each
    // its own range of layers; the rest of the checkpoint belongs to other stages.
    const Range owned = ctx.owned_layers(c.num_layers);
    if (ctx.owns_embedding()) {
      embed_.emplace(ctx, w, "model.embed_tokens.weight", c.vocab_size, c.hidden_size, scale,
                     c.tie_word_embeddings && ctx.owns_lm_head());
    } else if (!(c.tie_word_embeddings && ctx.owns_lm_head())) {
      w.ignore("model.embed_tokens.weight");
    }
    for (int64_t l = 0; l < c.num_layers; ++l) {
      if (l >= owned.begin && l < owned.end) {
        layers_.emplace_back(ctx, w, c, l);
      } else {
        w.ignore_prefix(fmt::format("model.layers.{}.", l));
      }
    }
    if (ctx.owns_lm_head()) {
      norm_ = load_norm(ctx, w, "model.norm.weight", c.hidden_size, c);
      lm_head_.emplace(load_lm_head(ctx, w, embed_ ? &*embed_ : nullptr, c.tie_word_embeddings,
                                    "model.embed_tokens.weight", c.vocab_size, c.hidden_size));
    } else {
      w.ignore("model.norm.weight");
      if (w.has("lm_head.weight")) w.ignore("lm_head.weight");
    }
    for (int64_t l = 0; l < c.num_layers; ++l)
      w.ignore(fmt::format("model.layers.{}.self_attn.rotary_emb.inv_freq", l));
    rotary_ = RotaryEmbedding(ctx.backend, c);
    weight_bytes_ = w.bytes_used();  // this rank's share, everything taken above
  }

  const ModelConfig& config() const override { return config_; }
  int64_t kv_heads_local() const override { return layers_.front().kv_heads(); }
  int64_t num_layers_local() const override { return static_cast<int64_t>(layers_.size()); }
  uint64_t weight_bytes() const override { return weight_bytes_; }
  // A mixture of experts routes its tokens on the host.
  bool graph_capturable() const override { return config_.num_experts == 0; }
  int64_t activation_bytes(int64_t t) const override {
    const ModelConfig& c = config_;
    const int64_t tp = ctx_.tp_size(), d = c.head_dim;
    const int64_t heads = c.num_heads / tp, kv = layers_.front().kv_heads();
    // residual, normed, proj, rope table; attention's qkv and attn (or MLA's buffers); a dense
    // MLP's gate_up and act where there are dense layers, the experts' where there are sparse
    // ones; plus one row of logits.
    const int64_t attention = c.mla() ? MlaAttention::activation_floats(c, static_cast<int>(tp))
                                      : (heads + 2 * kv) * d + heads * d;
    int64_t mlp = 0;
    if (c.num_experts == 0 || c.first_dense_layers > 0) mlp += 3 * (c.intermediate_size / tp + 1);
    if (c.num_experts > 0) mlp += SparseMoe::activation_floats(c, static_cast<int>(tp));
    const int64_t floats = t * (3 * c.hidden_size + attention + mlp + rotary_.table_width()) +
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
    for (size_t l = 0; l < layers_.size(); ++l)
      layers_[l].forward(residual, table, batch.attention, cache.k[l], cache.v[l], buf_);
    if (!lm_head_) return residual;  // to the next stage
    const int64_t r = batch.logit_rows.numel();
    Tensor rows = gather_logit_rows(b, batch, residual);
    norm_.forward(b, rows, rows);
    Tensor logits = b.empty({r, config_.vocab_size}, DType::kF32);
    lm_head_->forward(rows, logits);
    if (config_.final_logit_softcapping > 0)
      b.softcap(logits, static_cast<float>(config_.final_logit_softcapping));
    return logits;
  }

 private:
  ModelContext& ctx_;
  ModelConfig config_;
  std::optional<VocabParallelEmbedding> embed_;
  std::vector<DecoderLayer> layers_;
  RMSNorm norm_;
  std::optional<ParallelLMHead> lm_head_;
  RotaryEmbedding rotary_;
  Buffers buf_;
  Scratch rope_table_;
  uint64_t weight_bytes_ = 0;
};

}  // namespace

std::unique_ptr<CausalLM> build_llama_family(ModelContext& ctx, WeightSource& weights,
                                             const ModelConfig& config) {
  return std::make_unique<LlamaFamilyModel>(ctx, weights, config);
}

}  // namespace tessera

namespace tessera {

std::vector<WeightSpec> weight_specs(const ModelConfig& c) {
  if (c.arch == Arch::kGpt2 || c.arch == Arch::kOpt) return gpt2_weight_specs(c);
  if (c.arch == Arch::kFalcon) return falcon_weight_specs(c);
  std::vector<WeightSpec> specs;
  const int64_t h = c.hidden_size, d = c.head_dim, f = c.intermediate_size;
  specs.push_back({"model.embed_tokens.weight", {c.vocab_size, h}, WeightRole::kEmbedding});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    specs.push_back({p + "input_layernorm.weight", {h}, WeightRole::kNorm});
    specs.push_back({p + "post_attention_layernorm.weight", {h}, WeightRole::kNorm});
    if (c.sandwich_norms) {
      specs.push_back({p + "pre_feedforward_layernorm.weight", {h}, WeightRole::kNorm});
      specs.push_back({p + "post_feedforward_layernorm.weight", {h}, WeightRole::kNorm});
    }
    if (c.mla()) {
      const std::string a = p + "self_attn.";
      const int64_t qk = c.qk_nope_head_dim + c.qk_rope_head_dim;
      if (c.q_lora_rank > 0) {
        specs.push_back({a + "q_a_proj.weight", {c.q_lora_rank, h}, WeightRole::kLinear});
        specs.push_back({a + "q_a_layernorm.weight", {c.q_lora_rank}, WeightRole::kNorm});
        specs.push_back(
            {a + "q_b_proj.weight", {c.num_heads * qk, c.q_lora_rank}, WeightRole::kLinear});
      } else {
        specs.push_back({a + "q_proj.weight", {c.num_heads * qk, h}, WeightRole::kLinear});
      }
      specs.push_back({a + "kv_a_proj_with_mqa.weight",
                       {c.kv_lora_rank + c.qk_rope_head_dim, h},
                       WeightRole::kLinear});
      specs.push_back({a + "kv_a_layernorm.weight", {c.kv_lora_rank}, WeightRole::kNorm});
      specs.push_back({a + "kv_b_proj.weight",
                       {c.num_heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank},
                       WeightRole::kLinear});
      specs.push_back({a + "o_proj.weight", {h, c.num_heads * c.v_head_dim}, WeightRole::kLinear});
    }
    const int64_t rows[3] = {c.num_heads * d, c.num_kv_heads * d, c.num_kv_heads * d};
    const char* names[3] = {"q_proj", "k_proj", "v_proj"};
    for (int i = 0; i < 3 && !c.mla(); ++i) {
      specs.push_back({p + "self_attn." + names[i] + ".weight", {rows[i], h}, WeightRole::kLinear});
      if (c.attention_bias)
        specs.push_back({p + "self_attn." + names[i] + ".bias", {rows[i]}, WeightRole::kBias});
    }
    if (!c.mla())
      specs.push_back({p + "self_attn.o_proj.weight", {h, c.num_heads * d}, WeightRole::kLinear});
    if (c.o_proj_bias) specs.push_back({p + "self_attn.o_proj.bias", {h}, WeightRole::kBias});
    if (c.qk_norm) {
      specs.push_back({p + "self_attn.q_norm.weight", {d}, WeightRole::kNorm});
      specs.push_back({p + "self_attn.k_norm.weight", {d}, WeightRole::kNorm});
    }
    if (sparse_layer(c, l)) {
      const std::string m = moe_prefix(c, l);
      const MoeNames n = moe_names(c);
      const int64_t e = c.moe_intermediate_size;
      specs.push_back({m + n.router + ".weight", {c.num_experts, h}, WeightRole::kRouter});
      if (c.sigmoid_grouped_routing)
        specs.push_back({m + n.router_bias, {c.num_experts}, WeightRole::kBias});
      for (int64_t x = 0; x < c.num_experts; ++x) {
        const std::string ep = m + fmt::vformat(n.expert_format, fmt::make_format_args(x));
        specs.push_back({ep + n.gate + ".weight", {e, h}, WeightRole::kLinear});
        specs.push_back({ep + n.up + ".weight", {e, h}, WeightRole::kLinear});
        specs.push_back({ep + n.down + ".weight", {h, e}, WeightRole::kLinear});
      }
      if (const int64_t s = c.shared_expert_intermediate_size; s > 0) {
        const std::string sp = m + n.shared + ".";
        specs.push_back({sp + n.gate + ".weight", {s, h}, WeightRole::kLinear});
        specs.push_back({sp + n.up + ".weight", {s, h}, WeightRole::kLinear});
        specs.push_back({sp + n.down + ".weight", {h, s}, WeightRole::kLinear});
        if (c.shared_expert_gated)
          specs.push_back({m + n.shared_gate + ".weight", {1, h}, WeightRole::kRouter});
      }
      continue;
    }
    for (const char* name : {"gate_proj", "up_proj"}) {
      specs.push_back({p + "mlp." + name + ".weight", {f, h}, WeightRole::kLinear});
      if (c.mlp_bias) specs.push_back({p + "mlp." + name + ".bias", {f}, WeightRole::kBias});
    }
    specs.push_back({p + "mlp.down_proj.weight", {h, f}, WeightRole::kLinear});
    if (c.mlp_bias) specs.push_back({p + "mlp.down_proj.bias", {h}, WeightRole::kBias});
  }
  specs.push_back({"model.norm.weight", {h}, WeightRole::kNorm});
  if (!c.tie_word_embeddings)
    specs.push_back({"lm_head.weight", {c.vocab_size, h}, WeightRole::kLmHead});
  return specs;
}

}  // namespace tessera
