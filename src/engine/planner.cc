#include "engine/planner.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "core/logging.h"
#include "core/status.h"
#include "distributed/world_config.h"

namespace tessera {

namespace fs = std::filesystem;
using nlohmann::json;

int64_t kv_block_bytes(const KvShape& s, int block_size, int64_t element_bytes) {
  return s.layers * s.heads * (s.k_dim + s.v_dim) * block_size * element_bytes;
}

int64_t kv_heads_per_rank(int64_t kv_heads, int tp) {
  return kv_heads_of_rank(kv_heads, tp, 0).size();
}

// ---------------------------------------------------------------------------------------------
// Built-in configurations: the fields of the public config.json files that sizes depend on.

namespace {

struct Builtin {
  const char* name;
  const char* hf_id;
  const char* config;
};

constexpr const char* kLlama31Scaling =
    R"("rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"},)";

const std::vector<Builtin>& builtins() {
  static const std::vector<Builtin> list = [] {
    auto llama = [](int hidden, int inter, int heads, int layers) {
      return fmt::format(
          R"({{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "attention_bias": false, "mlp_bias": false, "hidden_act": "silu",
              "hidden_size": {}, "intermediate_size": {}, "num_attention_heads": {},
              "num_hidden_layers": {}, "num_key_value_heads": 8,
              "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, {}
              "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
              "vocab_size": 128256, "bos_token_id": 128000, "eos_token_id": 128001}})",
          hidden, inter, heads, layers, kLlama31Scaling);
    };
    static const std::string l8 = llama(4096, 14336, 32, 32), l70 = llama(8192, 28672, 64, 80),
                             l405 = llama(16384, 53248, 128, 126);
    static const std::string deepseek = R"({
      "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
      "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
      "num_hidden_layers": 61, "first_k_dense_replace": 3, "moe_layer_freq": 1,
      "num_attention_heads": 128, "num_key_value_heads": 128, "n_routed_experts": 256,
      "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4,
      "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
      "qk_rope_head_dim": 64, "v_head_dim": 128, "num_nextn_predict_layers": 1,
      "max_position_embeddings": 163840, "rms_norm_eps": 1e-06, "rope_theta": 10000,
      "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                       "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
      "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                              "quant_method": "fp8", "weight_block_size": [128, 128]},
      "tie_word_embeddings": false, "torch_dtype": "bfloat16", "vocab_size": 129280})";
    return std::vector<Builtin>{
        {"Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct", l8.c_str()},
        {"Llama-3.1-70B", "meta-llama/Llama-3.1-70B-Instruct", l70.c_str()},
        {"Llama-3.1-405B", "meta-llama/Llama-3.1-405B-Instruct", l405.c_str()},
        {"Gemma-2-9B", "google/gemma-2-9b-it", R"({
          "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
          "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "head_dim": 256,
          "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 3584,
          "intermediate_size": 14336, "max_position_embeddings": 8192,
          "num_attention_heads": 16, "num_hidden_layers": 42, "num_key_value_heads": 8,
          "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
          "sliding_window": 4096, "torch_dtype": "float32", "vocab_size": 256000})"},
        {"Gemma-2-27B", "google/gemma-2-27b-it", R"({
          "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
          "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "head_dim": 128,
          "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 4608,
          "intermediate_size": 36864, "max_position_embeddings": 8192,
          "num_attention_heads": 32, "num_hidden_layers": 46, "num_key_value_heads": 16,
          "query_pre_attn_scalar": 144, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
          "sliding_window": 4096, "torch_dtype": "float32", "vocab_size": 256000})"},
        {"Mistral-7B", "mistralai/Mistral-7B-Instruct-v0.3", R"({
          "architectures": ["MistralForCausalLM"], "model_type": "mistral",
          "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
          "max_position_embeddings": 32768, "num_attention_heads": 32, "num_hidden_layers": 32,
          "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
          "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
          "vocab_size": 32768})"},
        {"Mixtral-8x7B", "mistralai/Mixtral-8x7B-Instruct-v0.1", R"({
          "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
          "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
          "max_position_embeddings": 32768, "num_attention_heads": 32,
          "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8,
          "num_local_experts": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
          "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
          "vocab_size": 32000})"},
        {"Qwen2.5-72B", "Qwen/Qwen2.5-72B-Instruct", R"({
          "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
          "hidden_size": 8192, "intermediate_size": 29568, "max_position_embeddings": 32768,
          "max_window_layers": 80, "num_attention_heads": 64, "num_hidden_layers": 80,
          "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
          "sliding_window": 131072, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
          "use_sliding_window": false, "vocab_size": 152064})"},
        {"Falcon-40B", "tiiuae/falcon-40b-instruct", R"({
          "architectures": ["FalconForCausalLM"], "model_type": "falcon", "alibi": false,
          "bias": false, "hidden_size": 8192, "n_head": 128, "n_head_kv": 8, "n_layer": 60,
          "new_decoder_architecture": true, "parallel_attn": true, "torch_dtype": "bfloat16",
          "vocab_size": 65024})"},
        {"DeepSeek-R1", "deepseek-ai/DeepSeek-R1", deepseek.c_str()},
        {"DeepSeek-V3", "deepseek-ai/DeepSeek-V3", deepseek.c_str()},
    };
  }();
  return list;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

const Builtin* find_builtin(const std::string& name) {
  const std::string n = lower(name);
  for (const Builtin& b : builtins())
    if (lower(b.name) == n || lower(b.hf_id) == n) return &b;
  return nullptr;
}

// Typed access to optional config.json fields with errors naming the field.
struct Reader {
  const json& j;
  const std::string& source;
  bool has(const char* key) const { return j.contains(key) && !j[key].is_null(); }
  int64_t integer(std::initializer_list<const char*> keys, std::optional<int64_t> fallback) const {
    for (const char* k : keys) {
      if (!has(k)) continue;
      if (!j[k].is_number_integer() || j[k].get<int64_t>() < 0)
        fail("{}: \"{}\" must be a non-negative integer", source, k);
      return j[k].get<int64_t>();
    }
    if (!fallback) fail("{}: missing \"{}\"", source, *keys.begin());
    return *fallback;
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j[key].is_boolean()) fail("{}: \"{}\" must be true or false", source, key);
    return j[key].get<bool>();
  }
};

std::string stored_dtype_of(const json& j) {
  if (j.contains("quantization_config") && j["quantization_config"].is_object()) {
    const json& q = j["quantization_config"];
    const std::string method = q.value("quant_method", "");
    const int bits = q.contains("bits") && q["bits"].is_number_integer() ? q["bits"].get<int>() : 0;
    if (method == "fp8" || method == "fbgemm_fp8") return "fp8";
    if (method == "compressed-tensors" && q.contains("config_groups") &&
        q["config_groups"].is_object()) {
      // The first group's weights say it (FP8, W8A8 int8, W4A16).
      for (const auto& [name, g] : q["config_groups"].items()) {
        const json w = g.is_object() ? g.value("weights", json()) : json();
        if (!w.is_object()) continue;
        const int n = w.value("num_bits", 16);
        if (n == 8) return w.value("type", std::string()) == "float" ? "fp8" : "int8";
        if (n == 4) return "int4";
        break;
      }
    }
    if (bits == 4 || method == "awq") return "int4";
    if (bits == 8) return "int8";
  }
  const std::string t = j.value("torch_dtype", j.value("dtype", std::string("bfloat16")));
  if (t == "float16") return "f16";
  if (t == "float32") return "f32";
  return "bf16";
}

// The engine's own reading of config.json, for the architectures it runs: the planner then
// agrees with the loaded model to the byte.
ModelShape shape_from_config(const ModelConfig& c) {
  ModelShape m;
  m.architecture = c.architecture;
  m.vocab_size = c.vocab_size;
  m.hidden_size = c.hidden_size;
  m.intermediate_size = c.intermediate_size;
  m.num_layers = c.num_layers;
  m.num_heads = c.num_heads;
  m.num_kv_heads = c.num_kv_heads;
  m.head_dim = c.head_dim;
  m.rotary_dim = c.rotary_dim();
  m.max_position_embeddings = c.max_position_embeddings;
  m.tie_word_embeddings = c.tie_word_embeddings;
  m.qkv_bias = c.attention_bias;
  m.o_bias = c.o_proj_bias;
  m.mlp_bias = c.mlp_bias;
  m.qk_norm = c.qk_norm;
  m.norms_per_layer = c.sandwich_norms ? 4 : 2;
  if (c.arch == Arch::kGpt2 || c.arch == Arch::kOpt) {
    m.gated_mlp = false;
    m.norm_bias = true;
    m.learned_positions = c.max_position_embeddings + c.position_offset;
    m.final_norm = !c.post_norm;
    m.embedding_dim = c.word_embed_proj_dim;
  }
  if (c.num_experts > 0) {
    m.num_experts = c.num_experts;
    m.experts_per_token = c.num_experts_per_tok;
    m.moe_intermediate_size = c.moe_intermediate_size;
    m.first_dense_layers = c.first_dense_layers;
    m.router_bias = c.sigmoid_grouped_routing;
    if (c.shared_expert_gated) {
      m.shared_expert_width = c.shared_expert_intermediate_size;
    } else {  // DeepSeek: n_shared_experts of the experts' width
      m.shared_experts =
          c.shared_expert_intermediate_size / std::max<int64_t>(1, c.moe_intermediate_size);
    }
  }
  if (c.mla()) {
    m.q_lora_rank = c.q_lora_rank;
    m.kv_lora_rank = c.kv_lora_rank;
    m.qk_nope_head_dim = c.qk_nope_head_dim;
    m.qk_rope_head_dim = c.qk_rope_head_dim;
    m.v_head_dim = c.v_head_dim;
    m.head_dim = c.qk_nope_head_dim + c.qk_rope_head_dim;
    m.rotary_dim = c.qk_rope_head_dim;
    m.num_kv_heads = c.num_heads;
  }
  if (c.arch == Arch::kFalcon) {
    m.gated_mlp = false;
    m.fused_qkv = true;
    m.norm_bias = true;
    m.norms_per_layer = c.parallel_attn && !c.separate_mlp_norm ? 1 : 2;
  }
  return m;
}

bool engine_runs(const json& j) {
  if (!j.contains("architectures") || !j["architectures"].is_array() ||
      j["architectures"].empty() || !j["architectures"][0].is_string())
    return false;
  const std::string a = j["architectures"][0].get<std::string>();
  return supported_architectures().find(a) != std::string::npos;
}

}  // namespace

std::vector<std::string> builtin_model_names() {
  std::vector<std::string> names;
  for (const Builtin& b : builtins()) names.push_back(b.name);
  return names;
}

std::optional<std::string> builtin_model_config(const std::string& name) {
  const Builtin* b = find_builtin(name);
  if (!b) return std::nullopt;
  return std::string(b->config);
}

ModelShape parse_model_shape(const json& j, const std::string& source) {
  if (!j.is_object()) fail("{}: expected a JSON object", source);
  ModelShape m;
  if (engine_runs(j)) {
    m = shape_from_config(parse_model_config(j, source));
  } else {
    Reader r{j, source};
    m.architecture =
        j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty()
            ? j["architectures"][0].get<std::string>()
            : j.value("model_type", std::string("unknown"));
    const std::string type = j.value("model_type", std::string());
    const bool falcon = type == "falcon" || type == "RefinedWeb" || type == "RefinedWebModel";
    m.vocab_size = r.integer({"vocab_size"}, std::nullopt);
    m.hidden_size = r.integer({"hidden_size", "n_embd", "d_model"}, std::nullopt);
    m.num_layers = r.integer({"num_hidden_layers", "n_layer", "num_layers"}, std::nullopt);
    m.num_heads = r.integer({"num_attention_heads", "n_head"}, std::nullopt);
    if (m.vocab_size <= 0 || m.hidden_size <= 0 || m.num_layers <= 0 || m.num_heads <= 0)
      fail("{}: vocab_size, hidden_size, layers and heads must be positive", source);
    const bool multi_query = r.boolean("multi_query", false);
    const bool new_arch = r.boolean("new_decoder_architecture", false);
    m.num_kv_heads = r.integer({"num_key_value_heads", "n_head_kv", "num_kv_heads"},
                               falcon && !new_arch && multi_query ? 1 : m.num_heads);
    if (m.num_kv_heads <= 0 || m.num_heads % m.num_kv_heads != 0)
      fail("{}: the {} attention heads are not a multiple of the {} key/value heads", source,
           m.num_heads, m.num_kv_heads);
    m.head_dim = r.integer({"head_dim"}, m.hidden_size / m.num_heads);
    m.rotary_dim = m.head_dim;
    m.intermediate_size =
        r.integer({"intermediate_size", "ffn_hidden_size", "n_inner"}, 4 * m.hidden_size);
    m.max_position_embeddings =
        r.integer({"max_position_embeddings", "max_sequence_length", "n_positions"}, 2048);
    m.tie_word_embeddings = r.boolean("tie_word_embeddings", falcon);
    if (falcon) {
      m.gated_mlp = false;
      m.fused_qkv = true;
      m.norm_bias = true;
      m.norms_per_layer = new_arch ? 2 : 1;
      m.qkv_bias = m.o_bias = m.mlp_bias = r.boolean("bias", false);
    } else {
      m.qkv_bias = r.boolean("attention_bias", false);
      m.mlp_bias = r.boolean("mlp_bias", false);
    }
    m.num_experts = r.integer({"num_local_experts", "n_routed_experts", "num_experts"}, 0);
    if (m.num_experts > 0) {
      m.experts_per_token = r.integer({"num_experts_per_tok"}, 2);
      m.moe_intermediate_size = r.integer({"moe_intermediate_size"}, m.intermediate_size);
      m.shared_experts = r.integer({"n_shared_experts"}, 0);
      m.first_dense_layers = std::min(r.integer({"first_k_dense_replace"}, 0), m.num_layers);
      m.router_bias = type == "deepseek_v3";
    }
    m.kv_lora_rank = r.integer({"kv_lora_rank"}, 0);
    if (m.kv_lora_rank > 0) {
      m.q_lora_rank = r.integer({"q_lora_rank"}, 0);
      m.qk_nope_head_dim = r.integer({"qk_nope_head_dim"}, std::nullopt);
      m.qk_rope_head_dim = r.integer({"qk_rope_head_dim"}, std::nullopt);
      m.v_head_dim = r.integer({"v_head_dim"}, std::nullopt);
      m.head_dim = m.qk_nope_head_dim + m.qk_rope_head_dim;
      m.rotary_dim = m.qk_rope_head_dim;
    }
  }
  m.stored_dtype = stored_dtype_of(j);
  return m;
}

ModelShape load_model_shape(const std::string& model) {
  json j;
  std::string source;
  ModelShape m;
  const fs::path p(model);
  if (fs::is_directory(p) || (fs::is_regular_file(p) && p.extension() == ".json")) {
    const fs::path file = fs::is_directory(p) ? p / "config.json" : p;
    std::ifstream in(file);
    if (!in) fail(ErrorKind::kNotFound, "cannot read {}", file.string());
    source = file.string();
    try {
      j = json::parse(in);
    } catch (const json::exception& e) {
      fail("{}: invalid JSON: {}", source, e.what());
    }
  } else if (const Builtin* b = find_builtin(model)) {
    source = std::string("built-in config of ") + b->name;
    j = json::parse(b->config);
    m.hf_id = b->hf_id;
  } else {
    std::string names;
    for (const std::string& n : builtin_model_names()) names += (names.empty() ? "" : ", ") + n;
    fail(ErrorKind::kNotFound,
         "\"{}\" is neither a model folder, a config.json nor a known model (known: {})", model,
         names);
  }
  const std::string hf = m.hf_id;
  m = parse_model_shape(j, source);
  m.hf_id = hf;
  m.name = model;
  if (const Builtin* b = find_builtin(model)) m.name = b->name;
  return m;
}

// ---------------------------------------------------------------------------------------------
// Parameters.

WeightFormat parse_weight_format(const std::string& name) {
  const std::string n = lower(name);
  if (n == "bf16" || n == "bfloat16") return WeightFormat::kBF16;
  if (n == "f16" || n == "fp16" || n == "float16" || n == "half") return WeightFormat::kF16;
  if (n == "f32" || n == "fp32" || n == "float32" || n == "float") return WeightFormat::kF32;
  if (n == "fp8" || n == "float8") return WeightFormat::kFP8;
  if (n == "int8" || n == "w8a8") return WeightFormat::kInt8;
  if (n == "int4" || n == "w4a16") return WeightFormat::kInt4;
  fail("--dtype must be one of bf16, f16, f32, fp8, int8, int4; got \"{}\"", name);
}

std::string weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::kBF16:
      return "bf16";
    case WeightFormat::kF16:
      return "f16";
    case WeightFormat::kF32:
      return "f32";
    case WeightFormat::kFP8:
      return "fp8";
    case WeightFormat::kInt8:
      return "int8";
    case WeightFormat::kInt4:
      return "int4";
  }
  return "bf16";
}

double linear_bytes_per_param(WeightFormat f) {
  switch (f) {
    case WeightFormat::kF32:
      return 4;
    case WeightFormat::kFP8:
    case WeightFormat::kInt8:
      // Per-channel or 128x128-block scales add < 0.1% (the CPU backend keeps a block's scale for
      // every row of it: 4 bytes per 128 weights, 3%, for block-scaled checkpoints).
      return 1;
    case WeightFormat::kInt4:
      return 0.5 + 2.0 / 128;  // 4-bit values plus an f16 scale per group of 128
    default:
      return 2;
  }
}

int64_t ParamCount::bytes(WeightFormat f) const {
  const double other_bytes = f == WeightFormat::kF32 ? 4 : 2;
  return static_cast<int64_t>(std::llround(static_cast<double>(linear) * linear_bytes_per_param(f) +
                                           static_cast<double>(other) * other_bytes));
}

namespace {

// Largest share of `n` split over `parts` (rank 0's, as split_evenly gives it).
int64_t share(int64_t n, int parts) {
  return split_evenly(n, parts, 0).size();
}

// One decoder layer on one of `tp` ranks.
ParamCount layer_parameters(const ModelShape& m, int64_t layer, int tp) {
  ParamCount p;
  const int64_t h = m.hidden_size;
  const int64_t heads = m.num_heads / tp;
  p.other += m.norms_per_layer * h * (m.norm_bias ? 2 : 1);
  if (m.mla()) {
    const int64_t qk = m.qk_nope_head_dim + m.qk_rope_head_dim;
    if (m.q_lora_rank > 0) {
      p.linear += h * m.q_lora_rank + m.q_lora_rank * heads * qk;  // q_a (replicated), q_b
      p.other += m.q_lora_rank;                                    // q_a_layernorm
    } else {
      p.linear += h * heads * qk;
    }
    p.linear += h * (m.kv_lora_rank + m.qk_rope_head_dim);  // kv_a_proj_with_mqa (replicated)
    p.other += m.kv_lora_rank;                              // kv_a_layernorm
    p.linear += m.kv_lora_rank * heads * (m.qk_nope_head_dim + m.v_head_dim);  // kv_b
    p.linear += heads * m.v_head_dim * h;                                      // o_proj
  } else {
    const int64_t d = m.head_dim, kv = kv_heads_per_rank(m.num_kv_heads, tp);
    p.linear += (heads + 2 * kv) * d * h + h * heads * d;
    if (m.qkv_bias) p.other += (heads + 2 * kv) * d;
    if (m.o_bias) p.other += h;
    if (m.qk_norm) p.other += 2 * d;
  }
  const int mats = m.gated_mlp ? 3 : 2;
  if (m.moe() && layer >= m.first_dense_layers) {
    const int64_t f = share(m.moe_intermediate_size, tp);
    p.linear += (m.num_experts + m.shared_experts) * mats * h * f;
    p.other += m.num_experts * h;  // router
    if (m.router_bias) p.other += m.num_experts;
    if (m.shared_expert_width > 0) {  // Qwen2-MoE: a SwiGLU of its own width, and its gate
      p.linear += mats * h * share(m.shared_expert_width, tp);
      p.other += h;
    }
  } else {
    const int64_t f = share(m.intermediate_size, tp);
    p.linear += mats * h * f;
    if (m.mlp_bias) p.other += (mats - 1) * f + h;
  }
  return p;
}

}  // namespace

ParamCount rank_parameters(const ModelShape& m, int tp, int pp, int pp_rank) {
  ParamCount p;
  const Range layers = split_evenly(m.num_layers, pp, pp_rank);
  for (int64_t l = layers.begin; l < layers.end; ++l) {
    ParamCount lp = layer_parameters(m, l, tp);
    p.linear += lp.linear;
    p.other += lp.other;
  }
  const int64_t vocab_rows = share(m.vocab_size, tp);
  // OPT-350m: narrower token embeddings and head, and a projection on each side (replicated).
  const int64_t e = m.embedding_dim > 0 ? m.embedding_dim : m.hidden_size;
  const int64_t projection = m.embedding_dim > 0 ? m.embedding_dim * m.hidden_size : 0;
  if (pp_rank == 0)  // embeddings
    p.other += vocab_rows * e + m.learned_positions * m.hidden_size + projection;
  if (pp_rank == pp - 1) {
    if (m.final_norm) p.other += m.hidden_size * (m.norm_bias ? 2 : 1);
    // The LM head; tied to the embedding it costs nothing more unless it sits on another stage.
    if (!m.tie_word_embeddings || pp > 1) p.other += vocab_rows * e;
    p.other += projection;
  }
  return p;
}

ParamCount count_parameters(const ModelShape& m) {
  ParamCount p = rank_parameters(m, 1, 1, 0);
  return p;
}

KvShape rank_kv_shape(const ModelShape& m, int tp, int pp, int pp_rank) {
  KvShape s;
  s.layers = split_evenly(m.num_layers, pp, pp_rank).size();
  if (m.mla()) {
    // One latent + rotary key per token, stored twice: as a key and as a value, because the
    // backends lay the two out differently within a block (model/layers/mla.h). vLLM's MLA
    // kernels read one copy.
    s.heads = 1;
    s.k_dim = s.v_dim = m.kv_lora_rank + m.qk_rope_head_dim;
  } else {
    s.heads = kv_heads_per_rank(m.num_kv_heads, tp);
    s.k_dim = s.v_dim = m.head_dim;
  }
  return s;
}

int64_t rank_activation_bytes(const ModelShape& m, int tp, int64_t t) {
  const int64_t heads = m.num_heads / tp, d = m.head_dim;
  // qkv and attn; with MLA (model/layers/mla.h) the q low rank, q, [k_rope | latent], absorbed
  // queries, latent outputs and per-head values.
  int64_t attention = 0;
  if (m.mla()) {
    const int64_t latent = m.kv_lora_rank + m.qk_rope_head_dim;
    attention = m.q_lora_rank + heads * (m.qk_nope_head_dim + m.qk_rope_head_dim) + latent +
                2 * heads * latent + heads * m.v_head_dim;
  } else {
    const int64_t kv = kv_heads_per_rank(m.num_kv_heads, tp);
    attention = (heads + 2 * kv) * d + heads * d;
  }
  // A dense MLP's gate_up and act (3 x its share of the intermediate size) where the model has
  // dense layers; the experts' buffers where it has sparse ones (SparseMoe: router logits,
  // gathered rows, gate_up, act and output of one expert at a time; shared experts as a dense
  // MLP of their combined width).
  const int64_t ffn = m.intermediate_size / tp + 1;
  int64_t mlp = 0;
  if (!m.moe() || m.first_dense_layers > 0) mlp += 3 * ffn;
  if (m.moe()) {
    // The shared experts reuse the experts' buffers: Qwen2-MoE's gated one, DeepSeek's
    // n_shared_experts as one of their combined width.
    const int64_t shared = m.shared_expert_width > 0 ? m.shared_expert_width
                                                     : m.shared_experts * m.moe_intermediate_size;
    // And each token's expert rows and routing weights.
    const int64_t picks = m.experts_per_token + (shared > 0);
    mlp += m.num_experts + 2 * m.hidden_size +
           3 * std::max(m.moe_intermediate_size / tp + 1, shared / tp + 1) +
           (m.shared_expert_width > 0) + 2 * picks;
  }
  // residual, normed, proj, qkv, attn, gate_up, act, rope table; plus one row of logits. GPT-2
  // (learned positions) has a position-embedding row instead of the rope table and one MLP
  // buffer; Falcon (rotary, ungated) one MLP buffer and two more rows of hidden (the MLP's own
  // norm and output, which run beside attention).
  const bool gpt2 = m.learned_positions > 0;
  const int64_t hidden_rows = gpt2 ? 4 : m.gated_mlp ? 3 : 5;
  const int64_t floats = t * (hidden_rows * m.hidden_size + attention + (m.gated_mlp ? mlp : ffn) +
                              (gpt2 ? 0 : m.rotary_dim) + m.embedding_dim) +
                         m.vocab_size;
  return floats * 4;
}

std::string tp_problem(const ModelShape& m, int tp) {
  // MLA's latent is one head that every rank holds whole.
  return tp_head_split_problem(m.num_heads, m.mla() ? 1 : m.num_kv_heads, tp);
}

// ---------------------------------------------------------------------------------------------
// Layouts.

namespace {

std::string gib(int64_t bytes) {
  return fmt::format("{:.2f} GiB", bytes / 1073741824.0);
}

struct Resolved {
  WeightFormat dtype;
  int64_t kv_bytes;
  int64_t max_len;
};

Resolved resolve(const ModelShape& m, const PlanRequest& r) {
  Resolved x;
  if (r.dtype) {
    x.dtype = *r.dtype;
  } else {
    x.dtype = parse_weight_format(m.stored_dtype);
    // As vLLM's dtype=auto on a GPU: float32 checkpoints run in 16 bits.
    if (x.dtype == WeightFormat::kF32) x.dtype = WeightFormat::kBF16;
  }
  x.kv_bytes =
      r.kv_element_bytes > 0 ? r.kv_element_bytes : (x.dtype == WeightFormat::kF32 ? 4 : 2);
  x.max_len = r.max_model_len > 0 ? r.max_model_len : m.max_position_embeddings;
  return x;
}

}  // namespace

LayoutEval evaluate_layout(const ModelShape& m, const PlanRequest& r, int tp, int pp) {
  const Resolved x = resolve(m, r);
  LayoutEval e;
  e.tp = tp;
  e.pp = pp;
  const std::string problem = tp_problem(m, tp);
  if (!problem.empty()) {
    e.valid = false;
    e.reason = "tensor-parallel size " + problem;
    return e;
  }
  if (pp > m.num_layers) {
    e.valid = false;
    e.reason = fmt::format("{} pipeline stages exceed the {} layers", pp, m.num_layers);
    return e;
  }
  EngineArgs args;
  args.max_num_seqs = r.max_num_seqs;
  args.max_num_batched_tokens = r.max_num_batched_tokens;
  args.block_size = r.block_size;
  args.gpu_memory_utilization = r.gpu_memory_utilization;
  args.kv_cache_memory = r.kv_cache_memory;
  e.activation_bytes_rank = rank_activation_bytes(m, tp, r.max_num_batched_tokens);
  int64_t blocks = -1;
  for (int s = 0; s < pp; ++s) {
    const int64_t w = rank_parameters(m, tp, pp, s).bytes(x.dtype);
    const KvShape kv = rank_kv_shape(m, tp, pp, s);
    const int64_t block = kv_block_bytes(kv, r.block_size, x.kv_bytes);
    e.weight_bytes_rank = std::max(e.weight_bytes_rank, w);
    e.kv_bytes_per_token_rank = std::max(e.kv_bytes_per_token_rank, block / r.block_size);
    // A fixed --kv-cache-memory must still fit next to the weights.
    const int64_t share = static_cast<int64_t>(
        std::floor(r.gpu_memory_utilization * static_cast<double>(r.device_memory)));
    if (r.kv_cache_memory && share - w - e.activation_bytes_rank < *r.kv_cache_memory) {
      e.reason = fmt::format(
          "{} of weights{} per rank and {} of --kv-cache-memory exceed the {} "
          "x {} budget",
          gib(w), pp > 1 ? fmt::format(" (stage {})", s) : "", gib(*r.kv_cache_memory),
          r.gpu_memory_utilization, gib(r.device_memory));
      return e;
    }
    KvCachePlan kp;
    try {
      kp = plan_kv_cache(args, r.device_memory, w, e.activation_bytes_rank, block, x.max_len);
    } catch (const Error&) {
      const int64_t left = static_cast<int64_t>(std::floor(r.gpu_memory_utilization *
                                                           static_cast<double>(r.device_memory))) -
                           w - e.activation_bytes_rank;
      e.reason =
          fmt::format("{} of weights{} per rank leave {} of the {} x {} budget for the KV cache",
                      gib(w), pp > 1 ? fmt::format(" (stage {})", s) : "", gib(left),
                      r.gpu_memory_utilization, gib(r.device_memory));
      e.budget_bytes_rank = left;
      return e;
    }
    if (blocks < 0 || kp.num_blocks < blocks) {
      blocks = kp.num_blocks;
      e.budget_bytes_rank = kp.budget_bytes;
      e.rule = kp.rule;
    }
  }
  e.num_blocks = blocks;
  e.kv_tokens = blocks * r.block_size;
  e.max_concurrency = static_cast<double>(e.kv_tokens) / static_cast<double>(x.max_len);
  e.fits = e.kv_tokens >= x.max_len;
  e.reason = fmt::format(
      "{} of weights and {} of KV cache per rank: {} tokens, {} {} {}-token "
      "sequence{}",
      gib(e.weight_bytes_rank), gib(e.budget_bytes_rank), e.kv_tokens,
      e.fits ? "at least one" : "less than one", "full", x.max_len,
      e.fits ? fmt::format(" ({:.2f}x concurrency)", e.max_concurrency) : "");
  return e;
}

namespace {

std::vector<int> divisors_above_one(int n) {
  std::vector<int> d;
  for (int i = 2; i <= n; ++i)
    if (n % i == 0) d.push_back(i);
  return d;
}

std::string serve_command(const Plan& p) {
  const ModelShape& m = p.model;
  const PlanRequest& r = p.request;
  // A folder as given; a config.json file: its folder; a built-in name: where the manifests
  // mount models.
  const fs::path as_path(m.name);
  fs::path model = fs::path("/models") / m.name;
  if (fs::is_directory(as_path)) model = as_path;
  if (fs::is_regular_file(as_path)) model = fs::absolute(as_path).parent_path();
  std::string cmd = "tessera serve " + model.string();
  if (!m.hf_id.empty()) cmd += " --served-model-name " + m.hf_id;
  if (p.chosen.tp > 1) cmd += fmt::format(" --tensor-parallel-size {}", p.chosen.tp);
  if (p.chosen.pp > 1) cmd += fmt::format(" --pipeline-parallel-size {}", p.chosen.pp);
  if (p.chosen.tp * p.chosen.pp > r.devices_per_node) cmd += " --distributed-executor-backend mpi";
  cmd += fmt::format(" --max-model-len {}", p.max_model_len);
  cmd += fmt::format(" --gpu-memory-utilization {}", r.gpu_memory_utilization);
  cmd += fmt::format(" --max-num-seqs {}", r.max_num_seqs);
  if (r.max_num_batched_tokens != 2048)
    cmd += fmt::format(" --max-num-batched-tokens {}", r.max_num_batched_tokens);
  if (r.block_size != 16) cmd += fmt::format(" --block-size {}", r.block_size);
  switch (p.dtype) {
    case WeightFormat::kBF16:
      cmd += " --dtype bfloat16";
      break;
    case WeightFormat::kF16:
      cmd += " --dtype float16";
      break;
    case WeightFormat::kF32:
      cmd += " --dtype float32";
      break;
    case WeightFormat::kFP8:
      if (m.stored_dtype != "fp8") cmd += " --quantization fp8";
      break;
    default:
      break;  // int8/int4 checkpoints carry their quantization_config
  }
  if (r.kv_cache_dtype != "auto") cmd += " --kv-cache-dtype " + r.kv_cache_dtype;
  if (r.kv_cache_memory) cmd += fmt::format(" --kv-cache-memory {}", *r.kv_cache_memory);
  return cmd;
}

}  // namespace

Plan make_plan(const ModelShape& m, const PlanRequest& r) {
  if (r.device_memory <= 0) fail("--device-memory must be positive");
  if (r.devices_per_node < 1) fail("--devices-per-node must be at least 1");
  if (r.max_nodes < 0) fail("--nodes must be positive");
  if (!(r.gpu_memory_utilization > 0 && r.gpu_memory_utilization <= 1))
    fail("--gpu-memory-utilization must be in (0, 1], got {}", r.gpu_memory_utilization);
  if (r.max_model_len < 0) fail("--max-model-len must be positive");
  if (r.max_num_seqs < 1) fail("--max-num-seqs must be at least 1");
  const Resolved x = resolve(m, r);
  Plan p;
  p.model = m;
  p.request = r;
  p.dtype = x.dtype;
  p.kv_element_bytes = x.kv_bytes;
  p.max_model_len = x.max_len;
  p.params = count_parameters(m);
  p.weight_bytes = p.params.bytes(x.dtype);
  p.kv_bytes_per_token = kv_block_bytes(rank_kv_shape(m, 1, 1, 0), 1, x.kv_bytes);

  auto consider = [&](int tp, int pp, const std::string& why) {
    LayoutEval e = evaluate_layout(m, r, tp, pp);
    if (e.valid && e.fits) {
      p.chosen = e;
      p.found = true;
      p.why = why + ": " + e.reason;
      return true;
    }
    p.rejected.push_back(e);
    return false;
  };
  const int dpn = r.devices_per_node;
  bool done = consider(1, 1, "one device holds the weights and a full-length sequence");
  // Within one node: the smallest tensor-parallel size; pipeline stages over the same devices
  // when that size cannot split the heads.
  for (int n : divisors_above_one(dpn)) {
    if (done) break;
    if (tp_problem(m, n).empty()) {
      done = consider(n, 1,
                      fmt::format("one device is too small; tensor parallel over {} "
                                  "devices of one node is the smallest that fits",
                                  n));
    } else {
      p.rejected.push_back(evaluate_layout(m, r, n, 1));
      done = consider(1, n,
                      fmt::format("tensor-parallel size {}, so {} pipeline stages on one "
                                  "node instead",
                                  tp_problem(m, n), n));
    }
  }
  // Across nodes: tp = devices per node, pp = nodes.
  const int limit = r.max_nodes > 0 ? r.max_nodes : 64;
  int tp = dpn;
  while (tp > 1 && !tp_problem(m, tp).empty()) --tp;
  while (tp > 1 && dpn % tp != 0) --tp;
  for (int nodes = 2; !done && nodes <= limit; ++nodes) {
    const int pp = nodes * dpn / tp;
    if (pp > m.num_layers) break;
    done = consider(tp, pp,
                    fmt::format("one node is too small; tensor parallel within each node ({}) "
                                "and one pipeline stage per {}",
                                tp, tp == dpn ? "node" : "group of devices"));
    if (done && tp == dpn) p.why = fmt::format("{} nodes needed: {}", nodes, p.why);
  }
  if (!p.found) {
    p.why = fmt::format(
        "no layout on up to {} node(s) of {} x {} holds the weights and one "
        "{}-token sequence",
        limit, dpn, gib(r.device_memory), x.max_len);
    return p;
  }
  p.serve_command = serve_command(p);
  const int world = p.chosen.tp * p.chosen.pp;
  if (world > dpn) {
    const int nodes = (world + dpn - 1) / dpn;
    p.launch_note = fmt::format(
        "mpirun -np {} --map-by ppr:{}:node --hostfile HOSTS {} (or the LeaderWorkerSet in "
        "deploy/kubernetes/overlays/multi-node, or deploy/slurm/multi-node.sbatch with {} nodes)",
        world, dpn, p.serve_command, nodes);
  }
  return p;
}

std::string format_plan(const Plan& p) {
  const ModelShape& m = p.model;
  const PlanRequest& r = p.request;
  std::string o;
  o += fmt::format("model: {} ({}{})\n", m.name, m.architecture,
                   m.hf_id.empty() ? "" : ", " + m.hf_id);
  o += fmt::format(
      "  {} layers, hidden {}, {} attention heads, {}{}\n", m.num_layers, m.hidden_size,
      m.num_heads,
      m.mla() ? fmt::format("MLA (latent {} + rope {})", m.kv_lora_rank, m.qk_rope_head_dim)
              : fmt::format("{} KV heads of {} (GQA {}:1)", m.num_kv_heads, m.head_dim,
                            m.num_heads / m.num_kv_heads),
      m.moe() ? fmt::format(", {} experts ({} active{})", m.num_experts, m.experts_per_token,
                            m.shared_experts ? fmt::format(", {} shared", m.shared_experts) : "")
              : "");
  o += fmt::format("parameters: {:.2f} B ({})\n", p.params.total() / 1e9, p.params.total());
  o += fmt::format("weights ({}): {:.1f} GB ({}) total", weight_format_name(p.dtype),
                   p.weight_bytes / 1e9, gib(p.weight_bytes));
  // Per-rank figures of the recommendation, or of the largest layout tried when none fits.
  const LayoutEval& shown = p.found || p.rejected.empty() ? p.chosen : p.rejected.back();
  o += fmt::format(", {:.1f} GB ({}) per rank{}\n", shown.weight_bytes_rank / 1e9,
                   gib(shown.weight_bytes_rank),
                   p.found ? "" : fmt::format(" at tp={} pp={}", shown.tp, shown.pp));
  o += fmt::format(
      "KV cache per token ({} bytes per element{}): {:.2f} KiB total, {:.2f} KiB per "
      "rank; {} for one {}-token sequence\n",
      p.kv_element_bytes, m.mla() ? ", MLA latent replicated over TP ranks" : "",
      p.kv_bytes_per_token / 1024.0, shown.kv_bytes_per_token_rank / 1024.0,
      gib(p.kv_bytes_per_token * p.max_model_len), p.max_model_len);
  o += fmt::format(
      "activations: {} per rank for {} batched tokens; runtime overhead: {} per "
      "device outside --gpu-memory-utilization {} (CUDA context, NCCL, graphs)\n",
      gib(shown.activation_bytes_rank), r.max_num_batched_tokens,
      gib(r.device_memory - static_cast<int64_t>(std::floor(r.gpu_memory_utilization *
                                                            static_cast<double>(r.device_memory)))),
      r.gpu_memory_utilization);
  if (!p.found) {
    o += "no layout fits: " + p.why + "\n";
  } else {
    o += fmt::format("KV cache per replica: {} blocks of {} tokens = {} tokens ({} per rank)\n",
                     p.chosen.num_blocks, r.block_size, p.chosen.kv_tokens,
                     gib(p.chosen.budget_bytes_rank));
    o += fmt::format("maximum concurrency at {} tokens: {:.2f}x\n", p.max_model_len,
                     p.chosen.max_concurrency);
    o += fmt::format("recommended: tensor-parallel {} x pipeline-parallel {} ({} device{})\n",
                     p.chosen.tp, p.chosen.pp, p.chosen.tp * p.chosen.pp,
                     p.chosen.tp * p.chosen.pp > 1 ? "s" : "");
    o += "  why: " + p.why + "\n";
  }
  if (!p.rejected.empty()) {
    o += "rejected:\n";
    for (const LayoutEval& e : p.rejected)
      o += fmt::format("  tp={} pp={}: {}\n", e.tp, e.pp, e.reason);
  }
  if (p.found) {
    o += "command:\n  " + p.serve_command + "\n";
    if (!p.launch_note.empty()) o += "multi-node launch:\n  " + p.launch_note + "\n";
  }
  return o;
}

namespace {
json layout_json(const LayoutEval& e) {
  return json{{"tensor_parallel_size", e.tp},
              {"pipeline_parallel_size", e.pp},
              {"valid", e.valid},
              {"fits", e.fits},
              {"reason", e.reason},
              {"weight_bytes_per_rank", e.weight_bytes_rank},
              {"kv_bytes_per_token_per_rank", e.kv_bytes_per_token_rank},
              {"activation_bytes_per_rank", e.activation_bytes_rank},
              {"kv_budget_bytes_per_rank", e.budget_bytes_rank},
              {"num_blocks", e.num_blocks},
              {"kv_tokens", e.kv_tokens},
              {"max_concurrency", e.max_concurrency}};
}
}  // namespace

json plan_to_json(const Plan& p) {
  json rejected = json::array();
  for (const LayoutEval& e : p.rejected) rejected.push_back(layout_json(e));
  const PlanRequest& r = p.request;
  return json{
      {"model", p.model.name},
      {"architecture", p.model.architecture},
      {"parameters", p.params.total()},
      {"dtype", weight_format_name(p.dtype)},
      {"weight_bytes", p.weight_bytes},
      {"kv_cache_element_bytes", p.kv_element_bytes},
      {"kv_bytes_per_token", p.kv_bytes_per_token},
      {"mla", p.model.mla()},
      {"max_model_len", p.max_model_len},
      {"device_memory", r.device_memory},
      {"devices_per_node", r.devices_per_node},
      {"gpu_memory_utilization", r.gpu_memory_utilization},
      {"runtime_overhead_bytes_per_device",
       r.device_memory - static_cast<int64_t>(std::floor(r.gpu_memory_utilization *
                                                         static_cast<double>(r.device_memory)))},
      {"block_size", r.block_size},
      {"found", p.found},
      {"why", p.why},
      {"recommended", p.found ? layout_json(p.chosen) : json(nullptr)},
      {"rejected", rejected},
      {"serve_command", p.serve_command},
      {"launch", p.launch_note},
  };
}

}  // namespace tessera
