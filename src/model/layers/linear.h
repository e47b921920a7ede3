// Megatron-style parallel linear layers. Tensor parallelism lives here and in the embedding
// layers: models describe full (unsharded) weights and these layers take this rank's share.
#pragma once

#include <string>
#include <vector>

#include "distributed/world_config.h"
#include "loader/weight_source.h"
#include "model/layers/context.h"

namespace tessera {

// One checkpoint weight [rows, in_features] of a column-parallel layer and the rows of it this
// rank holds (several parts make a fused layer such as q/k/v or gate/up).
struct ColumnPart {
  std::string name;  // checkpoint name without the ".weight" suffix
  int64_t rows = 0;  // full output rows of the checkpoint weight
  int64_t row_begin = 0, row_end = 0;
  bool bias = false;  // "<name>.bias" exists
  // GPT-2's Conv1D: the weight is stored [in_features, rows] and transposed at load (each rank
  // reads the whole stored rows and keeps its columns).
  bool transposed = false;
};

// out = x @ [W_0; W_1; ...]^T: no communication; each rank produces its own output columns.
class ColumnParallelLinear {
 public:
  // `merge`: copy the parts into one weight (one matrix product) instead of keeping a segment
  // per part; for layouts with many small parts, such as Falcon's query_key_value groups.
  ColumnParallelLinear(ModelContext& ctx, WeightSource& weights,
                       const std::vector<ColumnPart>& parts, int64_t in_features,
                       bool merge = false);
  // x [T, in_features] -> out [T, out_features()]
  void forward(const Tensor& x, const Tensor& out) const;
  int64_t out_features() const { return out_features_; }

 private:
  // merge with FP8 parts on a backend that takes them: codes and scales concatenated as stored.
  // False (nothing read) when the parts are not FP8.
  bool merge_fp8(ModelContext& ctx, WeightSource& weights, const std::vector<ColumnPart>& parts,
                 int64_t in_features);

  ModelContext& ctx_;
  std::vector<LinearSegment> segments_;
  int64_t out_features_ = 0;
};

// out = x_shard @ W[:, shard]^T summed over ranks: each rank holds a slice of the input features
// and the partial products are all-reduced.
class RowParallelLinear {
 public:
  // This rank holds input features [in_range.begin, in_range.end) of the full in_features.
  // `transposed`: stored [in_features, out_features] (GPT-2's Conv1D); the rank then reads
  // just its rows of the stored weight.
  RowParallelLinear(ModelContext& ctx, WeightSource& weights, const std::string& name,
                    int64_t out_features, int64_t in_features, Range in_range, bool bias,
                    bool transposed = false);
  // x [T, local in_features] -> out [T, out_features] (full, identical on every rank)
  void forward(const Tensor& x, const Tensor& out) const;
  // forward() without its all-reduce, and the all-reduce alone: two row-parallel outputs that
  // are summed anyway (Falcon's parallel attention and MLP) then need one reduction, not two.
  void forward_unreduced(const Tensor& x, const Tensor& out) const;
  void reduce(const Tensor& out) const;
  int64_t in_features_local() const { return in_local_; }

 private:
  ModelContext& ctx_;
  LinearSegment segment_;
  int64_t in_local_ = 0;
};

// out = x @ W^T with the whole weight on every rank, in the model's dtype and never quantized:
// small projections outside the decoder layers (OPT-350m's project_in / project_out).
class ReplicatedLinear {
 public:
  ReplicatedLinear(ModelContext& ctx, WeightSource& weights, const std::string& name,
                   int64_t out_features, int64_t in_features);
  // x [T, in_features] -> out [T, out_features]
  void forward(const Tensor& x, const Tensor& out) const;

 private:
  ModelContext& ctx_;
  LinearSegment segment_;
};

// A small parameter (norm weight, bias) as an f32 copy: a few KB, kept in f32 so that kernels
// need no per-dtype variants for it.
Tensor load_f32_vector(ModelContext& ctx, WeightSource& weights, const std::string& name,
                       int64_t size, int64_t begin = 0, int64_t end = -1);

}  // namespace tessera
