// Hands checkpoint tensors to the model: checks names, shapes and dtypes, takes only the slice a
// rank needs, and remembers what was taken so that leftovers are reported as unexpected.
//
// Load formats (--load-format):
//  - auto / safetensors: each slice is read with large pread calls (several threads) into
//    memory of our own. Reads only this rank's bytes and suits network filesystems
//    (docs/models.md, docs/deploy.md).
//  - mmap: zero copy; weights stay views of the memory-mapped files (shared page cache, instant
//    start, slower decode).
//  - dummy: random weights from the configuration alone (no safetensors needed).
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "loader/checkpoint.h"

namespace tessera {

enum class LoadFormat { kAuto, kMmap, kDummy };
// "auto", "safetensors" (= auto), "mmap", "dummy"; throws tessera::Error naming the choices.
LoadFormat parse_load_format(const std::string& name);

// Rows or columns [begin, end) along `dim` of a tensor; dim < 0 means the whole tensor.
struct Slice {
  int dim = -1;
  int64_t begin = 0, end = 0;
};

// A slice of an FP8 checkpoint weight as stored: E4M3 codes and f32 scales per row, or per row
// and block of block_cols columns, the slice starting block_offset columns into a block:
// w[r][c] = scales[r] (or scales[r][(c + block_offset) / block_cols]) * e4m3(codes[r][c]).
// A 4-bit integer checkpoint's weights come the same way: q - zero (-15 to 15) is exact in E4M3,
// and its groups of inputs are the blocks.
struct Fp8Rows {
  Tensor codes;   // kF8E4M3 [rows, cols] (the slice; may be a strided view)
  Tensor scales;  // kF32 [rows], or [rows, ceil((cols + block_offset) / block_cols)]
  int64_t block_cols = 0, block_offset = 0;  // block_cols 0: one scale per row
};

// Integer weight-only checkpoints (docs/quantization.md): how "x.weight" is stored.
struct IntWeights {
  enum class Kind {
    kNone,
    kGptq,    // x.qweight I32 [in * bits / 32, out], x.qzeros, x.scales [groups, out], x.g_idx
    kAwq,     // x.qweight I32 [in, out * bits / 32] in AutoAWQ's order, x.qzeros, x.scales
    kPacked,  // x.weight_packed I32 [out, in * bits / 32], x.weight_scale [out, groups],
              // x.weight_shape, x.weight_zero_point (asymmetric), x.weight_g_idx (act order)
    kInt8,    // x.weight I8 [out, in], x.weight_scale (one, or one per row)
  };
  Kind kind = Kind::kNone;
  int bits = 4;
  int64_t group_size = 0;  // inputs per scale; 0: one scale per output row
  bool symmetric = true;   // kPacked: no zero points (values stored offset by 2^(bits-1))
  bool gptq_v2 = false;    // kGptq: zeros stored as they are, not minus one
};

class WeightSource {
 public:
  // `checkpoint` may be null only for kDummy. `pool` parallelises reads.
  WeightSource(const Checkpoint* checkpoint, LoadFormat format, ThreadPool* pool,
               DType dummy_dtype);
  // Weights stored in another float dtype are converted to this one.
  void convert_to(DType dtype) { convert_to_ = dtype; }
  // FP8 checkpoints (docs/models.md): a 2-d weight "x.weight" stored as F8_E4M3 has its f32 (or
  // 16-bit) scales beside it, "x.weight_scale" (one value, or one per row) or
  // "x.weight_scale_inv" (one per block of block_rows x block_cols, as DeepSeek-V3's
  // weight_block_size; 0: no blocks). get() dequantizes such a weight, scale * e4m3(code)
  // rounded once to the dtype of convert_to(), else `dequantized` (the model's torch_dtype).
  // Called once, before any get().
  void set_fp8(int64_t block_rows, int64_t block_cols, DType dequantized);
  // Integer checkpoints: a Linear weight "x.weight" [out, in] is found under the names of
  // `format` instead; has() and get() see it as that weight (get() dequantizes,
  // scale * (q - zero) rounded once to the dtype of convert_to(), else `dequantized`), and
  // get_fp8_rows() gives 4-bit ones as E4M3 codes. Called once, before any get().
  void set_int_weights(const IntWeights& format, DType dequantized);

  bool has(const std::string& name) const;
  // The tensor `name`, which must exist with exactly `shape` and a float dtype (or be an FP8
  // weight, dequantized), cut to `slice`.
  Tensor get(const std::string& name, std::span<const int64_t> shape, Slice slice = {});
  Tensor get(const std::string& name, std::initializer_list<int64_t> shape, Slice slice = {}) {
    return get(name, std::span<const int64_t>(shape.begin(), shape.size()), slice);
  }
  // An FP8 weight as stored (no rounding), cut to `slice`, its scales expanded to every row, or a
  // 4-bit integer weight whose groups are contiguous (no act order), as E4M3 codes of q - zero;
  // nullopt for any other tensor (then get() it). For backends with FP8 kernels.
  // `transposed`: the slice's transpose [cols, rows] (a copy), for weights used the other way
  // round (DeepSeek's absorbed kv_b_proj); nullopt where its scales do not fit that form (one
  // per stored row).
  std::optional<Fp8Rows> get_fp8_rows(const std::string& name, std::span<const int64_t> shape,
                                      Slice slice = {}, bool transposed = false);

  // Marks a tensor as known but unused (e.g. rotary_emb.inv_freq in old checkpoints); an integer
  // weight with the tensors it is stored in.
  void ignore(const std::string& name);
  // Marks every tensor whose name starts with `prefix` (another pipeline stage's layers).
  void ignore_prefix(const std::string& prefix);
  // Marks every tensor whose name ends with `suffix` (an FP8 checkpoint's activation scales).
  void ignore_suffix(const std::string& suffix);
  // Throws listing the checkpoint tensors nobody took.
  void check_all_used() const;
  // mmap format: drops the mapped pages of the tensor returned last (get() does it for the one
  // before): the layers have prepared it, so a backend's own copy does not count twice. Always
  // safe: a later read faults the same bytes back.
  void release_last_mapped();
  // Bytes of the slices taken (this rank's share; an integer weight: the codes or values handed
  // out) and bytes actually read from files.
  uint64_t bytes_used() const { return bytes_used_; }
  uint64_t bytes_read() const { return bytes_read_; }
  // Wall time spent reading files (pread path), for the GB/s of the start-up log.
  double read_seconds() const { return read_seconds_; }
  LoadFormat format() const { return format_; }
  // Integer weights taken (set_int_weights), for a checkpoint whose config says so but that
  // holds none.
  int64_t int_weights_taken() const { return int_weights_taken_; }

 private:
  Tensor read_slice(const std::string& name, const TensorInfo& info, Slice slice);
  // The stored bytes of `name` cut to `slice` (checked against `shape`), counted as used.
  Tensor stored(const std::string& name, std::span<const int64_t> shape, Slice slice);
  // The scales of an FP8 weight, whole, as f32: one, one per row, or one per block.
  struct Fp8Scales {
    Tensor values;  // [1], [rows] or [ceil(rows / block_rows), ceil(cols / block_cols)]
    bool blocks = false;
    int64_t block_rows = 0, block_cols = 0;
    // The scale of stored element (row, col).
    float at(int64_t row, int64_t col) const {
      const float* s = values.data<float>();
      if (blocks) return s[(row / block_rows) * values.size(1) + col / block_cols];
      return values.numel() == 1 ? s[0] : s[row];
    }
  };
  // The last weight's scales are kept: fused layers take one checkpoint weight in many row parts
  // (DeepSeek's q_b_proj: one per rotary row), each of which would read them again.
  Fp8Scales fp8_scales(const std::string& name, const TensorInfo& weight);
  // An integer weight: the tensors "x.weight" is stored in, and its logical shape [out, in].
  struct IntWeight {
    std::string packed, zeros, scales, g_idx, shape;  // tensor names; empty where absent
    int64_t out = 0, in = 0;
  };
  std::optional<IntWeight> int_weight(const std::string& name) const;
  // Its scales and zero points per output row and group, and each input's group (whole: they
  // are small); the last weight's are kept, as for FP8 scales.
  struct IntParams {
    std::vector<float> scales;   // [out, groups]
    std::vector<int16_t> zeros;  // [out, groups]: q - zero is the integer weight
    std::vector<int32_t> group;  // [in]
    int64_t groups = 1;
    bool contiguous = true;  // group[c] == c / group_size (no act order)
  };
  const IntParams& int_params(const std::string& name, const IntWeight& w);
  // q - zero for the slice [rows, cols] of the logical weight, row-major.
  std::vector<int16_t> int_values(const std::string& name, const IntWeight& w, Slice slice);
  // Throws unless `shape` is the weight's [out, in].
  void check_int_shape(const std::string& name, const IntWeight& w,
                       std::span<const int64_t> shape) const;
  Tensor dummy(const std::string& name, std::span<const int64_t> shape, Slice slice);

  const Checkpoint* checkpoint_;
  LoadFormat format_;
  ThreadPool* pool_;
  DType dummy_dtype_;
  std::optional<DType> convert_to_;
  int64_t block_rows_ = 0, block_cols_ = 0;
  std::string last_scales_of_;  // the weight whose scales last_scales_ are
  Fp8Scales last_scales_;
  DType dequantized_ = DType::kF32;
  IntWeights int_format_;
  int64_t int_weights_taken_ = 0;
  std::string last_params_of_;
  IntParams last_params_;
  std::set<std::string> used_;
  std::string last_mapped_;  // mmap format: the tensor whose pages go at the next get()
  uint64_t bytes_used_ = 0, bytes_read_ = 0;
  double read_seconds_ = 0;
};

}  // namespace tessera
