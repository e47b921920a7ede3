#include "model/make_model.h"

#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>

#include "config/model_config.h"
#include "core/status.h"
#include "loader/safetensors.h"
#include "model/arch/registry.h"

namespace tessera {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct Dims {
  int64_t hidden, layers, heads, kv_heads, ffn, vocab, head_dim;
};

Dims preset_dims(const std::string& preset) {
  if (preset == "tiny") return {64, 3, 4, 2, 128, 4096, 16};
  if (preset == "small") return {768, 12, 12, 4, 2048, 32000, 64};
  if (preset == "1b") return {2048, 16, 32, 8, 5632, 32000, 64};
  if (preset == "8b") return {4096, 32, 32, 8, 14336, 128256, 128};
  fail("unknown preset \"{}\" (supported: tiny, small, 1b, 8b)", preset);
}

std::string torch_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "float32";
    case DType::kF16:
      return "float16";
    default:
      return "bfloat16";
  }
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t hash_name(const std::string& s) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Uniform values in [center - half_width, center + half_width]: scales chosen so that activations
// stay O(1) through the layers and the output distribution is peaked rather than flat.
void fill_tensor(const WeightSpec& spec, const ModelConfig& config, uint64_t seed, DType dtype,
                 void* out, ThreadPool& pool) {
  int64_t numel = 1;
  for (int64_t d : spec.shape) numel *= d;
  const int64_t fan_in = spec.shape.size() == 2 ? spec.shape[1] : 1;
  float center = 0, half = 0;
  switch (spec.role) {
    case WeightRole::kLinear:
    case WeightRole::kRouter:
      half = std::sqrt(3.0f / static_cast<float>(fan_in));
      break;
    case WeightRole::kLinearTransposed:
      half = std::sqrt(3.0f / static_cast<float>(spec.shape[0]));
      break;
    case WeightRole::kEmbedding:
      // Tied embeddings double as the LM head: scale them like one.
      half = config.tie_word_embeddings
                 ? 2.0f * std::sqrt(3.0f / static_cast<float>(config.hidden_size))
                 : 1.0f;
      break;
    case WeightRole::kLmHead:
      half = 2.0f * std::sqrt(3.0f / static_cast<float>(fan_in));
      break;
    case WeightRole::kNorm:
      center = config.norm_unit_offset ? 0.0f : 1.0f;
      half = 0.2f;
      break;
    case WeightRole::kBias:
      half = 0.1f;
      break;
  }
  // Chunks with their own streams: the result does not depend on the number of threads.
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (numel + kChunk - 1) / kChunk;
  const uint64_t base = seed * 0x9e3779b97f4a7c15ull ^ hash_name(spec.name);
  pool.parallel_for(chunks, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      uint64_t state = base + static_cast<uint64_t>(c) * 0xd1b54a32d192ed03ull;
      const int64_t lo = c * kChunk, hi = std::min(numel, lo + kChunk);
      for (int64_t i = lo; i < hi; ++i) {
        float u = static_cast<float>(splitmix64(state) >> 40) * (1.0f / 16777216.0f);  // [0, 1)
        store_from_f32(out, dtype, i, center + (2.0f * u - 1.0f) * half);
      }
    }
  });
}

void write_json(const fs::path& path, const json& j) {
  std::ofstream out(path, std::ios::trunc);
  if (!out) fail("cannot write {}", path.string());
  out << j.dump(2) << "\n";
}

}  // namespace

json preset_config(const std::string& arch, const std::string& preset, DType dtype) {
  const Dims d = preset_dims(preset);
  json c = {{"hidden_size", d.hidden},
            {"num_hidden_layers", d.layers},
            {"num_attention_heads", d.heads},
            {"num_key_value_heads", d.kv_heads},
            {"intermediate_size", d.ffn},
            {"vocab_size", d.vocab},
            {"max_position_embeddings", 4096},
            {"rms_norm_eps", 1e-5},
            {"rope_theta", 10000.0},
            {"hidden_act", "silu"},
            {"tie_word_embeddings", false},
            {"torch_dtype", torch_dtype_name(dtype)},
            {"bos_token_id", 1},
            {"eos_token_id", 2}};
  const bool tiny = preset == "tiny";
  if (arch == "gpt2") {
    // GPT2Config's own field names, as Hugging Face writes them.
    return json{{"architectures", {"GPT2LMHeadModel"}},
                {"model_type", "gpt2"},
                {"n_embd", d.hidden},
                {"n_layer", d.layers},
                {"n_head", d.heads},
                {"n_inner", d.ffn},
                {"n_positions", tiny ? 512 : 1024},
                {"n_ctx", tiny ? 512 : 1024},
                {"vocab_size", d.vocab},
                {"layer_norm_epsilon", 1e-5},
                {"activation_function", "gelu_new"},
                {"scale_attn_weights", true},
                {"tie_word_embeddings", true},
                {"torch_dtype", torch_dtype_name(dtype)},
                {"bos_token_id", 1},
                {"eos_token_id", 2}};
  }
  if (arch == "opt") {
    return json{{"architectures", {"OPTForCausalLM"}},
                {"model_type", "opt"},
                {"hidden_size", d.hidden},
                {"num_hidden_layers", d.layers},
                {"num_attention_heads", d.heads},
                {"ffn_dim", d.ffn},
                {"word_embed_proj_dim", d.hidden},
                {"max_position_embeddings", tiny ? 512 : 2048},
                {"vocab_size", d.vocab},
                {"activation_function", "relu"},
                {"do_layer_norm_before", true},
                {"enable_bias", true},
                {"tie_word_embeddings", true},
                {"torch_dtype", torch_dtype_name(dtype)},
                {"bos_token_id", 1},
                {"eos_token_id", 2}};
  }
  if (arch == "falcon") {
    // Falcon-7B's layout: one multi-query key/value head, attention and MLP in parallel from one
    // LayerNorm, no biases. Overrides select the new decoder (new_decoder_architecture,
    // num_kv_heads) or sequential blocks (parallel_attn = false).
    return json{{"architectures", {"FalconForCausalLM"}},
                {"model_type", "falcon"},
                {"hidden_size", d.hidden},
                {"num_hidden_layers", d.layers},
                {"num_attention_heads", d.heads},
                {"num_kv_heads", d.kv_heads},
                {"ffn_hidden_size", d.ffn},
                {"multi_query", true},
                {"new_decoder_architecture", false},
                {"parallel_attn", true},
                {"bias", false},
                {"alibi", false},
                {"activation", "gelu"},
                {"layer_norm_epsilon", 1e-5},
                {"rope_theta", 10000.0},
                {"max_position_embeddings", tiny ? 512 : 2048},
                {"vocab_size", d.vocab},
                {"tie_word_embeddings", true},
                {"torch_dtype", torch_dtype_name(dtype)},
                {"bos_token_id", 1},
                {"eos_token_id", 2}};
  }
  if (arch == "llama") {
    c["architectures"] = {"LlamaForCausalLM"};
    c["model_type"] = "llama";
    c["rope_theta"] = 500000.0;
    c["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", 8.0},
                         {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", tiny ? 64 : 8192}};
    c["max_position_embeddings"] = tiny ? 512 : 131072;
  } else if (arch == "mistral") {
    c["architectures"] = {"MistralForCausalLM"};
    c["model_type"] = "mistral";
    c["sliding_window"] = tiny ? 32 : 4096;
  } else if (arch == "mixtral") {
    // Mixtral-8x7B's layout: Mistral attention (no sliding window), 8 experts, 2 per token.
    c["architectures"] = {"MixtralForCausalLM"};
    c["model_type"] = "mixtral";
    c["rope_theta"] = 1000000.0;
    c["sliding_window"] = nullptr;
    c["num_local_experts"] = tiny ? 4 : 8;
    c["num_experts_per_tok"] = 2;
    c["intermediate_size"] = tiny ? 64 : d.ffn / 2;
  } else if (arch == "qwen3_moe") {
    // Qwen3-30B-A3B's layout: Qwen3 attention, many narrow experts, renormalised top-k.
    c["architectures"] = {"Qwen3MoeForCausalLM"};
    c["model_type"] = "qwen3_moe";
    c["rope_theta"] = 1000000.0;
    c["head_dim"] = tiny ? 32 : d.head_dim * 2;
    c["attention_bias"] = false;
    c["num_experts"] = tiny ? 8 : 16;
    c["num_experts_per_tok"] = tiny ? 3 : 4;
    c["moe_intermediate_size"] = tiny ? 32 : d.ffn / 4;
    c["norm_topk_prob"] = true;
    c["decoder_sparse_step"] = 1;
    c["mlp_only_layers"] = json::array();
  } else if (arch == "qwen2_moe") {
    // Qwen1.5-MoE-A2.7B's layout: Qwen2 attention (q/k/v biases), narrow experts and a wider
    // shared expert behind a sigmoid gate.
    c["architectures"] = {"Qwen2MoeForCausalLM"};
    c["model_type"] = "qwen2_moe";
    c["rope_theta"] = 1000000.0;
    c["use_sliding_window"] = false;
    c["num_experts"] = tiny ? 8 : 16;
    c["num_experts_per_tok"] = tiny ? 2 : 4;
    c["moe_intermediate_size"] = tiny ? 32 : d.ffn / 4;
    c["shared_expert_intermediate_size"] = tiny ? 96 : d.ffn;
    c["norm_topk_prob"] = false;
    c["decoder_sparse_step"] = 1;
    c["mlp_only_layers"] = json::array();
  } else if (arch == "deepseek_v3") {
    // DeepSeek-V3's layout at a small size: latent attention with a q low rank, yarn, a dense
    // first layer, grouped sigmoid routing over 8 experts in 4 groups, one shared expert.
    c["architectures"] = {"DeepseekV3ForCausalLM"};
    c["model_type"] = "deepseek_v3";
    c.erase("num_key_value_heads");
    c["num_key_value_heads"] = d.heads;
    c["q_lora_rank"] = tiny ? 48 : 384;
    c["kv_lora_rank"] = tiny ? 32 : 256;
    c["qk_nope_head_dim"] = tiny ? 16 : 64;
    c["qk_rope_head_dim"] = tiny ? 8 : 32;
    c["v_head_dim"] = tiny ? 16 : 64;
    c["n_routed_experts"] = 8;
    c["n_shared_experts"] = 1;
    c["num_experts_per_tok"] = 2;
    c["moe_intermediate_size"] = tiny ? 32 : d.ffn / 4;
    c["n_group"] = 4;
    c["topk_group"] = 2;
    c["routed_scaling_factor"] = 2.5;
    c["norm_topk_prob"] = true;
    c["scoring_func"] = "sigmoid";
    c["topk_method"] = "noaux_tc";
    c["first_k_dense_replace"] = 1;
    c["moe_layer_freq"] = 1;
    c["rope_interleave"] = true;
    c["rope_scaling"] = {{"type", "yarn"},
                         {"factor", 4.0},
                         {"original_max_position_embeddings", tiny ? 128 : 1024},
                         {"beta_fast", 32},
                         {"beta_slow", 1},
                         {"mscale", 1.0},
                         {"mscale_all_dim", 1.0}};
  } else if (arch == "qwen2") {
    c["architectures"] = {"Qwen2ForCausalLM"};
    c["model_type"] = "qwen2";
    c["rope_theta"] = 1000000.0;
    c["tie_word_embeddings"] = true;
    c["use_sliding_window"] = false;
    c["sliding_window"] = 4096;
    c["max_window_layers"] = d.layers;
  } else if (arch == "qwen3") {
    c["architectures"] = {"Qwen3ForCausalLM"};
    c["model_type"] = "qwen3";
    c["rope_theta"] = 1000000.0;
    c["head_dim"] = tiny ? 32 : d.head_dim * 2;  // Qwen3 heads are wider than hidden / heads
    c["attention_bias"] = false;
    c["tie_word_embeddings"] = tiny;
  } else if (arch == "gemma2") {
    c["architectures"] = {"Gemma2ForCausalLM"};
    c["model_type"] = "gemma2";
    c["hidden_activation"] = "gelu_pytorch_tanh";
    c["hidden_act"] = "gelu_pytorch_tanh";
    c["head_dim"] = tiny ? 32 : d.head_dim;
    c["query_pre_attn_scalar"] = tiny ? 32 : d.head_dim;
    c["attn_logit_softcapping"] = 50.0;
    c["final_logit_softcapping"] = 30.0;
    c["sliding_window"] = tiny ? 32 : 4096;
    c["rms_norm_eps"] = 1e-6;
    c["tie_word_embeddings"] = true;
  } else {
    fail(
        "unknown architecture \"{}\" (supported: llama, mistral, qwen2, qwen3, gemma2, gpt2, opt, "
        "falcon)",
        arch);
  }
  return c;
}

namespace {

// The tensors one spec becomes in the checkpoint: itself, or FP8 codes and their scales.
struct Stored {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};

struct Fp8Layout {
  // "", "fp8", "fp8-channel", "fp8-block"; the integer ones: "gptq", "awq", "w4a16"
  std::string kind;
  int64_t block_rows = 0, block_cols = 0;
  // Integer layouts (from the parsed config): bits, inputs per group (0: per row), zero points,
  // act order (GPTQ desc_act: a g_idx that scatters the groups), zeros as stored (gptq_v2).
  int bits = 4;
  int64_t group_size = 0;
  bool symmetric = true, act_order = false, gptq_v2 = false;
  bool integer() const {
    return kind == "gptq" || kind == "awq" || kind == "w4a16" || kind == "w8a8";
  }
  bool applies(const WeightSpec& s) const {
    return !kind.empty() && s.role == WeightRole::kLinear && s.shape.size() == 2;
  }
};

// compressed-tensors' quantization_config with one group over every Linear but the LM head.
json compressed_tensors_config(const std::string& format, json weights, json activations) {
  return {{"quant_method", "compressed-tensors"},
          {"format", format},
          {"quantization_status", "compressed"},
          {"ignore", {"lm_head"}},
          {"config_groups",
           {{"group_0",
             {{"targets", {"Linear"}},
              {"weights", std::move(weights)},
              {"input_activations", std::move(activations)}}}}}};
}

json fp8_quantization_config(const std::string& kind) {
  // Dynamic per-token 8-bit activations (what FP8_DYNAMIC and W8A8 declare; tessera's stay f32).
  auto per_token = [](const char* type) {
    return json{{"num_bits", 8},
                {"type", type},
                {"strategy", "token"},
                {"symmetric", true},
                {"dynamic", true}};
  };
  if (kind == "gptq")
    return {{"quant_method", "gptq"},
            {"bits", 4},
            {"group_size", 128},
            {"desc_act", false},
            {"sym", true},
            {"damp_percent", 0.01},
            {"true_sequential", true},
            {"static_groups", false},
            {"checkpoint_format", "gptq"},
            {"model_file_base_name", "model"}};
  if (kind == "awq")
    return {{"quant_method", "awq"}, {"bits", 4},         {"group_size", 128},
            {"zero_point", true},    {"version", "gemm"}, {"modules_to_not_convert", nullptr}};
  if (kind == "w4a16")
    return compressed_tensors_config("pack-quantized",
                                     {{"num_bits", 4},
                                      {"type", "int"},
                                      {"strategy", "group"},
                                      {"group_size", 128},
                                      {"symmetric", true},
                                      {"dynamic", false},
                                      {"actorder", nullptr}},
                                     nullptr);
  if (kind == "w8a8")
    return compressed_tensors_config("int-quantized",
                                     {{"num_bits", 8},
                                      {"type", "int"},
                                      {"strategy", "channel"},
                                      {"symmetric", true},
                                      {"dynamic", false}},
                                     per_token("int"));
  if (kind == "fp8") return {{"quant_method", "fp8"}, {"activation_scheme", "static"}};
  if (kind == "fp8-block")
    return {{"quant_method", "fp8"},
            {"activation_scheme", "dynamic"},
            {"fmt", "e4m3"},
            {"weight_block_size", {128, 128}}};
  if (kind == "fp8-channel")
    return compressed_tensors_config("float-quantized",
                                     {{"num_bits", 8},
                                      {"type", "float"},
                                      {"strategy", "channel"},
                                      {"symmetric", true},
                                      {"dynamic", false}},
                                     per_token("float"));
  fail(
      "--checkpoint-quantization must be fp8, fp8-channel, fp8-block, gptq, awq, w4a16 or w8a8, "
      "got \"{}\"",
      kind);
}

std::vector<Stored> stored_tensors(const WeightSpec& s, const Fp8Layout& fp8, DType dtype) {
  if (!fp8.applies(s)) return {{s.name, dtype, s.shape}};
  const int64_t n = s.shape[0], k = s.shape[1];
  if (fp8.integer()) {
    const int64_t per = 32 / fp8.bits;
    const int64_t groups = fp8.group_size > 0 ? (k + fp8.group_size - 1) / fp8.group_size : 1;
    const std::string base = s.name.substr(0, s.name.size() - 7);  // without ".weight"
    if (fp8.kind == "w8a8")
      return {{s.name, DType::kI8, {n, k}}, {s.name + "_scale", dtype, {n, 1}}};
    if (fp8.kind == "gptq")
      return {{base + ".qweight", DType::kI32, {k / per, n}},
              {base + ".qzeros", DType::kI32, {groups, (n + per - 1) / per}},
              {base + ".scales", dtype, {groups, n}},
              {base + ".g_idx", DType::kI32, {k}}};
    if (fp8.kind == "awq")
      return {{base + ".qweight", DType::kI32, {k, n / per}},
              {base + ".qzeros", DType::kI32, {groups, n / per}},
              {base + ".scales", dtype, {groups, n}}};
    std::vector<Stored> t = {{s.name + "_packed", DType::kI32, {n, (k + per - 1) / per}},
                             {s.name + "_scale", dtype, {n, groups}},
                             {s.name + "_shape", DType::kI64, {2}}};
    if (!fp8.symmetric)
      t.push_back({s.name + "_zero_point", DType::kI32, {(n + per - 1) / per, groups}});
    return t;
  }
  if (fp8.kind == "fp8")
    return {{s.name, DType::kF8E4M3, s.shape},
            {s.name + "_scale", DType::kF32, {}},
            {s.name.substr(0, s.name.size() - 6) + "input_scale", DType::kF32, {}}};
  if (fp8.kind == "fp8-channel")
    return {{s.name, DType::kF8E4M3, s.shape}, {s.name + "_scale", dtype, {n, 1}}};
  return {{s.name, DType::kF8E4M3, s.shape},
          {s.name + "_scale_inv",
           DType::kF32,
           {(n + fp8.block_rows - 1) / fp8.block_rows, (k + fp8.block_cols - 1) / fp8.block_cols}}};
}

// Quantizes w [n, k] (f32) as `fp8` says into the bytes of stored_tensors(), in order. Each scale
// is absmax / 448 of its region, rounded to the scale's dtype before the codes are computed.
void write_fp8(const WeightSpec& s, const Fp8Layout& fp8, DType dtype, const float* w,
               std::vector<std::vector<char>>& out) {
  const int64_t n = s.shape[0], k = s.shape[1];
  const int64_t br = fp8.kind == "fp8" ? n : fp8.kind == "fp8-channel" ? 1 : fp8.block_rows;
  const int64_t bc = fp8.kind == "fp8-block" ? fp8.block_cols : k;
  const int64_t sr = (n + br - 1) / br, sc = (k + bc - 1) / bc;
  const DType scale_dtype = fp8.kind == "fp8-channel" ? dtype : DType::kF32;
  std::vector<float> scales(static_cast<size_t>(sr * sc));
  for (int64_t bi = 0; bi < sr; ++bi)
    for (int64_t bj = 0; bj < sc; ++bj) {
      float amax = 0;
      for (int64_t r = bi * br; r < std::min(n, (bi + 1) * br); ++r)
        for (int64_t c = bj * bc; c < std::min(k, (bj + 1) * bc); ++c)
          amax = std::max(amax, std::fabs(w[r * k + c]));
      float scale = amax > 0 ? amax / kFp8E4M3Max : 1.0f;
      uint16_t h;
      if (scale_dtype != DType::kF32) {
        store_from_f32(&h, scale_dtype, 0, scale);
        scale = load_as_f32(&h, scale_dtype, 0);
      }
      scales[bi * sc + bj] = scale;
    }
  out.assign(fp8.kind == "fp8" ? 3 : 2, {});
  out[0].resize(static_cast<size_t>(n * k));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < k; ++c)
      out[0][r * k + c] =
          static_cast<char>(f32_to_fp8_e4m3(w[r * k + c] / scales[(r / br) * sc + c / bc]));
  out[1].resize(scales.size() * dtype_size(scale_dtype));
  for (size_t i = 0; i < scales.size(); ++i)
    store_from_f32(out[1].data(), scale_dtype, i, scales[i]);
  if (fp8.kind == "fp8") {  // a static activation scale, which tessera reads past
    const float input_scale = 0.05f;
    out[2].resize(4);
    std::memcpy(out[2].data(), &input_scale, 4);
  }
}

// Quantizes w [n, k] (f32) to integers as `fp8` (an integer layout) says, into the bytes of
// stored_tensors(), in order: round to nearest per group of inputs and output row, symmetric
// (zero 2^(bits-1), scale amax / (2^(bits-1) - 1)) or min-max asymmetric. Each scale is rounded to
// its dtype before the values are computed.
void write_int(const WeightSpec& s, const Fp8Layout& fp8, DType dtype, const float* w,
               std::vector<std::vector<char>>& out) {
  const int64_t n = s.shape[0], k = s.shape[1];
  if (fp8.kind == "w8a8") {  // int8 values, one scale per row: amax / 127
    out.assign(2, {});
    out[0].resize(static_cast<size_t>(n * k));
    std::vector<float> row_scale(static_cast<size_t>(n));
    for (int64_t r = 0; r < n; ++r) {
      float amax = 0;
      for (int64_t c = 0; c < k; ++c) amax = std::max(amax, std::fabs(w[r * k + c]));
      uint32_t h = 0;
      store_from_f32(&h, dtype, 0, amax > 0 ? amax / 127.0f : 1.0f);
      row_scale[r] = load_as_f32(&h, dtype, 0);
      for (int64_t c = 0; c < k; ++c)
        out[0][r * k + c] = static_cast<char>(
            std::clamp(static_cast<int>(std::lround(w[r * k + c] / row_scale[r])), -127, 127));
    }
    out[1].resize(static_cast<size_t>(n) * dtype_size(dtype));
    for (int64_t r = 0; r < n; ++r) store_from_f32(out[1].data(), dtype, r, row_scale[r]);
    return;
  }
  const int bits = fp8.bits, per = 32 / bits, maxq = (1 << bits) - 1;
  const int64_t gs = fp8.group_size > 0 ? fp8.group_size : k;
  const int64_t groups = (k + gs - 1) / gs;
  // Each input's group: consecutive, or (act order) the inputs in a scrambled order, gs at a time.
  std::vector<int32_t> group(static_cast<size_t>(k));
  std::vector<int64_t> order(static_cast<size_t>(k));
  for (int64_t c = 0; c < k; ++c) order[c] = c;
  if (fp8.act_order) {
    uint64_t state = hash_name(s.name);
    for (int64_t c = k - 1; c > 0; --c)
      std::swap(order[c], order[static_cast<int64_t>(splitmix64(state) % (c + 1))]);
  }
  for (int64_t i = 0; i < k; ++i) group[order[i]] = static_cast<int32_t>(i / gs);
  std::vector<float> scale(static_cast<size_t>(n * groups));
  std::vector<int> zero(static_cast<size_t>(n * groups));
  for (int64_t r = 0; r < n; ++r) {
    std::vector<float> lo(groups, 0.0f), hi(groups, 0.0f);
    for (int64_t c = 0; c < k; ++c) {
      lo[group[c]] = std::min(lo[group[c]], w[r * k + c]);
      hi[group[c]] = std::max(hi[group[c]], w[r * k + c]);
    }
    for (int64_t g = 0; g < groups; ++g) {
      float sc;
      int z;
      if (fp8.symmetric) {
        sc = std::max(hi[g], -lo[g]) / static_cast<float>((1 << (bits - 1)) - 1);
        z = 1 << (bits - 1);
      } else {
        sc = (hi[g] - lo[g]) / static_cast<float>(maxq);
        // (GPTQ's own format cannot store a zero of 0: it keeps zero - 1.)
        const int lowest = fp8.kind == "gptq" && !fp8.gptq_v2 ? 1 : 0;
        z = sc > 0 ? std::clamp(static_cast<int>(std::lround(-lo[g] / sc)), lowest, maxq) : lowest;
      }
      if (!(sc > 0)) sc = 1.0f;
      uint32_t h = 0;
      store_from_f32(&h, dtype, 0, sc);
      scale[r * groups + g] = load_as_f32(&h, dtype, 0);
      zero[r * groups + g] = z;
    }
  }
  // q [n, k] in [0, maxq].
  std::vector<uint32_t> q(static_cast<size_t>(n * k));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < k; ++c) {
      const int64_t g = r * groups + group[c];
      q[r * k + c] = static_cast<uint32_t>(
          std::clamp(static_cast<int>(std::lround(w[r * k + c] / scale[g])) + zero[g], 0, maxq));
    }
  auto words = [](std::vector<char>& buf, const std::vector<uint32_t>& v) {
    buf.resize(v.size() * 4);
    std::memcpy(buf.data(), v.data(), buf.size());
  };
  auto scales_as = [&](std::vector<char>& buf, bool group_major) {
    buf.resize(static_cast<size_t>(n * groups) * dtype_size(dtype));
    for (int64_t r = 0; r < n; ++r)
      for (int64_t g = 0; g < groups; ++g)
        store_from_f32(buf.data(), dtype, group_major ? g * n + r : r * groups + g,
                       scale[r * groups + g]);
  };
  // AutoAWQ's order: nibble i of a word holds output 8w + (0, 2, 4, 6, 1, 3, 5, 7)[i], so output
  // 8w + j is in nibble kAwqNibble[j].
  constexpr int kAwqNibble[8] = {0, 4, 1, 5, 2, 6, 3, 7};
  out.clear();
  if (fp8.kind == "gptq" || fp8.kind == "awq") {
    const bool gptq = fp8.kind == "gptq";
    std::vector<uint32_t> qw(static_cast<size_t>(n * k / per), 0);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < k; ++c) {
        if (gptq) {  // [k / per, n]: inputs packed, in order
          qw[(c / per) * n + r] |= q[r * k + c] << (bits * (c % per));
        } else {  // [k, n / per]: outputs packed in AutoAWQ's order
          qw[c * (n / per) + r / per] |= q[r * k + c] << (bits * kAwqNibble[r % per]);
        }
      }
    const int64_t zw = (n + per - 1) / per;
    std::vector<uint32_t> qz(static_cast<size_t>(groups * zw), 0);
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t r = 0; r < n; ++r) {
        const int64_t slot = gptq ? r % per : kAwqNibble[r % per];
        // GPTQ's own format stores zero - 1 (gptq_v2: the zero itself).
        const uint32_t z = static_cast<uint32_t>(zero[r * groups + g] - (gptq && !fp8.gptq_v2));
        qz[g * zw + r / per] |= (z & static_cast<uint32_t>(maxq)) << (bits * slot);
      }
    out.resize(gptq ? 4 : 3);
    words(out[0], qw);
    words(out[1], qz);
    scales_as(out[2], true);
    if (gptq) {
      out[3].resize(static_cast<size_t>(k) * 4);
      std::memcpy(out[3].data(), group.data(), out[3].size());
    }
    return;
  }
  // compressed-tensors pack-quantized: [n, ceil(k / per)], inputs in order, stored unsigned.
  const int64_t pk = (k + per - 1) / per;
  std::vector<uint32_t> qw(static_cast<size_t>(n * pk), 0);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < k; ++c) qw[r * pk + c / per] |= q[r * k + c] << (bits * (c % per));
  out.resize(fp8.symmetric ? 3 : 4);
  words(out[0], qw);
  scales_as(out[1], false);
  const int64_t shape[2] = {n, k};
  out[2].resize(sizeof shape);
  std::memcpy(out[2].data(), shape, sizeof shape);
  if (!fp8.symmetric) {  // [ceil(n / per), groups], outputs packed
    std::vector<uint32_t> zp(static_cast<size_t>(((n + per - 1) / per) * groups), 0);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t g = 0; g < groups; ++g)
        zp[(r / per) * groups + g] |= static_cast<uint32_t>(zero[r * groups + g])
                                      << (bits * (r % per));
    words(out[3], zp);
  }
}

}  // namespace

uint64_t make_model(const MakeModelOptions& options, ThreadPool& pool) {
  json config_json = preset_config(options.arch, options.preset, options.dtype);
  Fp8Layout fp8{options.checkpoint_quantization};
  if (!fp8.kind.empty()) {
    if (options.arch == "gpt2")
      fail(
          "--checkpoint-quantization: GPT-2's Conv1D weights have no quantized checkpoint "
          "layout here");
    config_json["quantization_config"] = fp8_quantization_config(fp8.kind);
  }
  if (!options.config_override.is_null()) {
    if (!options.config_override.is_object()) fail("--config-override must be a JSON object");
    config_json.merge_patch(options.config_override);
  }
  fs::create_directories(options.out);
  // A real tokenizer (the built-in byte-level BPE) so that the folder works with text prompts
  // and chat; BOS/EOS ids follow it unless the override sets them.
  tokenizer::write_builtin_tokenizer(options.out, config_json["vocab_size"].get<int64_t>());
  {
    std::unique_ptr<tokenizer::Tokenizer> tok = tokenizer::Tokenizer::load(options.out);
    const json& o = options.config_override;
    const bool bos_set = o.is_object() && o.contains("bos_token_id");
    const bool eos_set = o.is_object() && o.contains("eos_token_id");
    if (!bos_set && tok->bos_token_id()) config_json["bos_token_id"] = *tok->bos_token_id();
    if (!eos_set) {
      json eos = json::array();
      for (const char* name : {"<|end_of_text|>", "<|eot_id|>"})
        if (auto id = tok->token_to_id(name)) eos.push_back(*id);
      if (!eos.empty()) config_json["eos_token_id"] = eos;
    }
  }
  const ModelConfig config = parse_model_config(config_json, "generated config");
  if (fp8.integer()) {
    if (!config.int_checkpoint())
      fail(
          "--checkpoint-quantization {}: the quantization_config says \"{}\", which tessera does "
          "not load",
          fp8.kind, config.quant_scheme);
    fp8.bits = config.int_bits;
    fp8.group_size = config.int_group_size;
    fp8.symmetric = config.int_symmetric;
    fp8.gptq_v2 = config.int_gptq_v2;
    const json& q = config_json["quantization_config"];
    fp8.act_order = q.value("desc_act", false);
    if (fp8.kind == "w4a16" && config.int_bits == 8 && !config.int_symmetric)
      fail("--checkpoint-quantization w4a16: 8-bit asymmetric weights are not written");
    for (const WeightSpec& s : weight_specs(config))
      if (fp8.applies(s) && fp8.kind != "w8a8" &&
          (s.shape[0] % (32 / fp8.bits) != 0 || s.shape[1] % (32 / fp8.bits) != 0))
        fail("--checkpoint-quantization {}: {} is {} x {}, not a multiple of {} both ways",
             fp8.kind, s.name, s.shape[0], s.shape[1], 32 / fp8.bits);
  }
  if (fp8.kind == "fp8-block") {
    if (config.fp8_block_rows == 0)
      fail("--checkpoint-quantization fp8-block needs a weight_block_size");
    fp8.block_rows = config.fp8_block_rows;
    fp8.block_cols = config.fp8_block_cols;
  }
  write_json(options.out / "config.json", config_json);
  json generation = {{"bos_token_id", config_json["bos_token_id"]},
                     {"eos_token_id", config_json["eos_token_id"]},
                     {"do_sample", false}};
  write_json(options.out / "generation_config.json", generation);

  // Group tensors into shards, then write each file streaming: header, then each tensor.
  std::vector<WeightSpec> specs = weight_specs(config);
  auto bytes_of = [&](const WeightSpec& s) {
    uint64_t n = 0;
    for (const Stored& t : stored_tensors(s, fp8, options.dtype)) {
      uint64_t b = dtype_size(t.dtype);
      for (int64_t d : t.shape) b *= static_cast<uint64_t>(d);
      n += b;
    }
    return n;
  };
  std::vector<std::vector<const WeightSpec*>> shards(1);
  uint64_t shard_bytes = 0, total = 0;
  for (const auto& s : specs) {
    uint64_t b = bytes_of(s);
    if (options.max_shard_bytes > 0 && shard_bytes > 0 &&
        shard_bytes + b > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(&s);
    shard_bytes += b;
    total += b;
  }
  json weight_map = json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string file = shards.size() == 1 ? "model.safetensors"
                                                : fmt::format("model-{:05d}-of-{:05d}.safetensors",
                                                              i + 1, shards.size());
    std::vector<SafetensorsWriter::Entry> entries;
    for (const WeightSpec* s : shards[i])
      for (const Stored& t : stored_tensors(*s, fp8, options.dtype)) {
        entries.push_back({t.name, t.dtype, t.shape});
        weight_map[t.name] = file;
      }
    SafetensorsWriter writer(options.out / file, std::move(entries), {{"format", "pt"}});
    std::vector<char> buffer;
    std::vector<std::vector<char>> parts;
    for (const WeightSpec* s : shards[i]) {
      if (fp8.applies(*s)) {
        // The same random values as the unquantized checkpoint, drawn in f32, then quantized.
        buffer.resize(static_cast<size_t>(s->shape[0] * s->shape[1]) * sizeof(float));
        fill_tensor(*s, config, options.seed, DType::kF32, buffer.data(), pool);
        if (fp8.integer())
          write_int(*s, fp8, options.dtype, reinterpret_cast<const float*>(buffer.data()), parts);
        else
          write_fp8(*s, fp8, options.dtype, reinterpret_cast<const float*>(buffer.data()), parts);
        for (const auto& p : parts) writer.append(p.data(), p.size());
        continue;
      }
      buffer.resize(bytes_of(*s));
      fill_tensor(*s, config, options.seed, options.dtype, buffer.data(), pool);
      writer.append(buffer.data(), buffer.size());
    }
    writer.finish();
  }
  if (shards.size() > 1) {
    write_json(options.out / "model.safetensors.index.json",
               {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}});
  } else {
    fs::remove(options.out / "model.safetensors.index.json");
  }
  return total;
}

}  // namespace tessera
