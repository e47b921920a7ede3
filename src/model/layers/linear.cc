#include "model/layers/linear.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
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

// A decoder layer's Linear weight from an FP8 checkpoint, as stored, where the backend runs FP8
// weights; nullopt otherwise (get() then dequantizes it).
std::optional<Tensor> stored_fp8(ModelContext& ctx, WeightSource& weights, const std::string& name,
                                 std::initializer_list<int64_t> shape, Slice slice) {
  if (!ctx.backend.takes_fp8_weights()) return std::nullopt;
  std::optional<Fp8Rows> fp8 =
      weights.get_fp8_rows(name, std::span<const int64_t>(shape.begin(), shape.size()), slice);
  if (!fp8) return std::nullopt;
  return ctx.backend.prepare_fp8_layer_weight(fp8->codes, fp8->scales, fp8->block_cols,
                                              fp8->block_offset);
}

// The merged parts' biases, this rank's rows of each in order, as one f32 vector (undefined when
// the parts have none).
Tensor merged_bias(ModelContext& ctx, WeightSource& weights, const std::vector<ColumnPart>& parts,
                   int64_t out_features) {
  const bool has_bias = parts.front().bias;
  for (const ColumnPart& part : parts)
    TESSERA_CHECK(part.bias == has_bias) << part.name << ": merged parts disagree on a bias";
  if (!has_bias) return {};
  Tensor bias = Tensor::empty({out_features}, DType::kF32);
  int64_t at = 0;
  for (const ColumnPart& part : parts) {
    Tensor b = weights.get(part.name + ".bias", {part.rows}, Slice{0, part.row_begin, part.row_end})
                   .to(DType::kF32);
    std::memcpy(bias.data<float>() + at, b.data<float>(), b.numel() * sizeof(float));
    at += b.numel();
  }
  return ctx.backend.prepare_weight(bias);
}

}  // namespace

bool ColumnParallelLinear::merge_fp8(ModelContext& ctx, WeightSource& weights,
                                     const std::vector<ColumnPart>& parts, int64_t in_features) {
  if (!ctx.backend.takes_fp8_weights()) return false;
  // All parts FP8 with the same kind of scales, or none taken this way.
  std::vector<Fp8Rows> taken;
  for (const ColumnPart& part : parts) {
    std::optional<Fp8Rows> p;
    if (!part.transposed)
      p = weights.get_fp8_rows(part.name + ".weight", std::vector<int64_t>{part.rows, in_features},
                               Slice{0, part.row_begin, part.row_end});
    if (!p) {
      if (!taken.empty())
        fail("{}: the parts of one fused layer mix FP8 and 16-bit weights", part.name);
      return false;
    }
    // The parts are rows of one checkpoint tensor (Falcon's query_key_value, DeepSeek's
    // projections), so their scales are of one kind.
    TESSERA_CHECK(taken.empty() || (p->block_cols == taken[0].block_cols &&
                                    p->block_offset == taken[0].block_offset &&
                                    p->scales.dim() == taken[0].scales.dim()))
        << part.name << ": merged parts with different FP8 scales";
    // (A mapped part's pages may be dropped by the next read; they fault back when copied.)
    taken.push_back(std::move(*p));
  }
  const int64_t per_row = taken[0].scales.dim() == 2 ? taken[0].scales.size(1) : 1;
  Tensor codes = Tensor::empty({out_features_, in_features}, DType::kF8E4M3);
  Tensor scales = taken[0].scales.dim() == 2 ? Tensor::empty({out_features_, per_row}, DType::kF32)
                                             : Tensor::empty({out_features_}, DType::kF32);
  int64_t row = 0;
  for (const Fp8Rows& p : taken) {
    const int64_t n = p.codes.size(0);
    for (int64_t r = 0; r < n; ++r)
      std::memcpy(codes.data<uint8_t>() + (row + r) * in_features,
                  p.codes.data<uint8_t>() + r * p.codes.stride(0), in_features);
    std::memcpy(scales.data<float>() + row * per_row, p.scales.data<float>(),
                n * per_row * sizeof(float));
    row += n;
  }
  LinearSegment seg;
  seg.weight = ctx.backend.prepare_fp8_layer_weight(codes, scales, taken[0].block_cols,
                                                    taken[0].block_offset);
  seg.bias = merged_bias(ctx, weights, parts, out_features_);
  segments_.push_back(std::move(seg));
  return true;
}

ColumnParallelLinear::ColumnParallelLinear(ModelContext& ctx, WeightSource& weights,
                                           const std::vector<ColumnPart>& parts,
                                           int64_t in_features, bool merge)
    : ctx_(ctx) {
  for (const ColumnPart& part : parts) out_features_ += part.row_end - part.row_begin;
  if (merge && parts.size() > 1 && merge_fp8(ctx, weights, parts, in_features)) return;
  if (merge && parts.size() > 1) {
    // Each part is copied out before the next get() (which may drop the previous one's pages).
    Tensor w;  // [out_features, in_features] in the stored dtype
    int64_t row = 0;
    for (const ColumnPart& part : parts) {
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
      row += p.size(0);
    }
    LinearSegment seg;
    seg.weight = ctx.backend.prepare_layer_weight(std::move(w), {});
    seg.bias = merged_bias(ctx, weights, parts, out_features_);
    segments_.push_back(std::move(seg));
    return;
  }
  for (const ColumnPart& part : parts) {
    LinearSegment seg;
    std::optional<Tensor> fp8;
    if (!part.transposed)
      fp8 = stored_fp8(ctx, weights, part.name + ".weight", {part.rows, in_features},
                       Slice{0, part.row_begin, part.row_end});
    seg.weight = fp8 ? std::move(*fp8)
                     : ctx.backend.prepare_layer_weight(load_part(weights, part, in_features), {});
    if (part.bias)
      seg.bias = load_f32_vector(ctx, weights, part.name + ".bias", part.rows, part.row_begin,
                                 part.row_end);
    segments_.push_back(std::move(seg));
  }
}

void ColumnParallelLinear::forward(const Tensor& x, const Tensor& out) const {
  ctx_.backend.linear(x, segments_, out);
}

namespace {

// A row-parallel shard (columns `cols` of every row) of a 16- or 32-bit (or dequantized) weight,
// prepared by the backend.
Tensor prepare_row_shard(ModelContext& ctx, WeightSource& weights, const std::string& name,
                         int64_t out_features, int64_t in_features, Range cols, bool transposed) {
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
      for (int64_t i = 0; i < cols.size(); ++i)
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
  return ctx.backend.prepare_layer_weight(std::move(w), row_absmax);
}

}  // namespace

RowParallelLinear::RowParallelLinear(ModelContext& ctx, WeightSource& weights,
                                     const std::string& name, int64_t out_features,
                                     int64_t in_features, Range cols, bool bias, bool transposed)
    : ctx_(ctx) {
  TESSERA_CHECK(0 <= cols.begin && cols.begin < cols.end && cols.end <= in_features);
  in_local_ = cols.size();
  std::optional<Tensor> fp8;
  if (!transposed)
    fp8 = stored_fp8(ctx, weights, name + ".weight", {out_features, in_features},
                     Slice{1, cols.begin, cols.end});
  segment_.weight =
      fp8 ? std::move(*fp8)
          : prepare_row_shard(ctx, weights, name, out_features, in_features, cols, transposed);
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
