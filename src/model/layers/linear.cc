#include "model/layers/linear.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/status.h"
#include "distributed/world_config.h"

namespace tessera {

Tensor load_f32_vector(ModelContext& ctx, WeightSource& weights, const std::string& name,
                       int64_t size, int64_t begin, int64_t end) {
  if (end < 0) end = size;
  Tensor t = weights.get(name, {size}, Slice{0, begin, end}).to(DType::kF32);
  return ctx.backend.prepare_weight(t);
}

namespace {

// This rank's rows of one part, [row_end - row_begin, in_features] (a view of the checkpoint or
// of the loader's memory).
Tensor load_part(WeightSource& weights, const ColumnPart& part, int64_t in_features) {
  TESSERA_CHECK(0 <= part.row_begin && part.row_begin < part.row_end && part.row_end <= part.rows);
  if (part.transposed)
    return weights
        .get(part.name + ".weight", {in_features, part.rows},
             Slice{1, part.row_begin, part.row_end})
        .transposed();
  return weights.get(part.name + ".weight", {part.rows, in_features},
                     Slice{0, part.row_begin, part.row_end});
}

}  // namespace

ColumnParallelLinear::ColumnParallelLinear(ModelContext& ctx, WeightSource& weights,
                                           const std::vector<ColumnPart>& parts,
                                           int64_t in_features, bool merge)
    : ctx_(ctx) {
  for (const ColumnPart& part : parts) out_features_ += part.row_end - part.row_begin;
  if (merge && parts.size() > 1) {
    // Each part is copied out before the next get() (which may drop the previous one's pages).
    Tensor w, bias;  // [out_features, in_features] in the stored dtype; f32 [out_features]
    const bool has_bias = parts.front().bias;
    if (has_bias) bias = Tensor::empty({out_features_}, DType::kF32);
    int64_t row = 0;
    for (const ColumnPart& part : parts) {
      TESSERA_CHECK(part.bias == has_bias) << part.name << ": merged parts disagree on a bias";
      Tensor p = load_part(weights, part, in_features);
      if (!w.defined()) w = Tensor::empty({out_features_, in_features}, p.dtype());
      TESSERA_CHECK(p.dtype() == w.dtype()) << part.name << ": merged parts of two dtypes";
      const size_t elem = dtype_size(p.dtype());
      char* dst = static_cast<char*>(w.raw()) + row * in_features * elem;
      const char* src = static_cast<const char*>(p.raw());
      for (int64_t r = 0; r < p.size(0); ++r) {
        if (p.stride(1) == 1) {
          std::memcpy(dst + r * in_features * elem, src + r * p.stride(0) * elem,
                      in_features * elem);
        } else {  // a transposed (Conv1D) part
          for (int64_t i = 0; i < in_features; ++i)
            std::memcpy(dst + (r * in_features + i) * elem,
                        src + (r * p.stride(0) + i * p.stride(1)) * elem, elem);
        }
      }
      if (has_bias) {
        Tensor b =
            weights.get(part.name + ".bias", {part.rows}, Slice{0, part.row_begin, part.row_end})
                .to(DType::kF32);
        std::memcpy(bias.data<float>() + row, b.data<float>(), b.numel() * sizeof(float));
      }
      row += p.size(0);
    }
    LinearSegment seg;
    seg.weight = ctx.backend.prepare_layer_weight(std::move(w), {});
    if (has_bias) seg.bias = ctx.backend.prepare_weight(bias);
    segments_.push_back(std::move(seg));
    return;
  }
  for (const ColumnPart& part : parts) {
    LinearSegment seg;
    seg.weight = ctx.backend.prepare_layer_weight(load_part(weights, part, in_features), {});
    if (part.bias)
      seg.bias = load_f32_vector(ctx, weights, part.name + ".bias", part.rows, part.row_begin,
                                 part.row_end);
    segments_.push_back(std::move(seg));
  }
}

void ColumnParallelLinear::forward(const Tensor& x, const Tensor& out) const {
  ctx_.backend.linear(x, segments_, out);
}

RowParallelLinear::RowParallelLinear(ModelContext& ctx, WeightSource& weights,
                                     const std::string& name, int64_t out_features,
                                     int64_t in_features, Range cols, bool bias, bool transposed)
    : ctx_(ctx) {
  TESSERA_CHECK(0 <= cols.begin && cols.begin < cols.end && cols.end <= in_features);
  in_local_ = cols.size();
  Tensor w = transposed ? weights
                              .get(name + ".weight", {in_features, out_features},
                                   Slice{0, cols.begin, cols.end})
                              .transposed()
                        : weights.get(name + ".weight", {out_features, in_features},
                                      Slice{1, cols.begin, cols.end});
  // Each rank holds part of every row: a quantizing backend gets the whole rows' largest values
  // (gathered from the group), so that the shards are quantized as one rank would quantize.
  std::vector<float> row_absmax;
  if (ctx.backend.quantizes_layer_weights() && ctx.tp_size() > 1) {
    Tensor local = Tensor::empty({out_features}, DType::kF32);
    const size_t elem = dtype_size(w.dtype());
    for (int64_t j = 0; j < out_features; ++j) {
      const char* row =
          static_cast<const char*>(w.raw()) + static_cast<size_t>(j * w.stride(0)) * elem;
      float m = 0.0f;
      for (int64_t i = 0; i < in_local_; ++i)
        m = std::max(m, std::fabs(load_as_f32(row, w.dtype(), i)));
      local.data<float>()[j] = m;
    }
    Tensor all = Tensor::empty({ctx.tp_size(), out_features}, DType::kF32);
    ctx.tp.all_gather(local, all);
    row_absmax.assign(local.data<float>(), local.data<float>() + out_features);
    for (int r = 0; r < ctx.tp_size(); ++r)
      for (int64_t j = 0; j < out_features; ++j)
        row_absmax[j] = std::max(row_absmax[j], all.data<float>()[r * out_features + j]);
  }
  segment_.weight = ctx.backend.prepare_layer_weight(std::move(w), row_absmax);
  // The bias joins on rank 0 only, so that the all-reduce adds it once.
  if (bias) {
    Tensor b = load_f32_vector(ctx, weights, name + ".bias", out_features);
    if (ctx.tp_rank() == 0) segment_.bias = b;
  }
}

ReplicatedLinear::ReplicatedLinear(ModelContext& ctx, WeightSource& weights,
                                   const std::string& name, int64_t out_features,
                                   int64_t in_features)
    : ctx_(ctx) {
  segment_.weight =
      ctx.backend.prepare_linear_weight(weights.get(name + ".weight", {out_features, in_features}));
}

void ReplicatedLinear::forward(const Tensor& x, const Tensor& out) const {
  ctx_.backend.linear(x, {&segment_, 1}, out);
}

void RowParallelLinear::forward(const Tensor& x, const Tensor& out) const {
  forward_unreduced(x, out);
  reduce(out);
}

void RowParallelLinear::forward_unreduced(const Tensor& x, const Tensor& out) const {
  ctx_.backend.linear(x, {&segment_, 1}, out);
}

void RowParallelLinear::reduce(const Tensor& out) const {
  if (ctx_.tp_size() > 1) ctx_.tp.all_reduce_sum(out);
}

}  // namespace tessera
