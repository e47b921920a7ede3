// A sparse mixture of SwiGLU experts (Mixtral, Qwen3-MoE, Qwen2-MoE with its shared expert). The
// router runs on the device; its logits [T, experts] come to the host, which picks each token's
// experts (softmax, top-k, optional renormalisation) and groups the tokens by expert. Each expert
// then runs on its own tokens only: gather their rows, gate/up, SiLU, down, and add the result,
// weighted by the router, into the output rows. Experts are split across tensor-parallel ranks like
// a dense MLP (column-parallel gate/up, row-parallel down); the partial sums of all experts share
// one all-reduce.
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

// Checkpoint names under a layer's MoE prefix.
struct MoeNames {
  std::string router;          // e.g. "gate"
  std::string expert_format;   // fmt pattern of one expert's prefix, e.g. "experts.{}."
  std::string gate, up, down;  // e.g. "w1", "w3", "w2" (Mixtral)
  // Qwen2-MoE's shared expert (same gate/up/down names) and its one-output gate.
  std::string shared = "shared_expert", shared_gate = "shared_expert_gate";
  std::string router_bias = "gate.e_score_correction_bias";  // DeepSeek-V3
};

// Each token's chosen experts and their weights, as the host computes them from router logits.
struct MoeRouting {
  // Per expert: the token rows that chose it (ascending) and their weights.
  std::vector<std::vector<int32_t>> rows;
  std::vector<std::vector<float>> weights;
};
// logits [tokens, experts] row-major: softmax over the experts in f32, the top_k largest
// (ties to the lower expert), rescaled to sum to 1 when `renormalize`.
MoeRouting route_tokens(const float* logits, int64_t tokens, int64_t experts, int64_t top_k,
                        bool renormalize);
// DeepSeek-V3's router (noaux_tc): scores = sigmoid(logits); the experts are split into n_group
// groups, each scored by the sum of its two best (scores + bias); the best topk_group groups
// stay, the others' experts count 0; the top_k by (scores + bias) are chosen, weighted by their
// scores, rescaled to sum to 1 when `renormalize`, then multiplied by `scaling`.
struct GroupedRouting {
  int64_t top_k = 1, n_group = 1, topk_group = 1;
  bool renormalize = true;
  float scaling = 1.0f;
  const float* bias = nullptr;  // [experts] (e_score_correction_bias), or null
};
MoeRouting route_tokens_grouped(const float* logits, int64_t tokens, int64_t experts,
                                const GroupedRouting& routing);

class SparseMoe {
 public:
  SparseMoe(ModelContext& ctx, WeightSource& weights, const std::string& prefix,
            const MoeNames& names, const ModelConfig& config);
  // Activation buffers, shared by the layers of a model (they run one after another).
  struct Buffers {
    Scratch logits, gathered, gate_up, act_out, expert_out, shared_logit;
  };
  // x [T, hidden] -> out [T, hidden] (all-reduced over the tensor-parallel group).
  void forward(const Tensor& x, const Tensor& out, Buffers& buf);
  // Activation floats per token of this layer's buffers.
  static int64_t activation_floats(const ModelConfig& config, int tp);

 private:
  struct Expert {
    std::optional<ColumnParallelLinear> gate_up;
    std::optional<RowParallelLinear> down;
  };
  ModelContext& ctx_;
  std::optional<ReplicatedLinear> router_;  // [experts, hidden], whole on every rank
  std::vector<Expert> experts_;
  // Qwen2-MoE: every token also takes `shared_`, weighted by sigmoid(shared_gate_(x)).
  std::optional<Expert> shared_;
  std::optional<ReplicatedLinear> shared_gate_;  // [1, hidden]
  int64_t shared_width_ = 0;
  // DeepSeek-V3's grouped routing and its bias (host memory: routing runs on the host).
  std::optional<GroupedRouting> grouped_;
  std::vector<float> router_bias_;
  int64_t hidden_ = 0, width_ = 0, top_k_ = 0;
  bool renormalize_ = true;
  Activation act_ = Activation::kSilu;
  // Runs one expert on rows x [n, hidden] and adds scale[i] * its output to out[rows[i]].
  void run_expert(const Expert& e, int64_t width, const Tensor& x, const Tensor& rows,
                  const Tensor& scale, const Tensor& out, Buffers& buf);
};

}  // namespace tessera
