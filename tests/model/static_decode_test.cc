// Decode steps through static batches (ModelRunner::capture_decode_steps), which the CUDA backend
// records as graphs. On the CPU nothing is recorded and the padded batches run op by op: the
// padding must then change no bit of the real rows (CPU kernels are batch invariant), whatever
// the number of sequences, and steps that do not fit a static batch take the usual path.
#include <gtest/gtest.h>

#include <cstring>

#include "model/model_test_util.h"

namespace tessera {
namespace {

using testing::DirectRunner;

class StaticDecode : public ::testing::TestWithParam<std::string> {};

TEST_P(StaticDecode, PaddedStaticBatchesGiveTheSameLogits) {
  const auto dir = testing::make_tiny(GetParam(), DType::kBF16, 5);
  DirectRunner plain(dir), padded(dir);
  const std::vector<int> recorded = padded.runner().capture_decode_steps({8, 1, 4, 2, 4}, 512);
  EXPECT_TRUE(recorded.empty()) << "the CPU backend records nothing";
  const int64_t vocab = plain.config().vocab_size;

  // Ten sequences prefilled, then decode steps over different subsets of them (1 to 10: the
  // last does not fit the largest static batch, 8).
  std::vector<std::vector<int32_t>> seqs;
  for (int s = 0; s < 10; ++s) seqs.push_back(testing::test_ids(5 + 3 * s, vocab, 70 + s));
  const auto prefill = testing::prefill_chunks(seqs);
  Tensor a = plain.run(prefill), b = padded.run(prefill);
  ASSERT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
  EXPECT_EQ(padded.runner().static_steps(), 0) << "a prefill is not a decode step";
  const std::vector<std::vector<int>> steps = {
      {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {0}, {3, 1, 4}, {2, 7}, {0, 2, 4, 6, 8}, {9}, {5, 6, 7, 8}};
  int64_t fitting = 0;
  for (const auto& active : steps) {
    const auto decode = testing::decode_step(seqs, active, vocab);
    fitting += active.size() <= 8;
    Tensor want = plain.run(decode), got = padded.run(decode);
    ASSERT_EQ(got.size(0), static_cast<int64_t>(active.size()));
    EXPECT_EQ(std::memcmp(want.raw(), got.raw(), want.nbytes()), 0)
        << active.size() << " sequences";
  }
  EXPECT_EQ(padded.runner().static_steps(), fitting);
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Archs, StaticDecode,
                         ::testing::Values("llama", "gemma2", "qwen3", "mistral"));

}  // namespace
}  // namespace tessera
