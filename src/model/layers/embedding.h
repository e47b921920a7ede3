// Vocabulary-parallel embedding and LM head: each rank holds a contiguous range of vocabulary
// rows. The embedding all-reduces (rows outside a rank's range contribute zeros); the LM head
// all-gathers each rank's logits into the full vocabulary.
#pragma once

#include <string>

#include "distributed/world_config.h"
#include "loader/weight_source.h"
#include "model/layers/context.h"

namespace tessera {

class VocabParallelEmbedding {
 public:
  // `tied`: the table is also the LM head's weight, so it is prepared as a linear weight (the
  // backend's embedding op reads that layout too) and shared rather than held twice.
  VocabParallelEmbedding(ModelContext& ctx, WeightSource& weights, const std::string& name,
                         int64_t vocab, int64_t hidden, float scale, bool tied = false);
  // ids [T] int32 -> out [T, hidden]
  void forward(const Tensor& ids, const Tensor& out) const;
  const Tensor& shard() const { return table_; }
  Range range() const { return range_; }

 private:
  ModelContext& ctx_;
  Tensor table_;  // [range.size(), hidden]
  Range range_;
  float scale_;
};

class ParallelLMHead {
 public:
  // `table` is this rank's [range.size(), hidden] shard (lm_head.weight, or the tied embedding).
  ParallelLMHead(ModelContext& ctx, Tensor table, Range range, int64_t vocab);
  // x [R, hidden] -> logits [R, vocab]
  void forward(const Tensor& x, const Tensor& logits);

 private:
  ModelContext& ctx_;
  LinearSegment segment_;
  Range range_;
  int64_t vocab_;
  int64_t shard_cols_;  // the widest rank's share: the all-gather needs equal parts
};

// The last stage's LM head: the tied embedding's shard where this rank holds it, else this
// rank's rows of "lm_head.weight" (or, tied, of `embedding_name`) read from the checkpoint.
// Marks a redundant lm_head.weight of a tied checkpoint as used.
ParallelLMHead load_lm_head(ModelContext& ctx, WeightSource& weights,
                            const VocabParallelEmbedding* embedding, bool tied,
                            const std::string& embedding_name, int64_t vocab, int64_t hidden);

}  // namespace tessera
