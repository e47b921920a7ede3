// Rank arithmetic and the pipeline split, against vLLM's rules written out by hand.
#include <gtest/gtest.h>

#include "distributed/world_config.h"
#include "engine/model_runner.h"

namespace tessera {
namespace {

std::vector<int64_t> sizes(int64_t layers, int pp, const std::string& partition = "") {
  std::vector<int64_t> v;
  int64_t next = 0;
  for (int s = 0; s < pp; ++s) {
    Range r = pipeline_layers(layers, pp, s, partition);
    EXPECT_EQ(r.begin, next);  // contiguous
    next = r.end;
    v.push_back(r.size());
  }
  EXPECT_EQ(next, layers);
  return v;
}

TEST(PipelineLayers, VllmSplitGivesTheRemainderToStagesBeforeTheLast) {
  EXPECT_EQ(sizes(4, 2), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(sizes(3, 2), (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(sizes(4, 3), (std::vector<int64_t>{1, 2, 1}));
  EXPECT_EQ(sizes(5, 3), (std::vector<int64_t>{2, 2, 1}));
  EXPECT_EQ(sizes(10, 4), (std::vector<int64_t>{2, 3, 3, 2}));
  EXPECT_EQ(sizes(32, 3), (std::vector<int64_t>{11, 11, 10}));
  EXPECT_EQ(sizes(7, 7), (std::vector<int64_t>{1, 1, 1, 1, 1, 1, 1}));
}

TEST(PipelineLayers, PartitionOverridesAndIsChecked) {
  EXPECT_EQ(sizes(6, 3, "1,2,3"), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_THROW(pipeline_layers(6, 3, 0, "1,2"), Error);
  EXPECT_THROW(pipeline_layers(6, 3, 0, "1,2,2"), Error);
  EXPECT_THROW(pipeline_layers(6, 3, 0, "1,x,4"), Error);
  EXPECT_THROW(pipeline_layers(6, 3, 0, "0,2,4"), Error);
  EXPECT_THROW(pipeline_layers(3, 4, 0), Error);
}

TEST(WorldConfig, TensorParallelRanksAreConsecutive) {
  WorldConfig w = WorldConfig::make(6, 5, 2, 3);
  EXPECT_EQ(w.tp_rank(), 1);
  EXPECT_EQ(w.pp_rank(), 2);
  EXPECT_TRUE(w.is_last_stage());
  EXPECT_EQ(w.rank_of(1, 0), 2);
  EXPECT_THROW(WorldConfig::make(4, 0, 2, 3), Error);
}

// Micro-batches cover the step's sequences exactly once, in order, with their logit rows.
TEST(MicroBatches, SplitSequencesAndLogitRows) {
  StepInputs in;
  // Three sequences of 3, 1 and 2 new tokens.
  in.token_ids = {10, 11, 12, 20, 30, 31};
  in.positions = {0, 1, 2, 7, 4, 5};
  in.slot_mapping = {0, 1, 2, 23, 36, 37};
  in.query_start = {0, 3, 4, 6};
  in.seq_lens = {3, 8, 6};
  in.max_blocks = 2;
  in.block_tables = {0, 0, 1, 0, 2, 3};
  in.logit_rows = {0, 1, 2, 3, 5};  // prompt rows of seq 0, then samples of seqs 0, 1, 2
  MicroBatches mb = split_micro_batches(in, 2);
  ASSERT_EQ(mb.parts.size(), 2u);
  EXPECT_EQ(mb.parts[0].token_ids, (std::vector<int32_t>{10, 11, 12, 20}));
  EXPECT_EQ(mb.parts[0].query_start, (std::vector<int32_t>{0, 3, 4}));
  EXPECT_EQ(mb.parts[0].block_tables, (std::vector<int32_t>{0, 0, 1, 0}));
  EXPECT_EQ(mb.parts[0].logit_rows, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(mb.logit_index[0], (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(mb.parts[1].token_ids, (std::vector<int32_t>{30, 31}));
  EXPECT_EQ(mb.parts[1].positions, (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(mb.parts[1].slot_mapping, (std::vector<int32_t>{36, 37}));
  EXPECT_EQ(mb.parts[1].query_start, (std::vector<int32_t>{0, 2}));
  EXPECT_EQ(mb.parts[1].seq_lens, (std::vector<int32_t>{6}));
  EXPECT_EQ(mb.parts[1].block_tables, (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(mb.parts[1].logit_rows, (std::vector<int32_t>{1}));
  EXPECT_EQ(mb.logit_index[1], (std::vector<int32_t>{4}));
  // Fewer sequences than stages: one micro-batch per sequence.
  EXPECT_EQ(split_micro_batches(in, 8).parts.size(), 3u);
}

}  // namespace
}  // namespace tessera
