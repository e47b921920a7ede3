#include "config/model_config.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/status.h"

namespace tessera {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct ArchInfo {
  const char* name;
  Arch arch;
};
constexpr ArchInfo kArchitectures[] = {
    {"LlamaForCausalLM", Arch::kLlama},
    {"MistralForCausalLM", Arch::kMistral},
    {"Qwen2ForCausalLM", Arch::kQwen2},
    {"Qwen3ForCausalLM", Arch::kQwen3},
    {"Gemma2ForCausalLM", Arch::kGemma2},
    {"GPT2LMHeadModel", Arch::kGpt2},
    {"OPTForCausalLM", Arch::kOpt},
    {"MixtralForCausalLM", Arch::kMixtral},
    {"Qwen3MoeForCausalLM", Arch::kQwen3Moe},
    {"Qwen2MoeForCausalLM", Arch::kQwen2Moe},
    {"DeepseekV3ForCausalLM", Arch::kDeepseekV3},
    {"FalconForCausalLM", Arch::kFalcon},
    {"RWForCausalLM", Arch::kFalcon},
};

json read_json_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(ErrorKind::kNotFound, "cannot read {}", path.string());
  std::stringstream buf;
  buf << in.rdbuf();
  try {
    return json::parse(buf.str());
  } catch (const json::exception& e) {
    fail("{} is not valid JSON: {}", path.string(), e.what());
  }
}

// Typed field access with messages that name the file and the field.
class Fields {
 public:
  Fields(const json& j, const std::string& source) : j_(j), source_(source) {}

  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }

  int64_t integer(const char* key) const {
    if (!has(key)) fail("{}: missing required field \"{}\"", source_, key);
    return integer_or(key, 0);
  }
  int64_t integer_or(const char* key, int64_t fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_[key];
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float() && v.get<double>() == std::floor(v.get<double>()))
      return static_cast<int64_t>(v.get<double>());
    fail("{}: field \"{}\" must be an integer, got {}", source_, key, v.dump());
  }
  int64_t positive(const char* key) const {
    int64_t v = integer(key);
    if (v <= 0) fail("{}: field \"{}\" must be positive, got {}", source_, key, v);
    return v;
  }
  double number_or(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_number())
      fail("{}: field \"{}\" must be a number, got {}", source_, key, j_[key].dump());
    return j_[key].get<double>();
  }
  std::optional<double> optional_number(const char* key) const {
    if (!has(key)) return std::nullopt;
    return number_or(key, 0);
  }
  bool boolean_or(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_boolean())
      fail("{}: field \"{}\" must be true or false, got {}", source_, key, j_[key].dump());
    return j_[key].get<bool>();
  }
  std::string string_or(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_string())
      fail("{}: field \"{}\" must be a string, got {}", source_, key, j_[key].dump());
    return j_[key].get<std::string>();
  }
  // An integer or a list of integers (eos_token_id).
  std::vector<int32_t> id_list(const char* key) const {
    std::vector<int32_t> ids;
    if (!has(key)) return ids;
    const json& v = j_[key];
    auto one = [&](const json& x) {
      if (!x.is_number_integer())
        fail("{}: field \"{}\" must hold token ids, got {}", source_, key, v.dump());
      ids.push_back(x.get<int32_t>());
    };
    if (v.is_array()) {
      for (const auto& x : v) one(x);
    } else {
      one(v);
    }
    return ids;
  }
  const json& raw(const char* key) const { return j_[key]; }

 private:
  const json& j_;
  const std::string& source_;
};

Activation parse_activation(const std::string& name, const std::string& source) {
  if (name == "silu" || name == "swish") return Activation::kSilu;
  if (name == "gelu_pytorch_tanh" || name == "gelu_new" || name == "gelu_fast")
    return Activation::kGeluTanh;
  if (name == "gelu") return Activation::kGelu;
  if (name == "relu") return Activation::kRelu;
  fail(ErrorKind::kUnsupported,
       "{}: unsupported activation \"{}\" (supported: silu, gelu, gelu_new, gelu_pytorch_tanh, "
       "relu)",
       source, name);
}

// quantization_config: which pre-quantized checkpoints load (FP8 E4M3 weights with f32 scales, in
// the layouts vLLM's "fp8" and "compressed-tensors" methods read) and, for the rest, what they are.
void parse_quantization(const json& q, ModelConfig& c, const std::string& source) {
  c.quant_method = q.is_object() && q.contains("quant_method") && q["quant_method"].is_string()
                       ? q["quant_method"].get<std::string>()
                       : "unknown";
  c.quant_scheme = c.quant_method;
  if (!q.is_object()) return;
  auto block_size = [&](const json& b, const char* field) {
    if (b.is_null()) return;
    if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() || !b[1].is_number_integer() ||
        b[0].get<int64_t>() <= 0 || b[1].get<int64_t>() <= 0)
      fail("{}: quantization_config {} must be two positive integers, got {}", source, field,
           b.dump());
    c.fp8_block_rows = b[0].get<int64_t>();
    c.fp8_block_cols = b[1].get<int64_t>();
  };
  if (c.quant_method == "fp8") {
    const std::string fmt = q.value("fmt", std::string("e4m3"));
    if (fmt != "e4m3") {
      c.quant_scheme = "fp8 with fmt \"" + fmt + "\"";
      return;
    }
    c.fp8_checkpoint = true;
    if (q.contains("weight_block_size")) block_size(q["weight_block_size"], "weight_block_size");
    return;
  }
  auto int_weights = [&](const std::string& format, int bits, int64_t group, bool symmetric) {
    c.int_format = format;
    c.int_bits = bits;
    c.int_group_size = group > 0 ? group : 0;
    c.int_symmetric = symmetric;
  };
  auto integer = [&](const char* field, int64_t fallback) -> int64_t {
    if (!q.contains(field)) return fallback;
    if (!q[field].is_number_integer())
      fail("{}: quantization_config {} must be an integer, got {}", source, field, q[field].dump());
    return q[field].get<int64_t>();
  };
  auto flag = [&](const char* field, bool fallback) {
    if (!q.contains(field) || q[field].is_null()) return fallback;
    if (!q[field].is_boolean())
      fail("{}: quantization_config {} must be true or false, got {}", source, field,
           q[field].dump());
    return q[field].get<bool>();
  };
  if (c.quant_method == "gptq") {
    // AutoGPTQ / GPTQModel: bits, group_size (-1: per output row), sym, desc_act (g_idx then
    // orders the groups), checkpoint_format "gptq" (zeros stored minus one) or "gptq_v2".
    const int64_t bits = integer("bits", 4), group = integer("group_size", 128);
    const std::string format =
        q.value("checkpoint_format", q.contains("format") && q["format"].is_string()
                                         ? q["format"].get<std::string>()
                                         : std::string("gptq"));
    if (flag("is_marlin_format", false) || (format != "gptq" && format != "gptq_v2")) {
      c.quant_scheme = fmt::format("gptq in the \"{}\" layout",
                                   flag("is_marlin_format", false) ? "marlin" : format);
      return;
    }
    if (bits != 4 && bits != 8) {
      c.quant_scheme = fmt::format("gptq with {}-bit weights", bits);
      return;
    }
    int_weights("gptq", static_cast<int>(bits), group, flag("sym", true));
    c.int_gptq_v2 = format == "gptq_v2";
    c.quant_scheme = fmt::format("gptq, {}-bit", bits);
    return;
  }
  if (c.quant_method == "awq") {
    // AutoAWQ: w_bit / bits, q_group_size / group_size, zero_point, version (the GEMM layout is
    // what its releases and vLLM use).
    const int64_t bits = integer("bits", integer("w_bit", 4));
    const int64_t group = integer("group_size", integer("q_group_size", 128));
    std::string version = q.value("version", std::string("gemm"));
    std::transform(version.begin(), version.end(), version.begin(),
                   [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    if (bits != 4 || version != "gemm" || !flag("zero_point", true)) {
      c.quant_scheme = bits != 4 ? fmt::format("awq with {}-bit weights", bits)
                       : version != "gemm"
                           ? fmt::format("awq version \"{}\" (the GEMM layout loads)", version)
                           : std::string("awq without zero points");
      return;
    }
    int_weights("awq", 4, group, false);
    c.quant_scheme = "awq, 4-bit";
    return;
  }
  if (c.quant_method != "compressed-tensors") return;
  // compressed-tensors: every config group's weights must be 8-bit floats (the FP8 schemes, as
  // llm-compressor writes "FP8", "FP8_DYNAMIC" and "FP8_BLOCK"), or all the same integer scheme
  // (W4A16 / W8A16 packed into int32, W8A8 as int8); activation settings are read by GPU kernels
  // only.
  const std::string format = q.value("format", std::string());
  const json groups = q.value("config_groups", json::object());
  bool all_fp8 = groups.is_object() && !groups.empty();
  bool all_int = all_fp8;
  std::string found, first_int;
  int int_bits = 0;
  int64_t int_group = 0;
  bool int_symmetric = true;
  if (all_fp8) {
    for (const auto& [name, g] : groups.items()) {
      const json w = g.is_object() ? g.value("weights", json()) : json();
      const int bits = w.is_object() ? w.value("num_bits", 0) : 0;
      const std::string type = w.is_object() ? w.value("type", std::string()) : "";
      const std::string strategy = w.is_object() ? w.value("strategy", std::string()) : "";
      const std::string scheme =
          fmt::format("{}-bit {} weights ({} strategy)", bits, type.empty() ? "?" : type,
                      strategy.empty() ? "no" : strategy);
      if (bits != 8 || type != "float" ||
          (strategy != "tensor" && strategy != "channel" && strategy != "block")) {
        all_fp8 = false;
        if (found.empty()) found = scheme;
      }
      if (strategy == "block" && w.contains("block_structure"))
        block_size(w["block_structure"], "block_structure");
      // Integer weights: 4 or 8 bits, a scale per group of inputs or per output row.
      const bool symmetric = w.is_object() && w.contains("symmetric") && w["symmetric"].is_boolean()
                                 ? w["symmetric"].get<bool>()
                                 : true;
      const int64_t group =
          strategy == "group" && w.contains("group_size") && w["group_size"].is_number_integer()
              ? w["group_size"].get<int64_t>()
              : 0;
      const bool int_ok = type == "int" && (bits == 4 || bits == 8) &&
                          (strategy == "channel" || (strategy == "group" && group > 0) ||
                           (strategy == "tensor" && format != "pack-quantized"));
      if (!int_ok || (!first_int.empty() &&
                      (bits != int_bits || group != int_group || symmetric != int_symmetric))) {
        all_int = false;
        if (int_ok) found = "config groups with different integer weights";
      } else if (first_int.empty()) {
        first_int = scheme;
        int_bits = bits;
        int_group = group;
        int_symmetric = symmetric;
      }
    }
  }
  if (all_int && ((format == "pack-quantized" && (int_bits == 4 || int_bits == 8)) ||
                  ((format == "int-quantized" || format == "naive-quantized") && int_bits == 8 &&
                   int_symmetric))) {
    int_weights(format == "pack-quantized" ? "pack-quantized" : "int-quantized", int_bits,
                int_group, int_symmetric);
    c.quant_scheme = "compressed-tensors " + format + ", " + first_int;
    c.fp8_block_rows = c.fp8_block_cols = 0;
    return;
  }
  if (!all_fp8 || (format != "float-quantized" && format != "naive-quantized")) {
    c.quant_scheme = "compressed-tensors " + (format.empty() ? std::string("?") : format) +
                     (all_int && !int_symmetric ? ", asymmetric 8-bit int weights" : "") +
                     (!found.empty() && !(all_int && !int_symmetric) ? ", " + found : "");
    c.fp8_block_rows = c.fp8_block_cols = 0;
    return;
  }
  c.fp8_checkpoint = true;
}

void parse_dtype_and_ids(const Fields& f, ModelConfig& c, const std::string& source,
                         const char* default_dtype) {
  std::string dtype_name = f.string_or("torch_dtype", f.string_or("dtype", default_dtype));
  if (!parse_torch_dtype(dtype_name, &c.dtype))
    fail(ErrorKind::kUnsupported,
         "{}: unsupported torch_dtype \"{}\" (supported: float32, bfloat16, float16)", source,
         dtype_name);
  std::vector<int32_t> bos = f.id_list("bos_token_id");
  if (!bos.empty()) c.bos_token_id = bos[0];
  c.eos_token_ids = f.id_list("eos_token_id");
  std::vector<int32_t> pad = f.id_list("pad_token_id");
  if (!pad.empty()) c.pad_token_id = pad[0];
  if (f.has("quantization_config")) parse_quantization(f.raw("quantization_config"), c, source);
}

// rope_scaling (absent: none). Llama, Mistral, Qwen, Gemma and Falcon share it.
void parse_rope_scaling(const json& j, const Fields& f, ModelConfig& c, const std::string& source) {
  if (f.has("rope_scaling")) {
    const json& rs = j["rope_scaling"];
    if (!rs.is_object()) fail("{}: rope_scaling must be an object", source);
    Fields r(rs, source);
    c.rope_scaling.type = r.string_or("rope_type", r.string_or("type", "default"));
    const std::string& type = c.rope_scaling.type;
    if (type != "default" && type != "linear" && type != "llama3" && type != "yarn")
      fail(ErrorKind::kUnsupported,
           "{}: unsupported rope_scaling type \"{}\" (supported: default, linear, llama3, yarn)",
           source, type);
    c.rope_scaling.factor = r.number_or("factor", 1.0);
    c.rope_scaling.low_freq_factor = r.number_or("low_freq_factor", 1.0);
    c.rope_scaling.high_freq_factor = r.number_or("high_freq_factor", 4.0);
    c.rope_scaling.original_max_position_embeddings =
        r.integer_or("original_max_position_embeddings", c.max_position_embeddings);
    c.rope_scaling.beta_fast = r.number_or("beta_fast", 32.0);
    c.rope_scaling.beta_slow = r.number_or("beta_slow", 1.0);
    c.rope_scaling.mscale = r.optional_number("mscale");
    c.rope_scaling.mscale_all_dim = r.optional_number("mscale_all_dim");
    c.rope_scaling.attention_factor = r.optional_number("attention_factor");
    c.rope_scaling.truncate = r.boolean_or("truncate", true);
    if (type != "default" && c.rope_scaling.factor <= 0)
      fail("{}: rope_scaling.factor must be positive", source);
  }
}

// GPT2Config names its fields n_embd, n_layer, ...; hidden_size and friends are its aliases.
ModelConfig parse_gpt2_config(const json& j, const Fields& f, ModelConfig c,
                              const std::string& source) {
  (void)j;
  auto pick = [&](const char* name, const char* alias) {
    return f.has(name) ? f.positive(name) : f.positive(alias);
  };
  c.vocab_size = f.has("vocab_size") ? f.positive("vocab_size") : 50257;
  c.hidden_size = pick("n_embd", "hidden_size");
  c.num_layers = pick("n_layer", "num_hidden_layers");
  c.num_heads = pick("n_head", "num_attention_heads");
  c.num_kv_heads = c.num_heads;
  if (c.hidden_size % c.num_heads != 0)
    fail("{}: n_embd ({}) is not a multiple of n_head ({})", source, c.hidden_size, c.num_heads);
  c.head_dim = c.hidden_size / c.num_heads;
  c.intermediate_size = f.has("n_inner") ? f.positive("n_inner") : 4 * c.hidden_size;
  c.max_position_embeddings = f.has("n_positions") ? f.positive("n_positions")
                                                   : f.integer_or("max_position_embeddings", 1024);
  c.layer_norm_eps = f.number_or("layer_norm_epsilon", 1e-5);
  c.hidden_act = parse_activation(f.string_or("activation_function", "gelu_new"), source);
  c.learned_positions = true;
  c.tie_word_embeddings = f.boolean_or("tie_word_embeddings", true);
  c.attention_bias = c.o_proj_bias = c.mlp_bias = true;
  c.scale_attn_weights = f.boolean_or("scale_attn_weights", true);
  c.scale_attn_by_inverse_layer_idx = f.boolean_or("scale_attn_by_inverse_layer_idx", false);
  if (f.boolean_or("add_cross_attention", false))
    fail(ErrorKind::kUnsupported,
         "{}: GPT-2 with cross-attention (an encoder-decoder) is not "
         "supported",
         source);
  c.sliding_window.assign(c.num_layers, 0);
  // The original checkpoints predate torch_dtype: they are float32.
  parse_dtype_and_ids(f, c, source, "float32");
  return c;
}

// OPTConfig: separate q/k/v/out projections, fc1/fc2, learned positions offset by 2.
ModelConfig parse_opt_config(const Fields& f, ModelConfig c, const std::string& source) {
  c.vocab_size = f.positive("vocab_size");
  c.hidden_size = f.positive("hidden_size");
  c.num_layers = f.positive("num_hidden_layers");
  c.num_heads = f.positive("num_attention_heads");
  c.num_kv_heads = c.num_heads;
  if (c.hidden_size % c.num_heads != 0)
    fail("{}: hidden_size ({}) is not a multiple of num_attention_heads ({})", source,
         c.hidden_size, c.num_heads);
  c.head_dim = c.hidden_size / c.num_heads;
  c.intermediate_size = f.positive("ffn_dim");
  c.max_position_embeddings = f.integer_or("max_position_embeddings", 2048);
  c.hidden_act = parse_activation(f.string_or("activation_function", "relu"), source);
  if (f.has("word_embed_proj_dim") && f.positive("word_embed_proj_dim") != c.hidden_size)
    c.word_embed_proj_dim = f.positive("word_embed_proj_dim");
  if (!f.boolean_or("layer_norm_elementwise_affine", true))
    fail(ErrorKind::kUnsupported, "{}: layer_norm_elementwise_affine = false is not supported",
         source);
  c.post_norm = !f.boolean_or("do_layer_norm_before", true);
  const bool bias = f.boolean_or("enable_bias", true);
  c.attention_bias = c.o_proj_bias = c.mlp_bias = bias;
  c.learned_positions = true;
  c.position_offset = 2;
  c.layer_norm_eps = 1e-5;
  c.tie_word_embeddings = f.boolean_or("tie_word_embeddings", true);
  c.sliding_window.assign(c.num_layers, 0);
  parse_dtype_and_ids(f, c, source, "float32");
  return c;
}

// FalconConfig (and the older RWConfig of "RefinedWeb" checkpoints, whose fields are n_embed,
// n_layer, n_head, n_head_kv): LayerNorm, rotary, a fused query_key_value and, by default,
// attention and MLP in parallel from one LayerNorm.
ModelConfig parse_falcon_config(const Fields& f, ModelConfig c, const std::string& source) {
  auto pick = [&](const char* name, const char* alias) {
    return f.has(name) ? f.positive(name) : f.positive(alias);
  };
  c.vocab_size = f.has("vocab_size") ? f.positive("vocab_size") : 65024;
  c.hidden_size = pick("hidden_size", "n_embed");
  c.num_layers = pick("num_hidden_layers", "n_layer");
  c.num_heads = pick("num_attention_heads", "n_head");
  if (c.hidden_size % c.num_heads != 0)
    fail("{}: hidden_size ({}) is not a multiple of num_attention_heads ({})", source,
         c.hidden_size, c.num_heads);
  c.head_dim = c.hidden_size / c.num_heads;
  if (c.head_dim % 2 != 0) fail("{}: head_dim must be even, got {}", source, c.head_dim);
  if (f.boolean_or("alibi", false))
    fail(ErrorKind::kUnsupported,
         "{}: Falcon with ALiBi position biases (alibi = true, e.g. falcon-rw-1b) is not "
         "supported; rotary Falcon models are",
         source);
  // RWConfig's "RefinedWeb" (Falcon-40B's first release) always used the new decoder.
  c.new_decoder_architecture =
      f.boolean_or("new_decoder_architecture", c.model_type == "RefinedWeb");
  const bool multi_query = f.boolean_or("multi_query", true);
  c.parallel_attn = f.boolean_or("parallel_attn", true);
  // As FalconAttention counts them: the new decoder has num_kv_heads groups, the old one a
  // single shared key/value head (multi_query) or one per query head.
  if (c.new_decoder_architecture) {
    c.num_kv_heads = f.has("num_kv_heads") ? f.positive("num_kv_heads")
                     : f.has("n_head_kv")  ? f.positive("n_head_kv")
                                           : c.num_heads;
    if (!c.parallel_attn)
      fail(ErrorKind::kUnsupported,
           "{}: new_decoder_architecture with parallel_attn = false is not a Falcon layout",
           source);
  } else {
    c.num_kv_heads = multi_query ? 1 : c.num_heads;
  }
  if (c.num_heads % c.num_kv_heads != 0)
    fail("{}: num_attention_heads ({}) is not a multiple of num_kv_heads ({})", source, c.num_heads,
         c.num_kv_heads);
  // Two LayerNorms (ln_attn, ln_mlp) unless num_ln_in_parallel_attn says one: the new
  // decoder's default is two (Falcon-40B/180B), Falcon2-11B sets one.
  if (c.parallel_attn && c.new_decoder_architecture)
    c.separate_mlp_norm = f.integer_or("num_ln_in_parallel_attn", 2) == 2;
  c.intermediate_size =
      f.has("ffn_hidden_size") ? f.positive("ffn_hidden_size") : 4 * c.hidden_size;
  c.max_position_embeddings = f.integer_or("max_position_embeddings", 2048);
  c.layer_norm_eps = f.number_or("layer_norm_epsilon", 1e-5);
  c.rope_theta = f.number_or("rope_theta", 10000.0);
  c.hidden_act = parse_activation(f.string_or("activation", "gelu"), source);
  const bool bias = f.boolean_or("bias", false);
  c.attention_bias = c.o_proj_bias = c.mlp_bias = bias;
  c.tie_word_embeddings = f.boolean_or("tie_word_embeddings", true);
  c.sliding_window.assign(c.num_layers, 0);
  parse_dtype_and_ids(f, c, source, "bfloat16");
  return c;
}

}  // namespace

std::string supported_architectures() {
  std::string s;
  for (const auto& a : kArchitectures) {
    if (!s.empty()) s += ", ";
    s += a.name;
  }
  return s;
}

float ModelConfig::layer_attention_scale(int64_t layer) const {
  float scale = scale_attn_weights ? attention_scale() : 1.0f;
  if (scale_attn_by_inverse_layer_idx) scale /= static_cast<float>(layer + 1);
  return scale;
}

float ModelConfig::attention_scale() const {
  double scalar = query_pre_attn_scalar > 0 ? query_pre_attn_scalar : static_cast<double>(head_dim);
  return static_cast<float>(1.0 / std::sqrt(scalar));
}

int64_t ModelConfig::rotary_dim() const {
  if (mla()) return qk_rope_head_dim;
  return static_cast<int64_t>(static_cast<double>(head_dim) * partial_rotary_factor) / 2 * 2;
}

ModelConfig parse_model_config(const json& j, const std::string& source) {
  if (!j.is_object()) fail("{}: expected a JSON object", source);
  Fields f(j, source);
  ModelConfig c;

  // A multimodal config may nest the language model under text_config; we take plain LMs only.
  if (!f.has("architectures") || !j["architectures"].is_array() || j["architectures"].empty() ||
      !j["architectures"][0].is_string())
    fail("{}: missing \"architectures\" (supported: {})", source, supported_architectures());
  c.architecture = j["architectures"][0].get<std::string>();
  bool known = false;
  for (const auto& a : kArchitectures) {
    if (c.architecture == a.name) {
      c.arch = a.arch;
      known = true;
    }
  }
  if (!known)
    fail(ErrorKind::kUnsupported, "{}: unsupported architecture \"{}\" (supported: {})", source,
         c.architecture, supported_architectures());
  c.model_type = f.string_or("model_type", "");
  if (c.arch == Arch::kGpt2) return parse_gpt2_config(j, f, c, source);
  if (c.arch == Arch::kOpt) return parse_opt_config(f, c, source);
  if (c.arch == Arch::kFalcon) {
    ModelConfig falcon = parse_falcon_config(f, c, source);
    parse_rope_scaling(j, f, falcon, source);
    return falcon;
  }

  c.vocab_size = f.positive("vocab_size");
  c.hidden_size = f.positive("hidden_size");
  // Qwen3-MoE's dense intermediate_size is unused when every layer is sparse.
  const bool qwen_moe = c.arch == Arch::kQwen3Moe || c.arch == Arch::kQwen2Moe;
  c.intermediate_size =
      qwen_moe ? f.integer_or("intermediate_size", 0) : f.positive("intermediate_size");
  c.num_layers = f.positive("num_hidden_layers");
  c.num_heads = f.positive("num_attention_heads");
  c.num_kv_heads = f.has("num_key_value_heads") ? f.positive("num_key_value_heads") : c.num_heads;
  if (c.num_heads % c.num_kv_heads != 0)
    fail("{}: num_attention_heads ({}) is not a multiple of num_key_value_heads ({})", source,
         c.num_heads, c.num_kv_heads);
  c.head_dim = f.has("head_dim") && c.arch != Arch::kDeepseekV3 ? f.positive("head_dim") : 0;
  if (c.arch == Arch::kDeepseekV3) {
    c.q_lora_rank = f.integer_or("q_lora_rank", 0);
    c.kv_lora_rank = f.positive("kv_lora_rank");
    c.qk_nope_head_dim = f.positive("qk_nope_head_dim");
    c.qk_rope_head_dim = f.positive("qk_rope_head_dim");
    c.v_head_dim = f.positive("v_head_dim");
    if (c.qk_rope_head_dim % 2 != 0)
      fail("{}: qk_rope_head_dim must be even, got {}", source, c.qk_rope_head_dim);
    // The cached "head": the latent and the rotary key, read by every query head.
    c.head_dim = c.kv_lora_rank + c.qk_rope_head_dim;
    c.num_kv_heads = 1;
    if (!f.boolean_or("rope_interleave", true))
      fail(ErrorKind::kUnsupported, "{}: rope_interleave = false is not supported", source);
  }
  if (c.head_dim == 0) {
    if (c.hidden_size % c.num_heads != 0)
      fail(
          "{}: hidden_size ({}) is not a multiple of num_attention_heads ({}) and head_dim is not "
          "set",
          source, c.hidden_size, c.num_heads);
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) fail("{}: head_dim must be even, got {}", source, c.head_dim);
  c.max_position_embeddings = f.integer_or("max_position_embeddings", 2048);
  c.rms_norm_eps = f.number_or("rms_norm_eps", 1e-6);
  c.rope_theta = f.number_or("rope_theta", 10000.0);
  c.partial_rotary_factor = f.number_or("partial_rotary_factor", 1.0);

  std::string act = f.string_or("hidden_activation", f.string_or("hidden_act", "silu"));
  c.hidden_act = parse_activation(act, source);

  parse_rope_scaling(j, f, c, source);

  c.tie_word_embeddings = f.boolean_or("tie_word_embeddings", c.arch == Arch::kGemma2);
  c.mlp_bias = f.boolean_or("mlp_bias", false);
  switch (c.arch) {
    case Arch::kLlama:
    case Arch::kMistral:
      c.attention_bias = f.boolean_or("attention_bias", false);
      c.o_proj_bias = c.attention_bias;
      break;
    case Arch::kMixtral:
      c.num_experts = f.positive("num_local_experts");
      c.num_experts_per_tok = f.has("num_experts_per_tok") ? f.positive("num_experts_per_tok") : 2;
      c.moe_intermediate_size = c.intermediate_size;
      c.norm_topk_prob = true;
      break;
    case Arch::kDeepseekV3: {
      c.attention_bias = f.boolean_or("attention_bias", false);
      if (c.attention_bias)
        fail(ErrorKind::kUnsupported, "{}: DeepSeek-V3 with attention_bias is not supported",
             source);
      c.num_experts = f.positive("n_routed_experts");
      c.num_experts_per_tok = f.positive("num_experts_per_tok");
      c.moe_intermediate_size = f.positive("moe_intermediate_size");
      c.shared_expert_intermediate_size =
          f.integer_or("n_shared_experts", 0) * c.moe_intermediate_size;
      c.shared_expert_gated = false;
      c.norm_topk_prob = f.boolean_or("norm_topk_prob", true);
      c.sigmoid_grouped_routing = true;
      c.n_group = f.has("n_group") ? f.positive("n_group") : 1;
      c.topk_group = f.has("topk_group") ? f.positive("topk_group") : 1;
      c.routed_scaling_factor = f.number_or("routed_scaling_factor", 1.0);
      c.first_dense_layers = std::min(f.integer_or("first_k_dense_replace", 0), c.num_layers);
      const std::string scoring = f.string_or("scoring_func", "sigmoid");
      const std::string method = f.string_or("topk_method", "noaux_tc");
      if (scoring != "sigmoid" || method != "noaux_tc")
        fail(ErrorKind::kUnsupported,
             "{}: DeepSeek routing scoring_func \"{}\" with topk_method \"{}\" is not supported "
             "(supported: sigmoid with noaux_tc, as DeepSeek-V3/R1 use)",
             source, scoring, method);
      if (c.num_experts % c.n_group != 0 || c.topk_group > c.n_group)
        fail("{}: {} experts do not split into n_group {} with topk_group {}", source,
             c.num_experts, c.n_group, c.topk_group);
      if (f.integer_or("moe_layer_freq", 1) != 1)
        fail(ErrorKind::kUnsupported, "{}: moe_layer_freq != 1 is not supported", source);
      break;
    }
    case Arch::kQwen3Moe:
    case Arch::kQwen2Moe: {
      if (c.arch == Arch::kQwen3Moe) {
        c.attention_bias = f.boolean_or("attention_bias", false);
        c.qk_norm = true;
      } else {
        c.attention_bias = true;  // Qwen2's q/k/v biases
        c.shared_expert_intermediate_size = f.integer_or("shared_expert_intermediate_size", 0);
      }
      c.num_experts = f.positive("num_experts");
      c.num_experts_per_tok = f.has("num_experts_per_tok") ? f.positive("num_experts_per_tok")
                                                           : (c.arch == Arch::kQwen3Moe ? 8 : 4);
      c.moe_intermediate_size = f.positive("moe_intermediate_size");
      c.norm_topk_prob = f.boolean_or("norm_topk_prob", false);
      const bool dense_layers = f.has("mlp_only_layers") && j["mlp_only_layers"].is_array() &&
                                !j["mlp_only_layers"].empty();
      if (f.integer_or("decoder_sparse_step", 1) != 1 || dense_layers)
        fail(ErrorKind::kUnsupported,
             "{}: Qwen-MoE with dense layers (decoder_sparse_step != 1 or mlp_only_layers) is not "
             "supported",
             source);
      break;
    }
    case Arch::kQwen2:
      c.attention_bias = true;  // q/k/v carry biases, o_proj does not
      break;
    case Arch::kQwen3:
      c.attention_bias = f.boolean_or("attention_bias", false);
      c.qk_norm = true;
      break;
    case Arch::kGemma2:
      c.attention_bias = f.boolean_or("attention_bias", false);
      c.norm_unit_offset = true;
      c.scale_embeddings = true;
      c.sandwich_norms = true;
      c.attn_logit_softcapping = f.number_or("attn_logit_softcapping", 0.0);
      c.final_logit_softcapping = f.number_or("final_logit_softcapping", 0.0);
      c.query_pre_attn_scalar = f.number_or("query_pre_attn_scalar", 0.0);
      break;
    case Arch::kGpt2:
    case Arch::kOpt:
    case Arch::kFalcon:
      break;  // their own parsers
  }

  if (c.num_experts_per_tok > c.num_experts)
    fail("{}: num_experts_per_tok ({}) exceeds the {} experts", source, c.num_experts_per_tok,
         c.num_experts);

  // Sliding windows: explicit layer_types win; otherwise each architecture's rule.
  c.sliding_window.assign(c.num_layers, 0);
  int64_t window = f.integer_or("sliding_window", 0);
  bool use_sliding = f.boolean_or("use_sliding_window",
                                  c.arch != Arch::kQwen2 && c.arch != Arch::kQwen3 &&
                                      c.arch != Arch::kQwen3Moe && c.arch != Arch::kQwen2Moe);
  if (f.has("layer_types")) {
    const json& types = j["layer_types"];
    if (!types.is_array() || static_cast<int64_t>(types.size()) != c.num_layers)
      fail("{}: layer_types must list one type per layer ({})", source, c.num_layers);
    for (int64_t l = 0; l < c.num_layers; ++l) {
      std::string t = types[l].is_string() ? types[l].get<std::string>() : "";
      if (t == "sliding_attention") {
        if (window <= 0)
          fail("{}: layer {} uses sliding attention but sliding_window is not set", source, l);
        c.sliding_window[l] = static_cast<int32_t>(window);
      } else if (t != "full_attention") {
        fail(ErrorKind::kUnsupported, "{}: unsupported layer type \"{}\"", source, types[l].dump());
      }
    }
  } else if (window > 0 && use_sliding) {
    int64_t max_window_layers = f.integer_or("max_window_layers", 0);
    for (int64_t l = 0; l < c.num_layers; ++l) {
      bool sliding = false;
      switch (c.arch) {
        case Arch::kLlama:
          sliding = false;
          break;
        case Arch::kMistral:
        case Arch::kMixtral:
          sliding = true;
          break;
        case Arch::kQwen2:
        case Arch::kQwen3:
        case Arch::kQwen3Moe:
        case Arch::kQwen2Moe:
          sliding = l >= max_window_layers;
          break;
        case Arch::kGemma2:
          sliding = l % 2 == 0;
          break;
        case Arch::kGpt2:
        case Arch::kOpt:
        case Arch::kFalcon:
        case Arch::kDeepseekV3:
          break;
      }
      if (sliding) c.sliding_window[l] = static_cast<int32_t>(window);
    }
  }

  parse_dtype_and_ids(f, c, source, "bfloat16");
  return c;
}

ModelConfig load_model_config(const fs::path& model_dir) {
  if (!fs::exists(model_dir))
    fail(ErrorKind::kNotFound, "model folder {} does not exist", model_dir.string());
  if (!fs::is_directory(model_dir)) fail("model path {} is not a folder", model_dir.string());
  fs::path path = model_dir / "config.json";
  if (!fs::exists(path)) fail(ErrorKind::kNotFound, "{} has no config.json", model_dir.string());
  return parse_model_config(read_json_file(path), path.string());
}

void merge_generation_config(GenerationConfig& g, const nlohmann::json& j,
                             const std::string& source) {
  if (!j.is_object()) fail("{}: expected a JSON object", source);
  Fields f(j, source);
  if (f.has("eos_token_id")) g.eos_token_ids = f.id_list("eos_token_id");
  if (f.has("bos_token_id")) {
    const std::vector<int32_t> bos = f.id_list("bos_token_id");
    if (!bos.empty()) g.bos_token_id = bos[0];
  }
  for (auto [key, field] :
       {std::pair{"temperature", &g.temperature}, std::pair{"top_p", &g.top_p},
        std::pair{"min_p", &g.min_p}, std::pair{"repetition_penalty", &g.repetition_penalty}}) {
    if (f.has(key)) *field = f.optional_number(key);
  }
  if (f.has("top_k")) g.top_k = f.integer_or("top_k", 0);
  if (f.has("max_new_tokens")) g.max_new_tokens = f.integer_or("max_new_tokens", 0);
  if (f.has("do_sample")) g.do_sample = f.boolean_or("do_sample", false);
}

GenerationConfig load_generation_config(const fs::path& model_dir) {
  GenerationConfig g;
  fs::path path = model_dir / "generation_config.json";
  if (!fs::exists(path)) return g;
  merge_generation_config(g, read_json_file(path), path.string());
  return g;
}

std::vector<float> rope_inv_freq(const ModelConfig& c, float* attention_scaling) {
  const int64_t dim = c.rotary_dim();
  const int64_t half = dim / 2;
  const float base = static_cast<float>(c.rope_theta);
  // base ** (2i / dim) in f32, as Hugging Face computes it.
  std::vector<float> pos_freqs(half);
  for (int64_t i = 0; i < half; ++i)
    pos_freqs[i] = std::pow(base, static_cast<float>(2 * i) / static_cast<float>(dim));
  std::vector<float> inv(half);
  for (int64_t i = 0; i < half; ++i) inv[i] = 1.0f / pos_freqs[i];
  *attention_scaling = 1.0f;
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type == "linear") {
    for (float& f : inv) f = f / static_cast<float>(rs.factor);
  } else if (rs.type == "llama3") {
    const float factor = static_cast<float>(rs.factor);
    const float old_len = static_cast<float>(rs.original_max_position_embeddings);
    const float low_wavelen = old_len / static_cast<float>(rs.low_freq_factor);
    const float high_wavelen = old_len / static_cast<float>(rs.high_freq_factor);
    for (float& f : inv) {
      const float wavelen = 2.0f * static_cast<float>(M_PI) / f;
      if (wavelen > low_wavelen) {
        f = f / factor;
      } else if (!(wavelen < high_wavelen)) {  // medium frequencies: smooth interpolation
        const float smooth = (old_len / wavelen - static_cast<float>(rs.low_freq_factor)) /
                             static_cast<float>(rs.high_freq_factor - rs.low_freq_factor);
        f = (1.0f - smooth) * f / factor + smooth * f;
      }
    }
  } else if (rs.type == "yarn") {
    auto get_mscale = [](double scale, double mscale) {
      return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
    };
    double attention = 0;
    if (rs.attention_factor) {
      attention = *rs.attention_factor;
    } else if (rs.mscale && rs.mscale_all_dim && *rs.mscale && *rs.mscale_all_dim) {
      attention = get_mscale(rs.factor, *rs.mscale) / get_mscale(rs.factor, *rs.mscale_all_dim);
    } else {
      attention = get_mscale(rs.factor, 1.0);
    }
    *attention_scaling = static_cast<float>(attention);
    auto correction_dim = [&](double rotations) {
      return (static_cast<double>(dim) *
              std::log(static_cast<double>(rs.original_max_position_embeddings) /
                       (rotations * 2 * M_PI))) /
             (2 * std::log(static_cast<double>(c.rope_theta)));
    };
    double low = correction_dim(rs.beta_fast), high = correction_dim(rs.beta_slow);
    if (rs.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(dim - 1));
    if (low == high) high += 0.001;
    for (int64_t i = 0; i < half; ++i) {
      float ramp = static_cast<float>((static_cast<double>(i) - low) / (high - low));
      ramp = std::min(1.0f, std::max(0.0f, ramp));
      const float extrapolation_factor = 1.0f - ramp;
      const float interpolation = 1.0f / (static_cast<float>(rs.factor) * pos_freqs[i]);
      const float extrapolation = inv[i];
      inv[i] = interpolation * (1.0f - extrapolation_factor) + extrapolation * extrapolation_factor;
    }
  }
  return inv;
}

}  // namespace tessera
