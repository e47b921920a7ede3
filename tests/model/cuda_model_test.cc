// Whole models on the CUDA backend against the CPU path (the oracle): the tiny model of every
// architecture, a batch of prefills and then decode steps, compared by log-probabilities and
// greedy tokens. Skips, saying why, where no GPU is usable (label `cuda`).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "engine/profile_run.h"
#include "kernels/cuda/cuda_backend.h"
#include "model/model_test_util.h"

namespace tessera {
namespace {

using testing::DirectRunner;

struct Case {
  std::string arch;
  DType dtype;
  double tol;        // max |delta log-prob|
  int head_dim = 0;  // 0: the tiny preset's (16); 64, 128, 256 take the tiled prefill kernel
};

class CudaModel : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    std::string why;
    if (cuda_device_count(&why) == 0) GTEST_SKIP() << "no usable CUDA device: " << why;
  }
};

// Relative error of two logits tensors [rows, vocab] (f32, host): ||got - want|| / ||want||.
::testing::AssertionResult close_rows(const Tensor& got, const Tensor& want, double tol) {
  if (got.numel() != want.numel()) return ::testing::AssertionFailure() << "shapes differ";
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double g = got.data<float>()[i], w = want.data<float>()[i];
    if (std::isnan(g)) return ::testing::AssertionFailure() << "NaN at " << i;
    diff += (g - w) * (g - w);
    norm += w * w;
  }
  const double rel = std::sqrt(diff / std::max(norm, 1e-30));
  if (rel > tol) return ::testing::AssertionFailure() << "relative error " << rel;
  return ::testing::AssertionSuccess();
}

TEST_P(CudaModel, LogprobsAndGreedyTokensMatchTheCpu) {
  const Case c = GetParam();
  nlohmann::json over = nlohmann::json::object();
  if (c.head_dim > 0) over["head_dim"] = c.head_dim;
  const auto dir = testing::make_tiny(c.arch, c.dtype, 11, over);
  DirectRunner cpu(dir);
  DirectRunner gpu(dir, make_cuda_backend({}));
  const int64_t vocab = cpu.config().vocab_size;

  // Four prompts prefilled together (all rows' logits), then 16 greedy decode steps taken from
  // the CPU's tokens, so both runs see the same inputs even where they would pick differently.
  std::vector<std::vector<int32_t>> seqs;
  for (int s = 0; s < 4; ++s) seqs.push_back(testing::test_ids(9 + 11 * s, vocab, 40 + s));
  double worst = 0;
  int compared = 0, agreed = 0;
  auto compare = [&](const Tensor& a, const Tensor& b) {
    ASSERT_EQ(a.size(0), b.size(0));
    for (int64_t r = 0; r < a.size(0); ++r) {
      const auto la = testing::log_softmax(a.data<float>() + r * vocab, vocab);
      const auto lb = testing::log_softmax(b.data<float>() + r * vocab, vocab);
      for (int64_t i = 0; i < vocab; ++i) worst = std::max(worst, std::abs(la[i] - lb[i]));
      // Greedy tokens must agree wherever the CPU's top two are further apart than the tolerance.
      std::vector<double> sorted = la;
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<>());
      if (sorted[0] - sorted[1] > 2 * c.tol) {
        ++compared;
        agreed += std::max_element(la.begin(), la.end()) - la.begin() ==
                  std::max_element(lb.begin(), lb.end()) - lb.begin();
      }
    }
  };
  const std::vector<DirectRunner::Chunk> prefill = testing::prefill_chunks(seqs);
  compare(gpu.run(prefill), cpu.run(prefill));
  for (int step = 0; step < 16; ++step) {
    std::vector<DirectRunner::Chunk> decode;
    for (int s = 0; s < 4; ++s) {
      const int64_t n = static_cast<int64_t>(seqs[s].size());
      decode.push_back({s, seqs[s], n - 1, n, false});
    }
    Tensor want = cpu.run(decode);
    compare(gpu.run(decode), want);
    for (int s = 0; s < 4; ++s) {
      const float* row = want.data<float>() + s * vocab;
      seqs[s].push_back(static_cast<int32_t>(std::max_element(row, row + vocab) - row));
    }
  }
  EXPECT_LE(worst, c.tol);
  EXPECT_EQ(agreed, compared);
  EXPECT_GT(compared, 0);
  RecordProperty("max_abs_delta_logprob", std::to_string(worst));
}

// f32 weights: cuBLASLt's f32 products and an f32 cache, so within the distributed equivalence
// tolerance; bf16 weights: activations rounded to bf16 for the products and a bf16 cache.
INSTANTIATE_TEST_SUITE_P(
    Architectures, CudaModel,
    ::testing::Values(Case{"llama", DType::kF32, 1e-4}, Case{"mistral", DType::kF32, 1e-4},
                      Case{"qwen2", DType::kF32, 1e-4}, Case{"qwen3", DType::kF32, 1e-4},
                      Case{"gemma2", DType::kF32, 1e-4}, Case{"llama", DType::kBF16, 2e-2},
                      Case{"gemma2", DType::kBF16, 2e-2}, Case{"gpt2", DType::kF32, 1e-4},
                      Case{"gpt2", DType::kBF16, 2e-2}, Case{"opt", DType::kF32, 1e-4},
                      Case{"falcon", DType::kF32, 1e-4}, Case{"falcon", DType::kBF16, 2e-2},
                      Case{"mixtral", DType::kF32, 1e-4}, Case{"qwen3_moe", DType::kBF16, 2e-2},
                      Case{"deepseek_v3", DType::kF32, 1e-4}, Case{"llama", DType::kBF16, 2e-2, 64},
                      Case{"qwen3", DType::kBF16, 2e-2, 128},
                      Case{"gemma2", DType::kF16, 2e-2, 128},
                      Case{"gemma2", DType::kBF16, 2e-2, 256}),
    [](const auto& info) {
      return info.param.arch + "_" + std::string(dtype_name(info.param.dtype)) +
             (info.param.head_dim > 0 ? "_d" + std::to_string(info.param.head_dim) : "");
    });

// Decode steps replayed from CUDA graphs against the same steps op by op on the GPU: the graphs
// are recorded for every size asked, and each step's logits agree (to f32 rounding: a padded
// batch may take another cuBLASLt algorithm).
TEST(CudaGraphs, ReplayedDecodeStepsMatchOpByOp) {
  std::string why;
  if (cuda_device_count(&why) == 0) GTEST_SKIP() << "no usable CUDA device: " << why;
  for (const char* arch : {"llama", "gemma2"}) {
    SCOPED_TRACE(arch);
    const auto dir = testing::make_tiny(arch, DType::kF32, 5);
    DirectRunner eager(dir, make_cuda_backend({})), graphs(dir, make_cuda_backend({}));
    const int64_t vocab = eager.config().vocab_size;
    std::vector<std::vector<int32_t>> seqs;
    for (int s = 0; s < 10; ++s) seqs.push_back(testing::test_ids(5 + 3 * s, vocab, 70 + s));
    const auto prefill = testing::prefill_chunks(seqs);
    // A full-size step first, as the engine's profiling step, so that no buffer grows later.
    eager.run(prefill);
    graphs.run(prefill);
    const std::vector<int> recorded = graphs.runner().capture_decode_steps({1, 2, 4, 8}, 512);
    EXPECT_EQ(recorded, (std::vector<int>{1, 2, 4, 8}));
    const std::vector<std::vector<int>> steps = {{0, 1, 2, 3, 4, 5, 6, 7}, {0}, {3, 1, 4},   {2, 7},
                                                 {0, 2, 4, 6, 8},          {9}, {5, 6, 7, 8}};
    for (const auto& active : steps) {
      const auto decode = testing::decode_step(seqs, active, vocab);
      Tensor want = eager.run(decode), got = graphs.run(decode);
      EXPECT_TRUE(close_rows(got, want, 1e-5)) << active.size() << " sequences";
    }
    EXPECT_EQ(graphs.runner().static_steps(), static_cast<int64_t>(steps.size()));
    std::filesystem::remove_all(dir);
  }
}

// The profiling step that sizes the GPU's KV cache: it measures at least the buffers that must be
// alive at once, frees its own cache, and holds no more than the CPU measures for the same
// steps plus the GPU's own buffers (16-bit copies of the matrix products' inputs, attention's
// partition scratch: together under the f32 activations of a step).
TEST(CudaProfileRun, PeakIsMeasuredAndTheCacheIsFreed) {
  std::string why;
  if (cuda_device_count(&why) == 0) GTEST_SKIP() << "no usable CUDA device: " << why;
  const auto dir = testing::make_tiny("llama", DType::kBF16, 3);
  ProfileShape shape;
  shape.max_num_batched_tokens = 512;
  shape.max_num_seqs = 64;
  shape.max_model_len = 1024;
  shape.kv_dtype = DType::kBF16;
  auto measure = [&](Backend& b, int64_t* kept) {
    SingleCommunicator comm;
    ModelContext ctx{b, comm};
    std::unique_ptr<CausalLM> model = load_model(dir, ctx);
    const int64_t before = b.allocated_bytes();
    const ActivationProfile p = profile_activations(b, *model, WorldConfig{}, shape);
    *kept = b.allocated_bytes() - before;
    return p;
  };
  std::unique_ptr<Backend> gpu = make_cuda_backend({});
  ThreadPool pool(2);
  CpuBackend cpu(pool);
  int64_t gpu_kept = 0, cpu_kept = 0;
  const ActivationProfile g = measure(*gpu, &gpu_kept);
  const ActivationProfile c = measure(cpu, &cpu_kept);
  EXPECT_GT(g.cache_bytes, 0);
  EXPECT_GE(g.peak_bytes, c.peak_bytes) << "the GPU runs the same buffers, and some of its own";
  EXPECT_LE(g.peak_bytes, 2 * c.peak_bytes);
  EXPECT_GE(gpu_kept, 0);
  EXPECT_LE(gpu_kept, g.peak_bytes) << "the profile's KV cache was freed";
  RecordProperty("gpu_peak_bytes", std::to_string(g.peak_bytes));
  RecordProperty("cpu_peak_bytes", std::to_string(c.peak_bytes));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tessera
