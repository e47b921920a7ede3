#include "model/layers/embedding.h"

#include <cstring>

#include "core/status.h"

namespace tessera {

VocabParallelEmbedding::VocabParallelEmbedding(ModelContext& ctx, WeightSource& weights,
                                               const std::string& name, int64_t vocab,
                                               int64_t hidden, float scale, bool tied)
    : ctx_(ctx), range_(split_evenly(vocab, ctx.tp_size(), ctx.tp_rank())), scale_(scale) {
  Tensor t = weights.get(name, {vocab, hidden}, Slice{0, range_.begin, range_.end});
  table_ = tied ? ctx.backend.prepare_linear_weight(std::move(t)) : ctx.backend.prepare_weight(t);
}

void VocabParallelEmbedding::forward(const Tensor& ids, const Tensor& out) const {
  ctx_.backend.embedding(table_, ids, range_.begin, scale_, out);
  if (ctx_.tp_size() > 1) ctx_.tp.all_reduce_sum(out);
}

ParallelLMHead load_lm_head(ModelContext& ctx, WeightSource& weights,
                            const VocabParallelEmbedding* embedding, bool tied,
                            const std::string& embedding_name, int64_t vocab, int64_t hidden) {
  if (tied && weights.has("lm_head.weight")) weights.ignore("lm_head.weight");
  if (tied && embedding) return ParallelLMHead(ctx, embedding->shard(), embedding->range(), vocab);
  // Untied, or tied on a last stage that does not hold the embedding: load the rows.
  const Range r = split_evenly(vocab, ctx.tp_size(), ctx.tp_rank());
  Tensor t = weights.get(tied ? embedding_name : "lm_head.weight", {vocab, hidden},
                         Slice{0, r.begin, r.end});
  return ParallelLMHead(ctx, ctx.backend.prepare_linear_weight(std::move(t)), r, vocab);
}

ParallelLMHead::ParallelLMHead(ModelContext& ctx, Tensor table, Range range, int64_t vocab)
    : ctx_(ctx), range_(range), vocab_(vocab) {
  segment_.weight = std::move(table);
  shard_cols_ = (vocab + ctx.tp_size() - 1) / ctx.tp_size();
}

void ParallelLMHead::forward(const Tensor& x, const Tensor& logits) {
  const int64_t rows = x.size(0);
  TESSERA_CHECK(logits.size(0) == rows && logits.size(1) == vocab_);
  const int tp = ctx_.tp_size();
  if (tp == 1) {
    ctx_.backend.linear(x, {&segment_, 1}, logits);
    return;
  }
  // Each rank computes [rows, shard_cols] (its range, zero padded), the gather stacks them as
  // [tp, rows, shard_cols], and the columns are put back in vocabulary order.
  Tensor local = ctx_.backend.empty({rows, shard_cols_}, DType::kF32);
  ctx_.backend.fill_zero(local);
  ctx_.backend.linear(x, {&segment_, 1}, local.slice(1, 0, range_.size()));
  Tensor gathered = ctx_.backend.empty({tp, rows, shard_cols_}, DType::kF32);
  ctx_.tp.all_gather(local, gathered);
  for (int r = 0; r < tp; ++r) {
    Range part = split_evenly(vocab_, tp, r);
    Tensor src = gathered[r].slice(1, 0, part.size());
    ctx_.backend.copy(src, logits.slice(1, part.begin, part.end));  // strided rows to rows
  }
}

}  // namespace tessera
