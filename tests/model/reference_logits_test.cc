// Logits of every architecture (GPT-2, OPT and Falcon included) against an independent float64
// numpy forward pass (tests/reference/reference.py): 48 prompt positions computed in one prefill,
// then 32 greedy decode steps, on tiny random-weight models in f32 (|delta logprob| <= 1e-4) and
// bf16/f16 (5e-3), with the default (exact) matmul precision. FP8 checkpoints too: the reference
// dequantizes their weights with its own E4M3 decoder.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "model/model_test_util.h"

namespace tessera {
namespace {

using testing::DirectRunner;

bool have_numpy() {
  static const bool ok = std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
  return ok;
}

const char* kv_name(DType dtype) {
  return dtype == DType::kBF16 ? "bf16" : dtype == DType::kF16 ? "f16" : "f32";
}

// Reference log-probs [ids.size(), vocab], with K and V rounded to the KV cache dtype.
std::vector<float> reference_logprobs(const std::filesystem::path& dir,
                                      const std::vector<int32_t>& ids, int64_t vocab,
                                      DType kv_dtype) {
  std::string csv;
  for (size_t i = 0; i < ids.size(); ++i) csv += (i ? "," : "") + std::to_string(ids[i]);
  const std::filesystem::path out = dir / "reference.f32";
  const std::string cmd = "/usr/bin/python3 " TESSERA_SOURCE_DIR "/tests/reference/reference.py " +
                          dir.string() + " " + csv + " " + out.string() + " " + kv_name(kv_dtype);
  EXPECT_EQ(0, std::system(cmd.c_str())) << cmd;
  std::vector<float> values(ids.size() * vocab);
  std::ifstream in(out, std::ios::binary);
  in.read(reinterpret_cast<char*>(values.data()), static_cast<std::streamsize>(values.size() * 4));
  EXPECT_TRUE(in.good()) << "short reference output";
  return values;
}

struct Case {
  std::string name, arch;
  DType dtype;
  nlohmann::json override = nlohmann::json::object();
  uint64_t shard_bytes = 0;
  std::optional<DType> kv_dtype;        // default: the backend's (f32 on CPU)
  double tolerance = 0;                 // default: 1e-4 for f32 weights, 5e-3 otherwise
  std::string checkpoint_quantization;  // make-model --checkpoint-quantization
};

class ReferenceLogitsTest : public ::testing::TestWithParam<Case> {};

TEST_P(ReferenceLogitsTest, PrefillAndGreedyDecodeMatchReference) {
  if (!have_numpy())
    GTEST_SKIP() << "Debian python3-numpy is not installed (scripts/setup.sh installs it)";
  const Case& c = GetParam();
  const auto dir =
      testing::make_tiny(c.arch, c.dtype, 11, c.override, c.shard_bytes, c.checkpoint_quantization);
  DirectRunner runner(dir, c.kv_dtype);
  const int64_t vocab = runner.config().vocab_size;
  const double tol = c.tolerance > 0 ? c.tolerance : c.dtype == DType::kF32 ? 1e-4 : 5e-3;
  constexpr int kPrompt = 48, kSteps = 32;

  std::vector<int32_t> tokens = testing::test_ids(kPrompt, vocab, 3);
  std::vector<std::vector<double>> ours;
  Tensor prefill = runner.run({{0, tokens, 0, kPrompt, true}});
  for (int r = 0; r < kPrompt; ++r)
    ours.push_back(testing::log_softmax(prefill.data<float>() + r * vocab, vocab));
  for (int s = 0; s < kSteps; ++s) {
    const auto& last = ours.back();
    tokens.push_back(
        static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin()));
    if (s == kSteps - 1) break;
    const int64_t n = static_cast<int64_t>(tokens.size());
    Tensor step = runner.run({{0, tokens, n - 1, n, false}});
    ours.push_back(testing::log_softmax(step.data<float>(), vocab));
  }
  // Positions 0..78 predict tokens 1..79: 48 prefill rows and 31 decode rows (the last greedy
  // token, number 32, is checked from row 78).
  const std::vector<int32_t> inputs(tokens.begin(), tokens.end() - 1);
  // The reference stores K and V in the KV cache's dtype too and computes the rest in float64.
  const std::vector<float> ref = reference_logprobs(dir, inputs, vocab, runner.kv_dtype());
  double worst = 0;
  for (size_t pos = 0; pos < ours.size(); ++pos) {
    const float* r = ref.data() + pos * vocab;
    for (int64_t v = 0; v < vocab; ++v) worst = std::max(worst, std::abs(ours[pos][v] - r[v]));
    if (pos + 1 >= kPrompt) {
      // Our greedy choice must be the reference's best, up to the tolerance (near-ties).
      const int32_t chosen = tokens[pos + 1];
      const float best = *std::max_element(r, r + vocab);
      EXPECT_GE(r[chosen], best - tol) << "position " << pos << ": token " << chosen;
    }
  }
  EXPECT_LE(worst, tol) << c.name;
  RecordProperty("max_abs_logprob_diff", std::to_string(worst));
  std::printf("[ %s ] max |delta logprob| = %.3g over %zu positions x %lld tokens\n",
              c.name.c_str(), worst, ours.size(), static_cast<long long>(vocab));
  std::filesystem::remove_all(dir);
}

const Case kCases[] = {
    {"llama_f32", "llama", DType::kF32},
    {"llama_bf16", "llama", DType::kBF16},
    {"llama_tied_wide_heads_f32",
     "llama",
     DType::kF32,
     {{"tie_word_embeddings", true}, {"head_dim", 24}, {"num_key_value_heads", 1}}},
    {"llama_sharded_bf16", "llama", DType::kBF16, nlohmann::json::object(), 200000},
    {"mistral_f32", "mistral", DType::kF32},
    {"mistral_bf16", "mistral", DType::kBF16},
    {"qwen2_f32", "qwen2", DType::kF32},
    {"qwen2_bf16", "qwen2", DType::kBF16},
    {"qwen3_f32", "qwen3", DType::kF32},
    {"qwen3_bf16", "qwen3", DType::kBF16},
    {"gemma2_f32", "gemma2", DType::kF32},
    {"gemma2_bf16", "gemma2", DType::kBF16},
    {"llama_yarn_f32",
     "llama",
     DType::kF32,
     {{"rope_scaling",
       {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 32}}}}},
    {"llama_linear_rope_f16",
     "llama",
     DType::kF16,
     {{"rope_scaling", {{"rope_type", "linear"}, {"factor", 2.0}}}}},
    // A 16-bit KV cache: the reference rounds K and V the same way, but values within f32
    // noise of a rounding boundary round apart, so the bound is looser (measured: <= 1e-2).
    {"llama_bf16_kv_bf16", "llama", DType::kBF16, nlohmann::json::object(), 0, DType::kBF16, 2e-2},
    {"gemma2_bf16_kv_bf16", "gemma2", DType::kBF16, nlohmann::json::object(), 0, DType::kBF16,
     2e-2},
    {"qwen2_f16_kv_f16", "qwen2", DType::kF16, nlohmann::json::object(), 0, DType::kF16, 5e-3},
    {"gpt2_f32", "gpt2", DType::kF32},
    {"gpt2_bf16", "gpt2", DType::kBF16},
    {"gpt2_sharded_f16", "gpt2", DType::kF16, nlohmann::json::object(), 300000},
    // GPT2Config's other switches: exact GELU or ReLU, scores also scaled by 1 / (layer + 1),
    // an untied head.
    {"gpt2_gelu_inverse_layer_f32",
     "gpt2",
     DType::kF32,
     {{"activation_function", "gelu"}, {"scale_attn_by_inverse_layer_idx", true}}},
    {"gpt2_relu_untied_f32",
     "gpt2",
     DType::kF32,
     {{"activation_function", "relu"}, {"tie_word_embeddings", false}}},
    {"opt_f32", "opt", DType::kF32},
    {"opt_f16", "opt", DType::kF16},
    // OPT-350m's post-norm blocks (no final LayerNorm), untied.
    {"opt_post_norm_untied_f32",
     "opt",
     DType::kF32,
     {{"do_layer_norm_before", false}, {"tie_word_embeddings", false}}},
    // Sparse experts: Mixtral (renormalised top-2 of 4, with a sliding window in one case) and
    // Qwen3-MoE (top-3 of 8 with and without renormalisation).
    {"mixtral_f32", "mixtral", DType::kF32},
    {"mixtral_sliding_bf16", "mixtral", DType::kBF16, {{"sliding_window", 32}}},
    {"qwen3_moe_f32", "qwen3_moe", DType::kF32},
    {"qwen3_moe_unnormalised_f16", "qwen3_moe", DType::kF16, {{"norm_topk_prob", false}}},
    // Qwen2-MoE: q/k/v biases and a shared expert behind a sigmoid gate.
    {"qwen2_moe_f32", "qwen2_moe", DType::kF32},
    {"qwen2_moe_renormalised_bf16", "qwen2_moe", DType::kBF16, {{"norm_topk_prob", true}}},
    // DeepSeek-V3: latent attention (absorbed here, expanded in the reference), yarn, a dense
    // first layer, grouped sigmoid routing with a shared expert; and without the q low rank.
    {"deepseek_v3_f32", "deepseek_v3", DType::kF32},
    {"deepseek_v3_bf16", "deepseek_v3", DType::kBF16},
    {"deepseek_v3_no_q_lora_f32",
     "deepseek_v3",
     DType::kF32,
     {{"q_lora_rank", nullptr}, {"rope_scaling", nullptr}, {"first_k_dense_replace", 0}}},
    // OPT-350m's whole layout: post-norm, and tied embeddings of word_embed_proj_dim values
    // with project_in / project_out.
    {"opt_350m_layout_f32",
     "opt",
     DType::kF32,
     {{"do_layer_norm_before", false}, {"word_embed_proj_dim", 40}}},
    // Falcon-7B's layout (one multi-query key/value head, parallel attention and MLP from one
    // LayerNorm); the new decoder (40B/180B: grouped query_key_value, ln_attn and ln_mlp);
    // Falcon2-11B's one norm in the new decoder; sequential blocks with biases, untied.
    {"falcon_f32", "falcon", DType::kF32},
    {"falcon_bf16", "falcon", DType::kBF16},
    {"falcon_new_decoder_f32",
     "falcon",
     DType::kF32,
     {{"new_decoder_architecture", true}, {"num_kv_heads", 2}}},
    {"falcon_new_decoder_one_norm_f16",
     "falcon",
     DType::kF16,
     {{"new_decoder_architecture", true},
      {"num_kv_heads", 4},
      {"num_ln_in_parallel_attn", 1},
      {"rope_theta", 500000.0}}},
    {"falcon_sequential_bias_untied_f32",
     "falcon",
     DType::kF32,
     {{"parallel_attn", false},
      {"multi_query", false},
      {"bias", true},
      {"tie_word_embeddings", false},
      {"activation", "gelu_new"}}},
    // FP8 checkpoints. A scale per tensor (quant_method fp8, static input scales read past) or per
    // row (compressed-tensors): the codes run as stored on the FP8 kernels. Blocks (DeepSeek-V3's
    // weight_block_size, 32 x 32 here to make several per weight): dequantized at load, f32
    // models exactly, bf16 ones rounded once.
    {"llama_fp8_tensor_f32", "llama", DType::kF32, nlohmann::json::object(), 0, {}, 0, "fp8"},
    {"qwen2_fp8_channel_f32",
     "qwen2",
     DType::kF32,
     nlohmann::json::object(),
     0,
     {},
     0,
     "fp8-channel"},
    {"mistral_fp8_channel_bf16",
     "mistral",
     DType::kBF16,
     nlohmann::json::object(),
     0,
     {},
     0,
     "fp8-channel"},
    {"llama_fp8_sharded_block_f32",
     "llama",
     DType::kF32,
     {{"quantization_config", {{"weight_block_size", {32, 32}}}}},
     200000,
     {},
     0,
     "fp8-block"},
    {"deepseek_v3_fp8_block_f32",
     "deepseek_v3",
     DType::kF32,
     {{"quantization_config", {{"weight_block_size", {32, 32}}}}},
     0,
     {},
     0,
     "fp8-block"},
    {"deepseek_v3_fp8_block_bf16",
     "deepseek_v3",
     DType::kBF16,
     {{"quantization_config", {{"weight_block_size", {32, 32}}}}},
     0,
     {},
     0,
     "fp8-block"},
    // Falcon's fused query_key_value from FP8 parts (merged as codes and scales).
    {"falcon_fp8_block_bf16",
     "falcon",
     DType::kBF16,
     {{"quantization_config", {{"weight_block_size", {32, 32}}}}},
     0,
     {},
     0,
     "fp8-block"},
    {"mixtral_fp8_channel_f32",
     "mixtral",
     DType::kF32,
     nlohmann::json::object(),
     0,
     {},
     0,
     "fp8-channel"},
    // Integer checkpoints (the reference unpacks the words and applies the zeros and scales
    // itself). 4-bit ones with contiguous groups run as E4M3 codes of q - zero on the FP8
    // kernels (exact); act order and 8 bits are dequantized at load.
    {"llama_gptq_g32_f32",
     "llama",
     DType::kF32,
     {{"quantization_config", {{"group_size", 32}}}},
     0,
     {},
     0,
     "gptq"},
    {"qwen2_gptq_asym_act_order_f32",
     "qwen2",
     DType::kF32,
     {{"quantization_config", {{"group_size", 16}, {"sym", false}, {"desc_act", true}}}},
     0,
     {},
     0,
     "gptq"},
    {"mistral_gptq_8bit_v2_per_row_f16",
     "mistral",
     DType::kF16,
     {{"quantization_config",
       {{"bits", 8}, {"group_size", -1}, {"sym", false}, {"checkpoint_format", "gptq_v2"}}}},
     0,
     {},
     0,
     "gptq"},
    {"falcon_gptq_g48_f32",
     "falcon",
     DType::kF32,
     {{"quantization_config", {{"group_size", 48}}}},
     0,
     {},
     0,
     "gptq"},
    {"llama_awq_g32_f32",
     "llama",
     DType::kF32,
     {{"quantization_config", {{"group_size", 32}}}},
     0,
     {},
     0,
     "awq"},
    {"mixtral_awq_g16_f16",
     "mixtral",
     DType::kF16,
     {{"quantization_config", {{"group_size", 16}}}},
     0,
     {},
     0,
     "awq"},
    {"qwen3_w4a16_g32_f32",
     "qwen3",
     DType::kF32,
     {{"quantization_config",
       {{"config_groups", {{"group_0", {{"weights", {{"group_size", 32}}}}}}}}}},
     0,
     {},
     0,
     "w4a16"},
    {"deepseek_v3_w4a16_asym_g16_f32",
     "deepseek_v3",
     DType::kF32,
     {{"quantization_config",
       {{"config_groups",
         {{"group_0", {{"weights", {{"group_size", 16}, {"symmetric", false}}}}}}}}}},
     0,
     {},
     0,
     "w4a16"},
    {"gemma2_w4a16_channel_bf16",
     "gemma2",
     DType::kBF16,
     {{"quantization_config",
       {{"config_groups",
         {{"group_0", {{"weights", {{"strategy", "channel"}, {"group_size", nullptr}}}}}}}}}},
     0,
     {},
     0,
     "w4a16"},
    {"llama_w8a8_f32", "llama", DType::kF32, nlohmann::json::object(), 0, {}, 0, "w8a8"},
};

INSTANTIATE_TEST_SUITE_P(Arch, ReferenceLogitsTest, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace tessera
