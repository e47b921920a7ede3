// GPT-2 (GPT2LMHeadModel) and OPT (OPTForCausalLM): decoders with LayerNorm (weight and bias),
// learned absolute position embeddings instead of rotary, multi-head attention, an ungated MLP
// and a tied LM head. They differ in names and in small ways (Names below): GPT-2 fuses q/k/v
// into c_attn and stores its Conv1D weights [in, out] (the parallel layers transpose them at
// load); OPT's position table starts 2 rows in, and OPT-350m normalises after each residual add.
// Ranks never appear here.
#include <fmt/format.h>

#include "core/status.h"
#include "model/arch/registry.h"
#include "model/layers/embedding.h"
#include "model/layers/linear.h"
#include "model/layers/norm.h"
#include "model/layers/scratch.h"

namespace tessera {

namespace {

struct Buffers {
  Scratch residual, normed, qkv, attn, proj, fc;
};

// Checkpoint names of one family.
struct Names {
  std::string wte, wpe, ln_f;  // ln_f without .weight / .bias
  std::string layer_format;    // fmt pattern of a layer's prefix, e.g. "transformer.h.{}."
  std::string ln_1, ln_2;      // relative to the layer prefix, without .weight / .bias
  std::string fused_qkv;       // GPT-2's c_attn, or empty
  std::string q, k, v, o, fc, proj;
  bool transposed = false;           // Conv1D [in, out] weights
  std::vector<std::string> buffers;  // per-layer non-weights to skip

  static Names gpt2(const std::string& prefix) {
    Names n;
    n.wte = prefix + "wte.weight";
    n.wpe = prefix + "wpe.weight";
    n.ln_f = prefix + "ln_f";
    n.layer_format = prefix + "h.{}.";
    n.ln_1 = "ln_1";
    n.ln_2 = "ln_2";
    n.fused_qkv = "attn.c_attn";
    n.o = "attn.c_proj";
    n.fc = "mlp.c_fc";
    n.proj = "mlp.c_proj";
    n.transposed = true;
    n.buffers = {"attn.bias", "attn.masked_bias"};  // causal masks in old checkpoints
    return n;
  }
  static Names opt() {
    Names n;
    n.wte = "model.decoder.embed_tokens.weight";
    n.wpe = "model.decoder.embed_positions.weight";
    n.ln_f = "model.decoder.final_layer_norm";
    n.layer_format = "model.decoder.layers.{}.";
    n.ln_1 = "self_attn_layer_norm";
    n.ln_2 = "final_layer_norm";
    n.q = "self_attn.q_proj";
    n.k = "self_attn.k_proj";
    n.v = "self_attn.v_proj";
    n.o = "self_attn.out_proj";
    n.fc = "fc1";
    n.proj = "fc2";
    return n;
  }
};

class Gpt2Block {
 public:
  Gpt2Block(ModelContext& ctx, WeightSource& w, const ModelConfig& c, const Names& n, int64_t layer)
      : ctx_(ctx) {
    const std::string p = fmt::vformat(n.layer_format, fmt::make_format_args(layer));
    const int tp = ctx.tp_size(), rank = ctx.tp_rank();
    const int64_t h = c.hidden_size, d = c.head_dim;
    const bool bias = c.attention_bias, t = n.transposed;
    heads_ = c.num_heads / tp;
    const int64_t begin = rank * heads_ * d, end = (rank + 1) * heads_ * d;
    if (!n.fused_qkv.empty()) {
      // c_attn's output columns are [q | k | v], each split by heads.
      const std::string qkv = p + n.fused_qkv;
      qkv_.emplace(ctx, w,
                   std::vector<ColumnPart>{{qkv, 3 * h, begin, end, bias, t},
                                           {qkv, 3 * h, h + begin, h + end, bias, t},
                                           {qkv, 3 * h, 2 * h + begin, 2 * h + end, bias, t}},
                   h);
    } else {
      qkv_.emplace(ctx, w,
                   std::vector<ColumnPart>{{p + n.q, h, begin, end, bias, t},
                                           {p + n.k, h, begin, end, bias, t},
                                           {p + n.v, h, begin, end, bias, t}},
                   h);
    }
    o_.emplace(ctx, w, p + n.o, h, h, Range{begin, end}, c.o_proj_bias, t);
    const Range part = split_evenly(c.intermediate_size, tp, rank);
    fc_.emplace(ctx, w,
                std::vector<ColumnPart>{
                    {p + n.fc, c.intermediate_size, part.begin, part.end, c.mlp_bias, t}},
                h);
    down_.emplace(ctx, w, p + n.proj, h, c.intermediate_size, part, c.mlp_bias, t);
    ffn_local_ = part.size();
    act_ = c.hidden_act;
    post_norm_ = c.post_norm;
    ln_1_ = load_layer_norm(ctx, w, p + n.ln_1, c);
    ln_2_ = load_layer_norm(ctx, w, p + n.ln_2, c);
    for (const std::string& buffer : n.buffers)
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
    Tensor proj = buf.proj.get(b, t, h);
    // Pre-norm: each sublayer reads a LayerNorm of the residual stream. Post-norm (OPT-350m):
    // it reads the stream itself, which is normalised in place after each add.
    const Tensor input = post_norm_ ? residual : buf.normed.get(b, t, h);
    if (!post_norm_) ln_1_.forward(b, residual, input);
    Tensor qkv = buf.qkv.get(b, t, qkv_->out_features());
    qkv_->forward(input, qkv);
    Tensor q = qkv.slice(1, 0, heads_ * d);
    Tensor k = qkv.slice(1, heads_ * d, 2 * heads_ * d);
    Tensor v = qkv.slice(1, 2 * heads_ * d, 3 * heads_ * d);
    b.write_kv(k, v, k_cache, v_cache, meta);
    Tensor attn = buf.attn.get(b, t, heads_ * d);
    b.paged_attention(q, k_cache, v_cache, meta, params_, attn);
    o_->forward(attn, proj);
    b.add(residual, proj, residual);
    if (post_norm_) {
      ln_1_.forward(b, residual, residual);
    } else {
      ln_2_.forward(b, residual, input);
    }
    Tensor fc = buf.fc.get(b, t, ffn_local_);
    fc_->forward(input, fc);
    b.activation(fc, act_, fc);
    down_->forward(fc, proj);
    b.add(residual, proj, residual);
    if (post_norm_) ln_2_.forward(b, residual, residual);
  }

 private:
  ModelContext& ctx_;
  int64_t heads_ = 0, ffn_local_ = 0;
  std::optional<ColumnParallelLinear> qkv_, fc_;
  std::optional<RowParallelLinear> o_, down_;
  LayerNorm ln_1_, ln_2_;
  Activation act_ = Activation::kGeluTanh;
  bool post_norm_ = false;
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
    const Names n = c.arch == Arch::kOpt ? Names::opt()
                                         : Names::gpt2(w.has("wte.weight") ? "" : "transformer.");
    const std::string& wte = n.wte;
    const std::string& wpe = n.wpe;
    const bool tied = c.tie_word_embeddings;
    position_offset_ = static_cast<int32_t>(c.position_offset);
    const Range owned = ctx.owned_layers(c.num_layers);
    // OPT-350m: embeddings (and the tied head) narrower than hidden, with projections between.
    embed_dim_ = c.word_embed_proj_dim > 0 ? c.word_embed_proj_dim : c.hidden_size;
    const bool projected = embed_dim_ != c.hidden_size;
    const std::string project_in = "model.decoder.project_in",
                      project_out = "model.decoder.project_out";
    if (ctx.owns_embedding()) {
      embed_.emplace(ctx, w, wte, c.vocab_size, embed_dim_, 1.0f, tied && ctx.owns_lm_head());
      if (projected) project_in_.emplace(ctx, w, project_in, c.hidden_size, embed_dim_);
      // Positions are few (n_positions rows): every tensor-parallel rank holds the whole table.
      positions_ = ctx.backend.prepare_weight(
          w.get(wpe, {c.max_position_embeddings + c.position_offset, c.hidden_size}));
    } else {
      if (!(tied && ctx.owns_lm_head())) w.ignore(wte);
      w.ignore(wpe);
      if (projected) w.ignore(project_in + ".weight");
    }
    for (int64_t l = 0; l < c.num_layers; ++l) {
      if (l >= owned.begin && l < owned.end) {
        blocks_.emplace_back(ctx, w, c, n, l);
      } else {
        w.ignore_prefix(fmt::vformat(n.layer_format, fmt::make_format_args(l)));
      }
    }
    if (ctx.owns_lm_head()) {
      // OPT-350m (post-norm) has no final LayerNorm: its blocks end normalised.
      has_ln_f_ = !c.post_norm;
      if (has_ln_f_) ln_f_ = load_layer_norm(ctx, w, n.ln_f, c);
      if (projected) project_out_.emplace(ctx, w, project_out, embed_dim_, c.hidden_size);
      lm_head_.emplace(
          load_lm_head(ctx, w, embed_ ? &*embed_ : nullptr, tied, wte, c.vocab_size, embed_dim_));
    } else {
      if (!c.post_norm) {
        w.ignore(n.ln_f + ".weight");
        w.ignore(n.ln_f + ".bias");
      }
      if (projected) w.ignore(project_out + ".weight");
      if (w.has("lm_head.weight")) w.ignore("lm_head.weight");
    }
    weight_bytes_ = w.bytes_used();  // this rank's share, everything taken above
  }

  const ModelConfig& config() const override { return config_; }
  int64_t kv_heads_local() const override { return blocks_.front().heads(); }
  int64_t num_layers_local() const override { return static_cast<int64_t>(blocks_.size()); }
  uint64_t weight_bytes() const override { return weight_bytes_; }
  int64_t activation_bytes(int64_t t) const override {
    const ModelConfig& c = config_;
    const int64_t tp = ctx_.tp_size(), local = c.num_heads / tp * c.head_dim;
    const int64_t ffn = c.intermediate_size / tp + 1;
    // residual, normed, proj, positions, qkv, attn, fc, and OPT-350m's narrower embeddings;
    // plus one row of logits.
    const int64_t embedded = embed_dim_ != c.hidden_size ? embed_dim_ : 0;
    const int64_t floats = t * (4 * c.hidden_size + 4 * local + ffn + embedded) +
                           (ctx_.owns_lm_head() ? c.vocab_size : 0);
    return floats * 4;
  }

  Tensor forward(const ForwardBatch& batch, KVCache& cache) override {
    Backend& b = ctx_.backend;
    const int64_t t = batch.token_ids.numel(), h = config_.hidden_size;
    Tensor residual = buf_.residual.get(b, t, h);
    if (embed_) {
      if (project_in_) {
        Tensor embedded = embedded_.get(b, t, embed_dim_);
        embed_->forward(batch.token_ids, embedded);
        project_in_->forward(embedded, residual);
      } else {
        embed_->forward(batch.token_ids, residual);
      }
      Tensor pos = position_rows_.get(b, t, h);
      // Table row p + offset holds position p: the table's ids start at -offset.
      b.embedding(positions_, batch.positions, -position_offset_, 1.0f, pos);
      b.add(residual, pos, residual);
    } else {
      take_hidden_in(b, batch, residual);
    }
    for (size_t l = 0; l < blocks_.size(); ++l)
      blocks_[l].forward(residual, batch.attention, cache.k[l], cache.v[l], buf_);
    if (!lm_head_) return residual;  // to the next stage
    const int64_t r = batch.logit_rows.numel();
    Tensor rows = gather_logit_rows(b, batch, residual);
    if (has_ln_f_) ln_f_.forward(b, rows, rows);
    if (project_out_) {
      Tensor narrow = b.empty({r, embed_dim_}, DType::kF32);
      project_out_->forward(rows, narrow);
      rows = narrow;
    }
    Tensor logits = b.empty({r, config_.vocab_size}, DType::kF32);
    lm_head_->forward(rows, logits);
    return logits;
  }

 private:
  ModelContext& ctx_;
  ModelConfig config_;
  std::optional<VocabParallelEmbedding> embed_;
  int64_t embed_dim_ = 0;                                     // word_embed_proj_dim, else hidden
  std::optional<ReplicatedLinear> project_in_, project_out_;  // OPT-350m only
  Tensor positions_;  // [n_positions + offset, hidden], first stage only
  int32_t position_offset_ = 0;
  std::vector<Gpt2Block> blocks_;
  LayerNorm ln_f_;
  bool has_ln_f_ = true;
  std::optional<ParallelLMHead> lm_head_;
  Buffers buf_;
  Scratch position_rows_, embedded_;
  uint64_t weight_bytes_ = 0;
};

}  // namespace

std::unique_ptr<CausalLM> build_gpt2(ModelContext& ctx, WeightSource& weights,
                                     const ModelConfig& config) {
  return std::make_unique<Gpt2Model>(ctx, weights, config);
}

// OPTForCausalLM's names; weights [out, in].
std::vector<WeightSpec> opt_weight_specs(const ModelConfig& c) {
  std::vector<WeightSpec> specs;
  const int64_t h = c.hidden_size, f = c.intermediate_size;
  const std::string d = "model.decoder.";
  const int64_t e = c.word_embed_proj_dim > 0 ? c.word_embed_proj_dim : h;
  specs.push_back({d + "embed_tokens.weight", {c.vocab_size, e}, WeightRole::kEmbedding});
  if (e != h) {
    specs.push_back({d + "project_in.weight", {h, e}, WeightRole::kLinear});
    specs.push_back({d + "project_out.weight", {e, h}, WeightRole::kLinear});
  }
  specs.push_back({d + "embed_positions.weight",
                   {c.max_position_embeddings + c.position_offset, h},
                   WeightRole::kBias});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = fmt::format("{}layers.{}.", d, l);
    for (const char* ln : {"self_attn_layer_norm", "final_layer_norm"}) {
      specs.push_back({p + ln + ".weight", {h}, WeightRole::kNorm});
      specs.push_back({p + ln + ".bias", {h}, WeightRole::kBias});
    }
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
      specs.push_back({p + "self_attn." + proj + ".weight", {h, h}, WeightRole::kLinear});
      if (c.attention_bias)
        specs.push_back({p + "self_attn." + proj + ".bias", {h}, WeightRole::kBias});
    }
    specs.push_back({p + "fc1.weight", {f, h}, WeightRole::kLinear});
    specs.push_back({p + "fc2.weight", {h, f}, WeightRole::kLinear});
    if (c.mlp_bias) {
      specs.push_back({p + "fc1.bias", {f}, WeightRole::kBias});
      specs.push_back({p + "fc2.bias", {h}, WeightRole::kBias});
    }
  }
  if (!c.post_norm) {
    specs.push_back({d + "final_layer_norm.weight", {h}, WeightRole::kNorm});
    specs.push_back({d + "final_layer_norm.bias", {h}, WeightRole::kBias});
  }
  if (!c.tie_word_embeddings)
    specs.push_back({"lm_head.weight", {c.vocab_size, e}, WeightRole::kLmHead});
  return specs;
}

// As GPT2LMHeadModel.save_pretrained writes them: "transformer." names, Conv1D weights
// [in, out], no lm_head.weight (tied). OPT has its own names.
std::vector<WeightSpec> gpt2_weight_specs(const ModelConfig& c) {
  if (c.arch == Arch::kOpt) return opt_weight_specs(c);
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
