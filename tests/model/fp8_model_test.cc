// --quantization fp8 on whole models: the tiny model of every architecture run with FP8 layer
// weights gives the logits of the same model whose layer weights were replaced, in the
// checkpoint, by their dequantized FP8 values (stored as f32 and run unquantized). That pins the
// quantization (per output row, round to nearest even) and the FP8 kernels to their definition;
// it also checks which weights are quantized: the embedding and LM head are not.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <regex>

#include "loader/safetensors.h"
#include "model/model_test_util.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;
using testing::DirectRunner;

// A decoder layer's Linear weight: what --quantization fp8 quantizes.
bool is_layer_linear(const std::string& name) {
  static const std::regex re(R"(\.layers\.\d+\.(.*_proj|fc\d)\.weight$)");
  // Falcon's names.
  static const std::regex falcon(
      R"(\bh\.\d+\.(self_attention\.(query_key_value|dense)|mlp\.dense_\w+)\.weight$)");
  // Mixtral's experts (w1, w2, w3); Qwen3-MoE's match the first pattern.
  static const std::regex experts(R"(\.layers\.\d+\.block_sparse_moe\.experts\.\d+\.w\d\.weight$)");
  // DeepSeek-V3: kv_a_proj_with_mqa is quantized; kv_b_proj is not (it is split per head and
  // transposed for the absorbed attention, and kept 16-bit as vLLM's MLA keeps it).
  static const std::regex mla_kv_a(R"(\.self_attn\.kv_a_proj_with_mqa\.weight$)");
  if (name.find(".kv_b_proj.") != std::string::npos) return false;
  return std::regex_search(name, re) || std::regex_search(name, falcon) ||
         std::regex_search(name, experts) || std::regex_search(name, mla_kv_a);
}

// GPT-2's Conv1D weights, stored [in, out]: an output row is a stored column.
bool is_conv1d(const std::string& name) {
  static const std::regex re(R"(\bh\.\d+\.(attn|mlp)\.c_\w+\.weight$)");
  return std::regex_search(name, re);
}

// Every tensor as f32; layer Linear weights replaced by scale[j] * e4m3(w[j][i] / scale[j]),
// scale[j] = max_i |w[j][i]| / 448.
fs::path dequantized_copy(const fs::path& dir, int* quantized) {
  const fs::path out = testing::temp_dir("fp8_reference");
  nlohmann::json config = nlohmann::json::parse(std::ifstream(dir / "config.json"));
  config["torch_dtype"] = "float32";
  std::ofstream(out / "config.json") << config.dump(2);
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".safetensors") {
      if (entry.path().filename() != "config.json")
        fs::copy(entry.path(), out / entry.path().filename());
      continue;
    }
    auto file = SafetensorsFile::open(entry.path());
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const auto& [name, info] : file->tensors()) {
      Tensor t = file->tensor(name).to(DType::kF32);
      const bool conv1d = is_conv1d(name);
      if ((is_layer_linear(name) || conv1d) && t.dim() == 2) {
        ++*quantized;
        float* w = t.data<float>();
        // Element i of output row j sits at w[j * row_step + i * col_step].
        const int64_t n = conv1d ? t.size(1) : t.size(0), k = conv1d ? t.size(0) : t.size(1);
        const int64_t row_step = conv1d ? 1 : k, col_step = conv1d ? n : 1;
        for (int64_t j = 0; j < n; ++j) {
          float amax = 0;
          for (int64_t i = 0; i < k; ++i)
            amax = std::max(amax, std::fabs(w[j * row_step + i * col_step]));
          const float scale = amax > 0 ? amax / kFp8E4M3Max : 1.0f;
          for (int64_t i = 0; i < k; ++i) {
            float& x = w[j * row_step + i * col_step];
            x = scale * fp8_e4m3_to_f32(f32_to_fp8_e4m3(x / scale));
          }
        }
      }
      tensors.emplace_back(name, t);
    }
    write_safetensors(out / entry.path().filename(), tensors);
  }
  return out;
}

class Fp8Model : public ::testing::TestWithParam<std::pair<std::string, DType>> {};

TEST_P(Fp8Model, LogitsAreThoseOfTheDequantizedCheckpoint) {
  const auto [arch, dtype] = GetParam();
  const fs::path dir = testing::make_tiny(arch, dtype, 21);
  int quantized = 0;
  const fs::path ref_dir = dequantized_copy(dir, &quantized);
  ASSERT_GT(quantized, 0);

  ThreadPool pool(2);  // outlives the runner that uses it
  DirectRunner fp8(
      dir, std::make_unique<CpuBackend>(pool, cpu::detect_isa(), MatmulPrecision::kExact, true));
  DirectRunner ref(ref_dir);
  const int64_t vocab = ref.config().vocab_size;

  // Two prompts prefilled together (every row's logits), then decode steps on both.
  std::vector<std::vector<int32_t>> seqs = {testing::test_ids(23, vocab, 5),
                                            testing::test_ids(14, vocab, 6)};
  double worst = 0, spread = 0;
  auto compare = [&](const Tensor& a, const Tensor& b) {
    ASSERT_EQ(a.size(0), b.size(0));
    for (int64_t r = 0; r < a.size(0); ++r) {
      const auto la = testing::log_softmax(a.data<float>() + r * vocab, vocab);
      const auto lb = testing::log_softmax(b.data<float>() + r * vocab, vocab);
      for (int64_t i = 0; i < vocab; ++i) {
        worst = std::max(worst, std::abs(la[i] - lb[i]));
        spread = std::max(spread, std::abs(lb[i] - lb[0]));
      }
    }
  };
  const std::vector<DirectRunner::Chunk> prefill = testing::prefill_chunks(seqs);
  compare(fp8.run(prefill), ref.run(prefill));
  for (int step = 0; step < 6; ++step) {
    std::vector<DirectRunner::Chunk> decode;
    for (int s = 0; s < 2; ++s) {
      seqs[s].push_back(testing::test_ids(1, vocab, 100 + step * 2 + s)[0]);
      const int64_t len = static_cast<int64_t>(seqs[s].size());
      decode.push_back({s, seqs[s], len - 1, len, false});
    }
    compare(fp8.run(decode), ref.run(decode));
  }
  EXPECT_GT(spread, 0.1) << "the logits say nothing";
  EXPECT_LE(worst, 1e-4) << arch;
}

// And the quantization changes the model: FP8 logits are not the original checkpoint's.
TEST(Fp8ModelChange, DiffersFromTheUnquantizedModel) {
  const fs::path dir = testing::make_tiny("llama", DType::kBF16, 22);
  ThreadPool pool(2);
  DirectRunner fp8(
      dir, std::make_unique<CpuBackend>(pool, cpu::detect_isa(), MatmulPrecision::kExact, true));
  DirectRunner plain(dir);
  const int64_t vocab = plain.config().vocab_size;
  const std::vector<int32_t> ids = testing::test_ids(17, vocab, 9);
  const Tensor a = fp8.run({{0, ids, 0, 17, false}}), b = plain.run({{0, ids, 0, 17, false}});
  double diff = 0;
  for (int64_t i = 0; i < vocab; ++i)
    diff = std::max(diff, static_cast<double>(std::abs(a.data<float>()[i] - b.data<float>()[i])));
  EXPECT_GT(diff, 1e-4);
  EXPECT_LT(diff, 1.0);  // FP8 E4M3 keeps ~2 significant digits per weight
}

INSTANTIATE_TEST_SUITE_P(
    Arch, Fp8Model,
    ::testing::Values(std::make_pair("llama", DType::kBF16), std::make_pair("mistral", DType::kF32),
                      std::make_pair("qwen2", DType::kBF16), std::make_pair("qwen3", DType::kF16),
                      std::make_pair("gemma2", DType::kBF16), std::make_pair("gpt2", DType::kF32),
                      std::make_pair("opt", DType::kBF16), std::make_pair("falcon", DType::kBF16),
                      std::make_pair("mixtral", DType::kBF16),
                      std::make_pair("qwen3_moe", DType::kBF16),
                      std::make_pair("qwen2_moe", DType::kBF16),
                      std::make_pair("deepseek_v3", DType::kBF16)),
    testing::ArchDtypeName());

}  // namespace
}  // namespace tessera
