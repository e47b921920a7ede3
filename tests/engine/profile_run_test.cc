// The profiling step that sizes a GPU's KV cache (engine/profile_run.h), run here on the CPU
// backend, which counts its tensors the same way: its dummy steps are valid steps, its peak holds
// at least the buffers that must be alive at once, its own KV cache is freed, and the model's
// estimate (what the CPU and `tessera plan` size by) is close to what it measured.
#include "engine/profile_run.h"

#include <gtest/gtest.h>

#include <set>

#include "model/model_test_util.h"

namespace tessera {
namespace {

TEST(DummyStep, IsAValidStepOverDistinctSlots) {
  for (auto [tokens, seqs] :
       {std::pair<int64_t, int64_t>{2048, 256}, {10, 3}, {17, 1}, {5, 5}, {40, 7}}) {
    const int bs = 16;
    const StepInputs in = dummy_step(tokens, seqs, bs, 1000);
    SCOPED_TRACE(::testing::Message() << tokens << " tokens in " << seqs << " sequences");
    ASSERT_EQ(in.num_tokens(), tokens);
    ASSERT_EQ(in.num_seqs(), seqs);
    ASSERT_EQ(in.query_start.size(), static_cast<size_t>(seqs + 1));
    ASSERT_EQ(in.logit_rows.size(), static_cast<size_t>(seqs));
    ASSERT_EQ(in.block_tables.size(), static_cast<size_t>(seqs * in.max_blocks));
    std::set<int32_t> slots;
    for (int64_t s = 0; s < seqs; ++s) {
      const int32_t begin = in.query_start[s], len = in.query_start[s + 1] - begin;
      EXPECT_EQ(len, in.seq_lens[s]);
      EXPECT_LE(std::abs(len - static_cast<int32_t>(tokens / seqs)), 1);
      EXPECT_EQ(in.logit_rows[s], begin + len - 1);
      for (int32_t p = 0; p < len; ++p) {
        EXPECT_EQ(in.positions[begin + p], p);
        EXPECT_GE(in.token_ids[begin + p], 0);
        EXPECT_LT(in.token_ids[begin + p], 1000);
        const int32_t block = in.block_tables[s * in.max_blocks + p / bs];
        EXPECT_EQ(in.slot_mapping[begin + p], block * bs + p % bs);
        slots.insert(in.slot_mapping[begin + p]);
      }
    }
    EXPECT_EQ(slots.size(), static_cast<size_t>(tokens)) << "every token has a slot of its own";
  }
}

class ProfileRun : public ::testing::TestWithParam<std::string> {};

TEST_P(ProfileRun, PeakHoldsTheStepsBuffersAndTheCacheIsFreed) {
  const auto dir = testing::make_tiny(GetParam(), DType::kBF16, 3);
  ThreadPool pool(2);
  CpuBackend backend(pool);
  SingleCommunicator comm;
  ModelContext ctx{backend, comm};
  std::unique_ptr<CausalLM> model = load_model(dir, ctx);
  const ModelConfig& c = model->config();
  ProfileShape shape;
  shape.max_num_batched_tokens = 256;
  shape.max_num_seqs = 32;
  shape.max_model_len = 200;
  shape.kv_dtype = DType::kF32;

  const int64_t before = backend.allocated_bytes();
  ASSERT_GE(before, 0) << "the CPU backend counts its tensors";
  const ActivationProfile first = profile_activations(backend, *model, WorldConfig{}, shape);
  EXPECT_EQ(first.tokens, 256);
  EXPECT_EQ(first.seqs, 32);
  EXPECT_GT(first.cache_bytes, 0);
  // Alive at once at the end of the many-sequence step: the residual stream [256, hidden] and
  // the logits [32, vocab], both f32.
  const int64_t floor = 4 * (256 * c.hidden_size + 32 * c.vocab_size);
  EXPECT_GE(first.peak_bytes, floor);
  // What stays allocated is buffers the model keeps between steps (part of the peak), not the
  // profile's KV cache.
  const int64_t kept = backend.allocated_bytes() - before;
  EXPECT_GE(kept, 0);
  EXPECT_LE(kept, first.peak_bytes);

  // Again, on the model that now holds its buffers: they are alive before the steps, so the peak
  // is at most the first one, and at least the first less what stayed (less where a buffer
  // reached its size only after the first peak); nothing more stays allocated.
  const int64_t between = backend.allocated_bytes();
  const ActivationProfile second = profile_activations(backend, *model, WorldConfig{}, shape);
  EXPECT_LE(second.peak_bytes, first.peak_bytes);
  EXPECT_GE(second.peak_bytes, first.peak_bytes - kept);
  EXPECT_EQ(backend.allocated_bytes(), between);

  // The estimate that the CPU and `tessera plan` size by counts one row of logits: with the
  // other rows' logits added, it covers the measured peak (to 1%) without overstating it by
  // more than a quarter (mixtures of experts: each expert's buffers are sized for every token).
  const int64_t estimate =
      model->activation_bytes(shape.max_num_batched_tokens) + 4 * (32 - 1) * c.vocab_size;
  EXPECT_GE(estimate, 0.99 * static_cast<double>(first.peak_bytes));
  EXPECT_LE(estimate, 1.25 * static_cast<double>(first.peak_bytes));
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Archs, ProfileRun,
                         ::testing::Values("llama", "gemma2", "qwen3", "mixtral", "qwen3_moe",
                                           "deepseek_v3", "gpt2", "opt", "falcon"));

}  // namespace
}  // namespace tessera
