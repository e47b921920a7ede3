// A row's logits do not depend on the batch around it: the same rows computed in batches of 1,
// 7 and 64 (prefill chunks and decode steps) give bitwise-identical logits.
#include <gtest/gtest.h>

#include <cstring>

#include "model/model_test_util.h"

namespace tessera {
namespace {

using testing::DirectRunner;

class BatchInvariance : public ::testing::TestWithParam<std::pair<std::string, DType>> {};

TEST_P(BatchInvariance, RowsMatchAcrossBatchSizes) {
  const auto [arch, dtype] = GetParam();
  const auto dir = testing::make_tiny(arch, dtype, 3);
  constexpr int kSeqs = 64;
  std::vector<std::vector<int32_t>> seqs;
  for (int s = 0; s < kSeqs; ++s)
    seqs.push_back(testing::test_ids(5 + (s * 13) % 40, 4096, 200 + s));

  // Logits of each sequence's prefill (all rows) and of one decode step after it.
  auto run = [&](int batch) {
    DirectRunner runner(dir, std::nullopt, 2, 64 * 32);
    const int64_t vocab = runner.config().vocab_size;
    std::vector<std::vector<float>> out(kSeqs);
    for (int first = 0; first < kSeqs; first += batch) {
      const int last = std::min(kSeqs, first + batch);
      std::vector<DirectRunner::Chunk> prefill, decode;
      for (int s = first; s < last; ++s)
        prefill.push_back({s, seqs[s], 0, static_cast<int64_t>(seqs[s].size()), true});
      Tensor p = runner.run(prefill);
      for (int s = first; s < last; ++s) {
        auto extended = seqs[s];
        extended.push_back(7);
        const int64_t n = static_cast<int64_t>(extended.size());
        decode.push_back({s, extended, n - 1, n, false});
      }
      Tensor d = runner.run(decode);
      int64_t row = 0;
      for (int s = first; s < last; ++s) {
        for (size_t r = 0; r < seqs[s].size(); ++r, ++row)
          out[s].insert(out[s].end(), p.data<float>() + row * vocab,
                        p.data<float>() + (row + 1) * vocab);
        const float* dr = d.data<float>() + (s - first) * vocab;
        out[s].insert(out[s].end(), dr, dr + vocab);
      }
    }
    return out;
  };
  const auto one = run(1), seven = run(7), all = run(64);
  for (int s = 0; s < kSeqs; ++s) {
    ASSERT_EQ(one[s].size(), all[s].size());
    EXPECT_EQ(0, std::memcmp(one[s].data(), seven[s].data(), one[s].size() * sizeof(float)))
        << "sequence " << s << ": 1 vs 7";
    EXPECT_EQ(0, std::memcmp(one[s].data(), all[s].data(), one[s].size() * sizeof(float)))
        << "sequence " << s << ": 1 vs 64";
  }
  std::filesystem::remove_all(dir);
}

// --load-format mmap (weights packed from the mapping, whose pages are then dropped) and the
// default read give bitwise the same logits, tied embeddings included (gemma2 ties them).
TEST_P(BatchInvariance, MmapLoadGivesTheSameLogits) {
  const auto [arch, dtype] = GetParam();
  const auto dir = testing::make_tiny(arch, dtype, 5);
  const auto ids = testing::test_ids(40, 4096, 9);
  auto logits = [&](LoadFormat format) {
    DirectRunner runner(dir, std::nullopt, 2, 64, cpu::detect_isa(), MatmulPrecision::kExact,
                        format);
    Tensor t = runner.run({{0, ids, 0, static_cast<int64_t>(ids.size()), true}});
    return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
  };
  const auto read = logits(LoadFormat::kAuto), mapped = logits(LoadFormat::kMmap);
  ASSERT_EQ(read.size(), mapped.size());
  EXPECT_EQ(0, std::memcmp(read.data(), mapped.data(), read.size() * sizeof(float)));
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(
    Arch, BatchInvariance,
    ::testing::Values(std::make_pair("llama", DType::kBF16), std::make_pair("llama", DType::kF32),
                      std::make_pair("mistral", DType::kBF16),
                      std::make_pair("qwen2", DType::kBF16), std::make_pair("qwen3", DType::kF16),
                      std::make_pair("gemma2", DType::kBF16), std::make_pair("gpt2", DType::kBF16),
                      std::make_pair("opt", DType::kF16), std::make_pair("falcon", DType::kBF16),
                      std::make_pair("mixtral", DType::kBF16),
                      std::make_pair("qwen3_moe", DType::kF32),
                      std::make_pair("qwen2_moe", DType::kBF16),
                      std::make_pair("deepseek_v3", DType::kBF16)),
    testing::ArchDtypeName());

}  // namespace
}  // namespace tessera
