// A model's architecture and hyper-parameters, read from the Hugging Face config.json and
// generation_config.json of a model folder. Everything the model code needs comes from here.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/dtype.h"
#include "kernels/backend.h"

namespace tessera {

enum class Arch {
  kLlama,
  kMistral,
  kQwen2,
  kQwen3,
  kGemma2,
  kGpt2,
  kOpt,
  kFalcon,
  kMixtral,     // Mistral attention, a sparse mixture of SwiGLU experts
  kQwen3Moe,    // Qwen3 attention, a sparse mixture of SwiGLU experts
  kQwen2Moe,    // Qwen2 attention, sparse experts plus a gated shared expert
  kDeepseekV3,  // multi-head latent attention, grouped sigmoid routing, shared experts
};

// "LlamaForCausalLM, MistralForCausalLM, ..." for error messages.
std::string supported_architectures();

struct RopeScaling {
  std::string type = "default";  // default, linear, llama3, yarn
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0, beta_slow = 1.0;  // yarn
  std::optional<double> mscale, mscale_all_dim, attention_factor;
  bool truncate = true;
};

struct ModelConfig {
  std::string architecture;  // e.g. "LlamaForCausalLM"
  std::string model_type;    // e.g. "llama"
  Arch arch = Arch::kLlama;

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  double partial_rotary_factor = 1.0;
  RopeScaling rope_scaling;
  Activation hidden_act = Activation::kSilu;

  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v (and o for Llama's attention_bias) biases
  bool o_proj_bias = false;
  bool mlp_bias = false;
  bool qk_norm = false;  // Qwen3: RMSNorm over each head of q and k

  // Gemma 2.
  bool norm_unit_offset = false;      // RMSNorm multiplies by (1 + weight)
  bool scale_embeddings = false;      // embeddings times sqrt(hidden_size), rounded to the dtype
  bool sandwich_norms = false;        // post-attention, pre- and post-feedforward norms
  double attn_logit_softcapping = 0;  // 0 = none
  double final_logit_softcapping = 0;
  double query_pre_attn_scalar = 0;  // 0 = head_dim

  // GPT-2: LayerNorm with biases, learned absolute positions (no rotary), an ungated MLP and
  // Conv1D weights stored [in, out].
  bool learned_positions = false;
  double layer_norm_eps = 1e-5;
  bool scale_attn_weights = true;                // scores / sqrt(head_dim)
  bool scale_attn_by_inverse_layer_idx = false;  // and / (layer + 1)
  // OPT: the position table starts `position_offset` rows in (2), and do_layer_norm_before =
  // false (OPT-350m) puts each LayerNorm after its residual add.
  int64_t position_offset = 0;
  bool post_norm = false;
  // OPT-350m: token embeddings (and the tied LM head) of word_embed_proj_dim values, projected
  // to and from hidden_size by project_in / project_out. 0: hidden_size, no projections.
  int64_t word_embed_proj_dim = 0;
  // Falcon: attention and MLP read the same input and their outputs join the residual together
  // (parallel_attn); the new decoder (40B/180B) groups query_key_value by key/value head and may
  // give the MLP its own LayerNorm (ln_mlp beside ln_attn).
  bool parallel_attn = false;
  bool new_decoder_architecture = false;
  bool separate_mlp_norm = false;

  // Sparse mixture of experts (Mixtral, Qwen3-MoE): every layer's MLP is num_experts SwiGLU
  // experts of moe_intermediate_size, of which each token takes the num_experts_per_tok with the
  // largest router softmax; norm_topk_prob rescales the chosen weights to sum to 1.
  int64_t num_experts = 0;  // 0: a dense MLP
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  bool norm_topk_prob = true;
  // Qwen2-MoE: a dense SwiGLU expert of this width that every token takes, scaled by
  // sigmoid(shared_expert_gate(x)). 0: none.
  int64_t shared_expert_intermediate_size = 0;
  bool shared_expert_gated = true;  // false: DeepSeek's shared experts join unweighted
  // DeepSeek-V3: sigmoid scores plus a learned bias choose n_group groups' best topk_group, then
  // the top num_experts_per_tok within them; weights scaled by routed_scaling_factor. Layers
  // before first_k_dense_replace have a dense MLP of intermediate_size.
  bool sigmoid_grouped_routing = false;
  int64_t n_group = 1, topk_group = 1, first_dense_layers = 0;
  double routed_scaling_factor = 1.0;

  // Multi-head latent attention (DeepSeek-V3): q through a low rank (q_lora_rank, 0 = a full
  // q_proj), keys and values from one latent of kv_lora_rank plus a shared rotary key of
  // qk_rope_head_dim. The cache holds the latent and the rotary key: one "head" of
  // kv_lora_rank + qk_rope_head_dim (head_dim) per token and layer, the values read from it.
  int64_t q_lora_rank = 0, kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  bool mla() const { return kv_lora_rank > 0; }

  std::vector<int32_t> sliding_window;  // per layer; 0 = full attention

  DType dtype = DType::kBF16;  // torch_dtype / dtype
  // quantization_config.quant_method of a pre-quantized checkpoint ("fp8", "compressed-tensors",
  // "awq", "gptq", ...), else empty. FP8 (fp8_checkpoint) and integer weight-only ones
  // (int_checkpoint()) load; load_model refuses the others naming quant_scheme; the planner sizes
  // them all.
  std::string quant_method;
  std::string quant_scheme;  // what was found, for that message ("int4 weights in groups", ...)
  // An FP8 checkpoint: quant_method "fp8" (E4M3), or "compressed-tensors" with 8-bit float
  // weights. Its Linear weights are F8_E4M3 with a scale per tensor, per row or per block of
  // fp8_block_rows x fp8_block_cols (weight_block_size / block_structure; 0: no blocks).
  bool fp8_checkpoint = false;
  int64_t fp8_block_rows = 0, fp8_block_cols = 0;
  // An integer weight-only checkpoint (docs/quantization.md): int_format "gptq" (qweight packed
  // along the inputs, qzeros, scales, g_idx), "awq" (AutoAWQ's GEMM layout: packed along the
  // outputs in its interleaved order), "pack-quantized" (compressed-tensors W4A16 / W8A16:
  // weight_packed, weight_scale, weight_zero_point) or "int-quantized" (compressed-tensors W8A8:
  // an I8 weight and its scale); empty: none. int_group_size 0: one scale per output row.
  std::string int_format;
  int int_bits = 0;
  int64_t int_group_size = 0;
  bool int_symmetric = true;
  bool int_gptq_v2 = false;  // GPTQ checkpoint_format "gptq_v2": zeros stored as they are
  bool int_checkpoint() const { return !int_format.empty(); }
  std::optional<int32_t> bos_token_id;
  std::vector<int32_t> eos_token_ids;
  std::optional<int32_t> pad_token_id;

  float attention_scale() const;
  // attention_scale() for one layer (GPT-2 may scale by 1 / (layer + 1) as well).
  float layer_attention_scale(int64_t layer) const;
  int64_t rotary_dim() const;
  // Stored per-layer sliding window, or 0.
  int32_t layer_window(int64_t layer) const { return sliding_window.at(layer); }
};

// Sampling defaults and stop tokens from generation_config.json (all optional).
struct GenerationConfig {
  std::vector<int32_t> eos_token_ids;
  std::optional<int32_t> bos_token_id;
  std::optional<double> temperature, top_p, min_p, repetition_penalty;
  std::optional<int64_t> top_k, max_new_tokens;
  std::optional<bool> do_sample;
};

// Parses DIR/config.json; throws tessera::Error naming the file and field on a problem.
ModelConfig load_model_config(const std::filesystem::path& model_dir);
ModelConfig parse_model_config(const nlohmann::json& json, const std::string& source);
// Parses DIR/generation_config.json when present, else returns an empty config.
GenerationConfig load_generation_config(const std::filesystem::path& model_dir);
// Sets the fields that `j` (generation_config.json's keys) names; the others stay. `source`
// names it in errors. For --override-generation-config.
void merge_generation_config(GenerationConfig& g, const nlohmann::json& j,
                             const std::string& source);

// Rotary inverse frequencies [rotary_dim / 2] with the config's scaling, and the attention
// scaling factor that multiplies cos and sin (1 except for yarn).
std::vector<float> rope_inv_freq(const ModelConfig& config, float* attention_scaling);

}  // namespace tessera
