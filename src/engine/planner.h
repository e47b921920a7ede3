// Deployment planning: how much memory a model needs per rank (weights, KV cache, activations)
// for a tensor x pipeline layout, and which layout to choose. The KV-cache arithmetic here
// (kv_block_bytes) and the budget rule (plan_kv_cache in engine_builder.h) are the ones the
// engine sizes its cache with, so `tessera plan` reports the block count `tessera serve` logs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "engine/engine_builder.h"

namespace tessera {

// What one rank's KV cache holds per token slot: `layers` x `heads` x (k_dim + v_dim) elements.
// GQA: heads = local KV heads, k_dim = v_dim = head_dim. MLA (DeepSeek-V2/V3/R1): one latent
// "head" of kv_lora_rank + qk_rope_head_dim elements, no separate V, replicated over TP ranks.
struct KvShape {
  int64_t layers = 0;
  int64_t heads = 0;
  int64_t k_dim = 0;
  int64_t v_dim = 0;
};

// Bytes of one KV block across `shape.layers` layers. Shared by the engine (engine_builder.cc)
// and the planner.
int64_t kv_block_bytes(const KvShape& shape, int block_size, int64_t element_bytes);

// KV heads one of `tp` ranks holds: heads / tp, or one replicated head when tp exceeds them.
int64_t kv_heads_per_rank(int64_t kv_heads, int tp);

// The sizes that memory depends on, for dense, mixture-of-experts and MLA decoders, read from a
// config.json (any architecture with the usual fields; tessera need not run it).
struct ModelShape {
  std::string name;  // as given (folder, file or built-in name)
  std::string architecture;
  std::string hf_id;  // Hugging Face repo of a built-in model
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t rotary_dim = 0;
  int64_t max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  bool qkv_bias = false, o_bias = false, mlp_bias = false, qk_norm = false;
  bool gated_mlp = true;            // gate + up + down (false: up + down, as Falcon)
  bool fused_qkv = false;           // Falcon's query_key_value (same size as separate q, k, v)
  int norms_per_layer = 2;          // Gemma 2: 4
  bool norm_bias = false;           // LayerNorm with bias (Falcon, GPT-2)
  int64_t shared_expert_width = 0;  // Qwen2-MoE's gated shared expert (its intermediate size)
  int64_t learned_positions = 0;    // rows of a learned position table (GPT-2), on every tp rank
  bool final_norm = true;           // false: OPT-350m's post-norm blocks end normalised
  // Width of the token embeddings and LM head when narrower than hidden (OPT-350m's
  // word_embed_proj_dim, with project_in / project_out), else 0.
  int64_t embedding_dim = 0;
  // Mixture of experts (Mixtral, DeepSeek): experts replace the MLP from layer first_dense_layers.
  int64_t num_experts = 0, experts_per_token = 0, moe_intermediate_size = 0, shared_experts = 0;
  int64_t first_dense_layers = 0;
  bool router_bias = false;  // DeepSeek-V3's e_score_correction_bias
  // Multi-head latent attention (DeepSeek-V2/V3/R1).
  int64_t q_lora_rank = 0, kv_lora_rank = 0, qk_nope_head_dim = 0, qk_rope_head_dim = 0,
          v_head_dim = 0;
  std::string stored_dtype = "bf16";  // torch_dtype, or the quantization of the checkpoint

  bool mla() const { return kv_lora_rank > 0; }
  bool moe() const { return num_experts > 0; }
};

// Reads the config.json fields; throws tessera::Error naming the field on a problem.
ModelShape parse_model_shape(const nlohmann::json& config, const std::string& source);
// A model folder, a config.json file, or a built-in name (case-insensitive, e.g. Llama-3.1-70B).
ModelShape load_model_shape(const std::string& model);
// The built-in names and their config.json text (facts from the public config.json files).
std::vector<std::string> builtin_model_names();
std::optional<std::string> builtin_model_config(const std::string& name);

// Weight storage: bf16, f16, f32; fp8, int8 and int4 quantize the decoder's linear layers
// (attention, MLP, experts) while embeddings, LM head, norms and routers stay 16-bit.
enum class WeightFormat { kBF16, kF16, kF32, kFP8, kInt8, kInt4 };
WeightFormat parse_weight_format(const std::string& name);  // bf16, bfloat16, fp8, int4, ...
std::string weight_format_name(WeightFormat format);
// Bytes per parameter of a quantized linear layer (int4: group-128 f16 scales included).
double linear_bytes_per_param(WeightFormat format);

struct ParamCount {
  int64_t linear = 0;  // decoder linear layers (quantizable)
  int64_t other = 0;   // embeddings, LM head, norms, biases, routers
  int64_t total() const { return linear + other; }
  int64_t bytes(WeightFormat format) const;
};

// Parameters of the whole model, and of stage `pp_rank` of `pp` on one of `tp` ranks (the
// largest share: rank 0, which also holds the remainder of uneven splits).
ParamCount count_parameters(const ModelShape& m);
ParamCount rank_parameters(const ModelShape& m, int tp, int pp, int pp_rank);
// The KV shape of stage `pp_rank` of `pp` on one of `tp` ranks.
KvShape rank_kv_shape(const ModelShape& m, int tp, int pp, int pp_rank);
// Activation buffers for a forward pass over `tokens` tokens on one rank (the engine's
// estimate: f32 residual, projections, attention and MLP intermediates, one row of logits).
int64_t rank_activation_bytes(const ModelShape& m, int tp, int64_t tokens);
// Why `tp` cannot split the model's heads, or empty when it can.
std::string tp_problem(const ModelShape& m, int tp);

struct PlanRequest {
  int64_t device_memory = 0;  // bytes per device
  int devices_per_node = 8;
  int max_nodes = 0;                  // 0: as many as needed (up to 64)
  std::optional<WeightFormat> dtype;  // default: as stored
  int64_t kv_element_bytes = 0;       // 0: the weights' 16-bit dtype (fp8 KV: 1)
  std::string kv_cache_dtype = "auto";
  int64_t max_model_len = 0;  // 0: max_position_embeddings
  double gpu_memory_utilization = 0.9;
  std::optional<int64_t> kv_cache_memory;  // fixed KV budget per rank instead of the share
  int64_t max_num_seqs = 256;
  int64_t max_num_batched_tokens = 2048;
  int block_size = 16;
};

// One tensor x pipeline layout, evaluated.
struct LayoutEval {
  int tp = 1, pp = 1;
  bool valid = true;              // heads split evenly and pp <= layers
  bool fits = false;              // weights + activations + one max_model_len sequence of KV fit
  std::string reason;             // why it was rejected, or why it fits
  int64_t weight_bytes_rank = 0;  // largest stage, one rank
  int64_t kv_bytes_per_token_rank = 0;  // largest stage, one rank
  int64_t activation_bytes_rank = 0;
  int64_t budget_bytes_rank = 0;  // what plan_kv_cache gave the KV cache (smallest stage)
  int64_t num_blocks = 0;         // per replica (every rank holds this many blocks)
  int64_t kv_tokens = 0;
  double max_concurrency = 0;  // kv_tokens / max_model_len
  std::string rule;            // plan_kv_cache's description of the budget
};

struct Plan {
  ModelShape model;
  PlanRequest request;
  WeightFormat dtype = WeightFormat::kBF16;
  int64_t kv_element_bytes = 2;
  int64_t max_model_len = 0;
  ParamCount params;
  int64_t weight_bytes = 0;
  int64_t kv_bytes_per_token = 0;  // whole model
  LayoutEval chosen;
  bool found = false;
  std::string why;
  std::vector<LayoutEval> rejected;  // in the order they were considered
  std::string serve_command;
  std::string launch_note;  // how to start a multi-node layout
};

// Evaluates one layout with the engine's KV budget rule.
LayoutEval evaluate_layout(const ModelShape& m, const PlanRequest& r, int tp, int pp);
// The smallest layout that holds the weights plus one full-length sequence of KV cache: one
// device; else tensor parallel within a node (pipeline stages instead when tp cannot split the
// heads); else tp = devices per node and pp = nodes.
Plan make_plan(const ModelShape& m, const PlanRequest& r);

std::string format_plan(const Plan& plan);
nlohmann::json plan_to_json(const Plan& plan);

}  // namespace tessera
