// Multi-head latent attention (DeepSeek-V3), run in its "absorbed" form so that the KV cache
// holds one latent per token instead of keys and values per head:
//   q_h = q_b(norm(q_a(x)))_h = [q_nope_h | q_rope_h]       (or q_proj(x) without q_lora_rank)
//   [k_rope | c] = kv_a_proj_with_mqa(x), c = norm(c)       (one rotary key shared by all heads)
//   score_h(t, s) = q_nope_h . (W_UK_h c_s) + q_rope_h . k_rope_s
//                 = [q_rope_h | W_UK_h^T q_nope_h] . [k_rope_s | c_s]
//   out_h = W_UV_h sum_s p(t, s) c_s
// so attention is multi-query attention with [k_rope | c] (kv_lora_rank + qk_rope_head_dim
// values) as both key and value, with per-head products before (W_UK_h^T) and after (W_UV_h). W_UK
// and W_UV are the rows of kv_b_proj. The rotary dims are interleaved pairs in the checkpoint;
// their weight rows are reordered at load (evens, then odds) so that the rotate-half kernel
// applies. Query heads are split across tensor-parallel ranks; the latent, small, is computed and
// cached whole on every rank.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "config/model_config.h"
#include "loader/weight_source.h"
#include "model/layers/context.h"
#include "model/layers/linear.h"
#include "model/layers/scratch.h"

namespace tessera {

class MlaAttention {
 public:
  MlaAttention(ModelContext& ctx, WeightSource& weights, const std::string& prefix,
               const ModelConfig& config);
  // x [T, hidden] -> out [T, hidden]. The caches are [blocks, block_size, 1, kv_lora + rope]
  // and receive the same vectors: backends lay keys and values out differently within a block,
  // so the values cannot be read from the key cache (a latent-only cache, as vLLM keeps, would
  // need an attention kernel that reads both from one layout).
  // Activation buffers, shared by the layers of a model (they run one after another).
  struct Buffers {
    Scratch q_a_out, q, kv_a_out, q_abs, latent_out, attn;
  };
  void forward(const Tensor& x, const Tensor& rope_table, const AttentionMetadata& meta,
               const Tensor& k_cache, const Tensor& v_cache, const Tensor& out, Buffers& buf);
  int64_t heads() const { return heads_; }
  // Activation floats per token of this layer's buffers.
  static int64_t activation_floats(const ModelConfig& config, int tp);
  // softmax scale: 1 / sqrt(qk_nope + qk_rope), times yarn's mscale^2 where rope_scaling has
  // mscale_all_dim.
  static float softmax_scale(const ModelConfig& config);

 private:
  ModelContext& ctx_;
  int64_t heads_ = 0, nope_ = 0, rope_ = 0, v_ = 0, latent_ = 0, q_lora_ = 0;
  std::optional<ColumnParallelLinear> q_a_, q_b_, q_proj_, kv_a_;
  std::optional<RowParallelLinear> o_;
  Tensor q_a_norm_, kv_a_norm_;  // f32 [q_lora], [kv_lora]
  float eps_ = 1e-6f;
  std::vector<LinearSegment> uk_t_, uv_;  // per local head: W_UK_h^T [kv_lora, nope], W_UV_h
  AttentionParams params_;
};

}  // namespace tessera
