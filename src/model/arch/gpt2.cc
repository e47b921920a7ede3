// GPT-2 (GPT2LMHeadModel): a pre-norm decoder with LayerNorm (weight and bias), learned absolute
// position embeddings instead of rotary, multi-head attention from one fused c_attn, an ungated
// MLP (c_fc, GELU, c_proj) and a tied LM head. Its Conv1D weights are stored [in, out]; the
// parallel layers transpose them at load. Ranks never appear here.
#include <fmt/format.h>

#include "core/status.h"
#include "model/arch/registry.h"
#include "model/layers/embedding.h"
#include "model/layers/linear.h"
#include "model/layers/scratch.h"

namespace tessera {

namespace {

struct LayerNorm {
  Tensor weight, bias;  // f32 [hidden]
  float eps = 1e-5f;
  void forward(Backend& backend, const Tensor& x, const Tensor& out) const {
    backend.layer_norm(x, weight, bias, eps, out);
  }
};

LayerNorm load_layer_norm(ModelContext& ctx, WeightSource& w, const std::string& name,
                          const ModelConfig& c) {
  return LayerNorm{load_f32_vector(ctx, w, name + ".weight", c.hidden_size),
                   load_f32_vector(ctx, w, name + ".bias", c.hidden_size),
                   static_cast<float>(c.layer_norm_eps)};
}

struct Buffers {
  Scratch residual, normed, qkv, attn, proj, fc;
};

class Gpt2Block {
 public:
  Gpt2Block(ModelContext& ctx, WeightSource& w, const ModelConfig& c, const std::string& prefix,
            int64_t layer)
      : ctx_(ctx) {
    const std::string p = fmt::format("{}h.{}.", prefix, layer);
    const int tp = ctx.tp_size(), rank = ctx.tp_rank();
    const int64_t h = c.hidden_size, d = c.head_dim;
    heads_ = c.num_heads / tp;
    const int64_t begin = rank * heads_ * d, end = (rank + 1) * heads_ * d;
    // c_attn's output columns are [q | k | v], each split by heads.
    qkv_.emplace(
        ctx, w,
        std::vector<ColumnPart>{{p + "attn.c_attn", 3 * h, begin, end, true, true},
                                {p + "attn.c_attn", 3 * h, h + begin, h + end, true, true},
                                {p + "attn.c_attn", 3 * h, 2 * h + begin, 2 * h + end, true, true}},
        h);
    o_.emplace(ctx, w, p + "attn.c_proj", h, h, Range{begin, end}, true, true);
    const Range part = split_evenly(c.intermediate_size, tp, rank);
    fc_.emplace(ctx, w,
                std::vector<ColumnPart>{
                    {p + "mlp.c_fc", c.intermediate_size, part.begin, part.end, true, true}},
                h);
    down_.emplace(ctx, w, p + "mlp.c_proj", h, c.intermediate_size, part, true, true);
    ffn_local_ = part.size();
    act_ = c.hidden_act;
    ln_1_ = load_layer_norm(ctx, w, p + "ln_1", c);
    ln_2_ = load_layer_norm(ctx, w, p + "ln_2", c);
    // Old checkpoints store the causal mask as buffers.
    for (const char* buffer : {"attn.bias", "attn.masked_bias"})
      if (w.has(p + buffer)) w.ignore(p + buffer);
    params_.num_heads = params_.num_kv_heads = static_cast<int>(heads_);
    params_.head_dim = static_cast<int>(d);
    params_.scale = c.layer_attention_scale(layer);
  }

  int64_t heads() const { return heads_; }

  // residual [T, hidden] is updated in place.
  void forward(const Tensor& residual, const AttentionMetadata& meta, const Tensor& k_cache,
               const Tensor& v_cache, Buffers& buf) {
    Backend& b = ctx_.backend;
    const int64_t t = residual.size(0), h = residual.size(1), d = params_.head_dim;
    Tensor normed = buf.normed.get(b, t, h);
    Tensor proj = buf.proj.get(b, t, h);
    ln_1_.forward(b, residual, normed);
    Tensor qkv = buf.qkv.get(b, t, qkv_->out_features());
    qkv_->forward(normed, qkv);
    Tensor q = qkv.slice(1, 0, heads_ * d);
    Tensor k = qkv.slice(1, heads_ * d, 2 * heads_ * d);
    Tensor v = qkv.slice(1, 2 * heads_ * d, 3 * heads_ * d);
    b.write_kv(k, v, k_cache, v_cache, meta);
    Tensor attn = buf.attn.get(b, t, heads_ * d);
    b.paged_attention(q, k_cache, v_cache, meta, params_, attn);
    o_->forward(attn, proj);
    b.add(residual, proj, residual);
    ln_2_.forward(b, residual, normed);
    Tensor fc = buf.fc.get(b, t, ffn_local_);
    fc_->forward(normed, fc);
    b.activation(fc, act_, fc);
    down_->forward(fc, proj);
    b.add(residual, proj, residual);
  }

 private:
  ModelContext& ctx_;
  int64_t heads_ = 0, ffn_local_ = 0;
  std::optional<ColumnParallelLinear> qkv_, fc_;
  std::optional<RowParallelLinear> o_, down_;
  LayerNorm ln_1_, ln_2_;
  Activation act_ = Activation::kGeluTanh;
  AttentionParams params_;
};

class Gpt2Model : public CausalLM {
 public:
  Gpt2Model(ModelContext& ctx, WeightSource& w, const ModelConfig& config)
      : ctx_(ctx), config_(config) {
    const ModelConfig& c = config_;
    if (c.num_heads % ctx.tp_size() != 0)
      fail("tensor-parallel size {} does not divide the {} attention heads", ctx.tp_size(),
           c.num_heads);
    // Checkpoints written by GPT2LMHeadModel prefix "transformer."; the original ones do not.
    const std::string prefix = w.has("wte.weight") ? "" : "transformer.";
    const std::string wte = prefix + "wte.weight", wpe = prefix + "wpe.weight";
    const bool tied = c.tie_word_embeddings;
    const Range owned = ctx.owned_layers(c.num_layers);
    if (ctx.owns_embedding()) {
      embed_.emplace(ctx, w, wte, c.vocab_size, c.hidden_size, 1.0f, tied && ctx.owns_lm_head());
      // Positions are few (n_positions rows): every tensor-parallel rank holds the whole table.
      positions_ =
          ctx.backend.prepare_weight(w.get(wpe, {c.max_position_embeddings, c.hidden_size}));
    } else {
      if (!(tied && ctx.owns_lm_head())) w.ignore(wte);
      w.ignore(wpe);
    }
    for (int64_t l = 0; l < c.num_layers; ++l) {
      if (l >= owned.begin && l < owned.end) {
        blocks_.emplace_back(ctx, w, c, prefix, l);
      } else {
        w.ignore_prefix(fmt::format("{}h.{}.", prefix, l));
      }
    }
    if (w.has("lm_head.weight") && tied) w.ignore("lm_head.weight");
    if (ctx.owns_lm_head()) {
      ln_f_ = load_layer_norm(ctx, w, prefix + "ln_f", c);
      if (tied && embed_) {
        lm_head_.emplace(ctx, embed_->shard(), embed_->range(), c.vocab_size);
      } else {
        const std::string name = tied ? wte : "lm_head.weight";
        Range r = split_evenly(c.vocab_size, ctx.tp_size(), ctx.tp_rank());
        Tensor t = w.get(name, {c.vocab_size, c.hidden_size}, Slice{0, r.begin, r.end});
        lm_head_.emplace(ctx, ctx.backend.prepare_linear_weight(std::move(t)), r, c.vocab_size);
      }
    } else {
      w.ignore(prefix + "ln_f.weight");
      w.ignore(prefix + "ln_f.bias");
      if (w.has("lm_head.weight")) w.ignore("lm_head.weight");
    }
  }

  const ModelConfig& config() const override { return config_; }
  int64_t kv_heads_local() const override { return blocks_.front().heads(); }
  int64_t num_layers_local() const override { return static_cast<int64_t>(blocks_.size()); }
  uint64_t weight_bytes() const override { return weight_bytes_; }
  int64_t activation_bytes(int64_t t) const override {
    const ModelConfig& c = config_;
    const int64_t tp = ctx_.tp_size(), local = c.num_heads / tp * c.head_dim;
    const int64_t ffn = c.intermediate_size / tp + 1;
    // residual, normed, proj, positions, qkv, attn, fc; plus one row of logits.
    const int64_t floats =
        t * (4 * c.hidden_size + 4 * local + ffn) + (ctx_.owns_lm_head() ? c.vocab_size : 0);
    return floats * 4;
  }
  void set_weight_bytes(uint64_t bytes) { weight_bytes_ = bytes; }

  Tensor forward(const ForwardBatch& batch, KVCache& cache) override {
    Backend& b = ctx_.backend;
    const int64_t t = batch.token_ids.numel(), h = config_.hidden_size;
    Tensor residual = buf_.residual.get(b, t, h);
    if (embed_) {
      embed_->forward(batch.token_ids, residual);
      Tensor pos = position_rows_.get(b, t, h);
      b.embedding(positions_, batch.positions, 0, 1.0f, pos);
      b.add(residual, pos, residual);
    } else {
      TESSERA_CHECK(batch.hidden_in.numel() == t * h) << "a later stage needs the hidden states";
      b.copy(batch.hidden_in, residual);
    }
    for (size_t l = 0; l < blocks_.size(); ++l)
      blocks_[l].forward(residual, batch.attention, cache.k[l], cache.v[l], buf_);
    if (!lm_head_) return residual;  // to the next stage
    const int64_t r = batch.logit_rows.numel();
    Tensor rows = b.empty({r, h}, DType::kF32);
    b.gather_rows(residual, batch.logit_rows, rows);
    ln_f_.forward(b, rows, rows);
    Tensor logits = b.empty({r, config_.vocab_size}, DType::kF32);
    lm_head_->forward(rows, logits);
    return logits;
  }

 private:
  ModelContext& ctx_;
  ModelConfig config_;
  std::optional<VocabParallelEmbedding> embed_;
  Tensor positions_;  // wpe [n_positions, hidden], first stage only
  std::vector<Gpt2Block> blocks_;
  LayerNorm ln_f_;
  std::optional<ParallelLMHead> lm_head_;
  Buffers buf_;
  Scratch position_rows_;
  uint64_t weight_bytes_ = 0;
};

}  // namespace

std::unique_ptr<CausalLM> build_gpt2(ModelContext& ctx, WeightSource& weights,
                                     const ModelConfig& config) {
  auto model = std::make_unique<Gpt2Model>(ctx, weights, config);
  model->set_weight_bytes(weights.bytes_used());
  return model;
}

// As GPT2LMHeadModel.save_pretrained writes them: "transformer." names, Conv1D weights
// [in, out], no lm_head.weight (tied).
std::vector<WeightSpec> gpt2_weight_specs(const ModelConfig& c) {
  std::vector<WeightSpec> specs;
  const int64_t h = c.hidden_size, f = c.intermediate_size;
  specs.push_back({"transformer.wte.weight", {c.vocab_size, h}, WeightRole::kEmbedding});
  specs.push_back({"transformer.wpe.weight", {c.max_position_embeddings, h}, WeightRole::kBias});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = fmt::format("transformer.h.{}.", l);
    for (const char* ln : {"ln_1", "ln_2"}) {
      specs.push_back({p + ln + ".weight", {h}, WeightRole::kNorm});
      specs.push_back({p + ln + ".bias", {h}, WeightRole::kBias});
    }
    specs.push_back({p + "attn.c_attn.weight", {h, 3 * h}, WeightRole::kLinearTransposed});
    specs.push_back({p + "attn.c_attn.bias", {3 * h}, WeightRole::kBias});
    specs.push_back({p + "attn.c_proj.weight", {h, h}, WeightRole::kLinearTransposed});
    specs.push_back({p + "attn.c_proj.bias", {h}, WeightRole::kBias});
    specs.push_back({p + "mlp.c_fc.weight", {h, f}, WeightRole::kLinearTransposed});
    specs.push_back({p + "mlp.c_fc.bias", {f}, WeightRole::kBias});
    specs.push_back({p + "mlp.c_proj.weight", {f, h}, WeightRole::kLinearTransposed});
    specs.push_back({p + "mlp.c_proj.bias", {h}, WeightRole::kBias});
  }
  specs.push_back({"transformer.ln_f.weight", {h}, WeightRole::kNorm});
  specs.push_back({"transformer.ln_f.bias", {h}, WeightRole::kBias});
  if (!c.tie_word_embeddings)
    specs.push_back({"lm_head.weight", {c.vocab_size, h}, WeightRole::kLmHead});
  return specs;
}

}  // namespace tessera
