#include "loader/weight_source.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "core/status.h"
#include "core/sys.h"

namespace tessera {

namespace {

// How far ahead of the current tensor the kernel is asked to read (pread path).
constexpr uint64_t kReadAheadBytes = 256ull << 20;

std::string shape_str(std::span<const int64_t> dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

uint64_t hash_name(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace

LoadFormat parse_load_format(const std::string& name) {
  if (name == "auto" || name == "safetensors") return LoadFormat::kAuto;
  if (name == "mmap") return LoadFormat::kMmap;
  if (name == "dummy") return LoadFormat::kDummy;
  if (name == "pt" || name == "npcache" || name == "gguf" || name == "bitsandbytes")
    fail(ErrorKind::kUnsupported,
         "--load-format {} is not supported (supported: auto, safetensors, mmap, dummy)", name);
  fail("--load-format must be one of auto, safetensors, mmap, dummy; got \"{}\"", name);
}

WeightSource::WeightSource(const Checkpoint* checkpoint, LoadFormat format, ThreadPool* pool,
                           DType dummy_dtype)
    : checkpoint_(checkpoint), format_(format), pool_(pool), dummy_dtype_(dummy_dtype) {
  TESSERA_CHECK(checkpoint_ != nullptr || format_ == LoadFormat::kDummy);
}

bool WeightSource::has(const std::string& name) const {
  return checkpoint_ != nullptr && format_ != LoadFormat::kDummy && checkpoint_->contains(name);
}

void WeightSource::release_last_mapped() {
  if (last_mapped_.empty()) return;
  const SafetensorsFile& file = checkpoint_->file(last_mapped_);
  const TensorInfo& info = checkpoint_->info(last_mapped_);
  file.release_pages(file.data_offset() + info.begin, info.end - info.begin);
  last_mapped_.clear();
}

void WeightSource::set_fp8(int64_t block_rows, int64_t block_cols, DType dequantized) {
  TESSERA_CHECK(block_rows >= 0 && block_cols >= 0 && (block_rows > 0) == (block_cols > 0));
  TESSERA_CHECK(is_float(dequantized));
  block_rows_ = block_rows;
  block_cols_ = block_cols;
  dequantized_ = dequantized;
}

Tensor WeightSource::stored(const std::string& name, std::span<const int64_t> shape, Slice slice) {
  if (slice.dim >= 0)
    TESSERA_CHECK(slice.dim < static_cast<int>(shape.size()) && 0 <= slice.begin &&
                  slice.begin <= slice.end && slice.end <= shape[slice.dim])
        << name << " slice";
  if (!checkpoint_->contains(name))
    fail(ErrorKind::kNotFound, "missing tensor \"{}\" in the checkpoint", name);
  const TensorInfo& info = checkpoint_->info(name);
  if (!std::equal(info.shape.begin(), info.shape.end(), shape.begin(), shape.end()))
    fail("{}: tensor \"{}\" has shape {}, expected {}", checkpoint_->file_of(name), name,
         shape_str(info.shape), shape_str(shape));
  Tensor t;
  if (format_ == LoadFormat::kMmap) {
    // The previous tensor has been prepared by now (layers load and prepare one at a time):
    // if the backend copied it, its mapped pages would count twice until the end of the
    // load. Dropping them is always safe (a later read faults the same bytes back).
    release_last_mapped();
    last_mapped_ = name;
    t = checkpoint_->tensor(name);
    if (slice.dim >= 0) t = t.slice(slice.dim, slice.begin, slice.end);
  } else {
    t = read_slice(name, info, slice);
  }
  used_.insert(name);
  bytes_used_ += t.nbytes();
  return t;
}

WeightSource::Fp8Scales WeightSource::fp8_scales(const std::string& name,
                                                 const TensorInfo& weight) {
  if (name == last_scales_of_) return last_scales_;
  const std::string file = checkpoint_->file_of(name);
  std::string scale_name = name + "_scale_inv";
  if (!checkpoint_->contains(scale_name)) scale_name = name + "_scale";
  if (weight.shape.size() != 2 || !checkpoint_->contains(scale_name))
    fail(ErrorKind::kUnsupported,
         "{}: tensor \"{}\" is F8_E4M3 but {}; FP8 checkpoints store 2-d weights with \"{}_scale\" "
         "or \"{}_scale_inv\" beside them",
         file, name, weight.shape.size() != 2 ? "not 2-d" : "has no scale", name, name);
  const TensorInfo& info = checkpoint_->info(scale_name);
  if (!is_float(info.dtype))
    fail(ErrorKind::kUnsupported, "{}: scale \"{}\" has dtype {}, expected F32, BF16 or F16", file,
         scale_name, dtype_name(info.dtype));
  const int64_t rows = weight.shape[0], cols = weight.shape[1];
  int64_t numel = 1;
  for (int64_t d : info.shape) numel *= d;
  // The scale is small: read it whole, whatever slice of the weight is wanted (mmap: a view).
  Fp8Scales scales;
  scales.values = stored(scale_name, info.shape, {}).contiguous().to(DType::kF32);
  if (numel == 1 || (numel == rows &&
                     (info.shape.size() == 1 || (info.shape.size() == 2 && info.shape[1] == 1)))) {
    scales.values = scales.values.reshape({numel});
  } else {
    auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
    if (block_rows_ == 0)
      fail(ErrorKind::kUnsupported,
           "{}: scale \"{}\" has shape {}, which is neither per tensor nor per row of {} and "
           "quantization_config gives no weight_block_size",
           file, scale_name, shape_str(info.shape), shape_str(weight.shape));
    if (info.shape.size() != 2 || info.shape[0] != ceil_div(rows, block_rows_) ||
        info.shape[1] != ceil_div(cols, block_cols_))
      fail("{}: scale \"{}\" has shape {}, expected [{}, {}] for a {} weight in blocks of {} x {}",
           file, scale_name, shape_str(info.shape), ceil_div(rows, block_rows_),
           ceil_div(cols, block_cols_), shape_str(weight.shape), block_rows_, block_cols_);
    scales.blocks = true;
    scales.block_rows = block_rows_;
    scales.block_cols = block_cols_;
  }
  last_scales_of_ = name;
  last_scales_ = scales;
  return scales;
}

std::optional<Fp8Rows> WeightSource::get_fp8_rows(const std::string& name,
                                                  std::span<const int64_t> shape, Slice slice,
                                                  bool transposed) {
  if (!has(name) || checkpoint_->info(name).dtype != DType::kF8E4M3) return std::nullopt;
  const Fp8Scales scales = fp8_scales(name, checkpoint_->info(name));
  if (transposed && !scales.blocks && scales.values.numel() != 1) return std::nullopt;
  const int64_t r0 = slice.dim == 0 ? slice.begin : 0, c0 = slice.dim == 1 ? slice.begin : 0;
  Fp8Rows out;
  out.codes = stored(name, shape, slice);
  if (transposed) {
    const int64_t rows = out.codes.size(0), cols = out.codes.size(1);
    Tensor t = Tensor::empty({cols, rows}, DType::kF8E4M3);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        t.data<uint8_t>()[c * rows + r] = out.codes.data<uint8_t>()[r * out.codes.stride(0) + c];
    out.codes = t;
  }
  // The scale of element (i, j) of what is returned.
  auto at = [&](int64_t i, int64_t j) {
    return transposed ? scales.at(r0 + j, c0 + i) : scales.at(r0 + i, c0 + j);
  };
  const int64_t n = out.codes.size(0), k = out.codes.size(1);
  if (!scales.blocks) {
    out.scales = Tensor::empty({n}, DType::kF32);
    for (int64_t r = 0; r < n; ++r) out.scales.data<float>()[r] = at(r, 0);
    return out;
  }
  // The returned columns (stored rows, transposed) may start inside a block.
  out.block_cols = transposed ? scales.block_rows : scales.block_cols;
  out.block_offset = (transposed ? r0 : c0) % out.block_cols;
  const int64_t bc = out.block_cols, off = out.block_offset, chunks = (k + off + bc - 1) / bc;
  out.scales = Tensor::empty({n, chunks}, DType::kF32);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t b = 0; b < chunks; ++b)  // at the chunk's first column
      out.scales.data<float>()[r * chunks + b] = at(r, std::max<int64_t>(0, b * bc - off));
  return out;
}

Tensor WeightSource::get(const std::string& name, std::span<const int64_t> shape, Slice slice) {
  Tensor t;
  if (format_ == LoadFormat::kDummy) {
    if (slice.dim >= 0)
      TESSERA_CHECK(slice.dim < static_cast<int>(shape.size()) && 0 <= slice.begin &&
                    slice.begin <= slice.end && slice.end <= shape[slice.dim])
          << name << " slice";
    t = dummy(name, shape, slice);
    used_.insert(name);
    bytes_used_ += t.nbytes();
  } else {
    if (!checkpoint_->contains(name))
      fail(ErrorKind::kNotFound, "missing tensor \"{}\" in the checkpoint", name);
    const TensorInfo& info = checkpoint_->info(name);
    if (info.dtype == DType::kF8E4M3) {
      // An FP8 weight: w = scale * e4m3(code), the scale of its row, or of its block.
      const Fp8Scales scales = fp8_scales(name, info);
      const Tensor codes = stored(name, shape, slice);
      const int64_t rows = codes.size(0), cols = codes.size(1);
      const int64_t r0 = slice.dim == 0 ? slice.begin : 0, c0 = slice.dim == 1 ? slice.begin : 0;
      t = Tensor::empty({rows, cols}, convert_to_.value_or(dequantized_));
      auto body = [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const uint8_t* q = codes.data<uint8_t>() + r * codes.stride(0);
          for (int64_t c = 0; c < cols; ++c)
            store_from_f32(t.raw(), t.dtype(), r * cols + c,
                           scales.at(r0 + r, c0 + c) * fp8_e4m3_to_f32(q[c * codes.stride(1)]));
        }
      };
      if (pool_)
        pool_->parallel_for(rows, body);
      else
        body(0, rows);
      return t;
    }
    if (!is_float(info.dtype) || info.dtype == DType::kF64)
      fail(ErrorKind::kUnsupported, "{}: tensor \"{}\" has dtype {}, expected F32, BF16 or F16",
           checkpoint_->file_of(name), name, dtype_name(info.dtype));
    t = stored(name, shape, slice);
  }
  if (convert_to_ && *convert_to_ != t.dtype()) t = t.to(*convert_to_);
  return t;
}

Tensor WeightSource::read_slice(const std::string& name, const TensorInfo& info, Slice slice) {
  const SafetensorsFile& file = checkpoint_->file(name);
  const double start = now_seconds();
  const size_t elem = dtype_size(info.dtype);
  std::vector<int64_t> out_shape = info.shape;
  if (slice.dim >= 0) out_shape[slice.dim] = slice.end - slice.begin;
  Tensor out = Tensor::empty(out_shape, info.dtype);
  const uint64_t base = file.data_offset() + info.begin;
  char* dst = static_cast<char*>(out.raw());
  if (slice.dim <= 0 || out_shape.size() == 1) {
    // Rows [begin, end) (or everything): one contiguous range, read in large parallel chunks.
    uint64_t row_bytes = elem;
    for (size_t d = 1; d < info.shape.size(); ++d)
      row_bytes *= static_cast<uint64_t>(info.shape[d]);
    const uint64_t offset =
        base + (slice.dim == 0 ? static_cast<uint64_t>(slice.begin) * row_bytes : 0);
    const uint64_t bytes = out.nbytes();
    // Keep the device busy between tensors: the kernel reads the next tensors of the file in
    // the background while this one is copied (checkpoints store tensors roughly in load order).
    file.prefetch(offset + bytes, kReadAheadBytes);
    // Chunks small enough that every thread has reads in flight even for a mid-sized tensor,
    // large enough to be sequential reads (network filesystems want >= 1 MiB requests).
    const uint64_t threads = pool_ ? static_cast<uint64_t>(pool_->size()) : 1;
    const uint64_t chunk =
        std::clamp<uint64_t>(bytes / (2 * threads) / (1 << 20) * (1 << 20), 1 << 20, 16ull << 20);
    const int64_t chunks = static_cast<int64_t>((bytes + chunk - 1) / chunk);
    auto body = [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        const uint64_t lo = static_cast<uint64_t>(c) * chunk, n = std::min(chunk, bytes - lo);
        file.read(offset + lo, n, dst + lo);
      }
    };
    if (pool_ && chunks > 1)
      pool_->parallel_for(chunks, body);
    else
      body(0, chunks);
  } else {
    // A column slice of a 2-d weight (a row-parallel shard): one read per row, of this rank's
    // columns only.
    TESSERA_CHECK(info.shape.size() == 2 && slice.dim == 1);
    const uint64_t row_bytes = static_cast<uint64_t>(info.shape[1]) * elem;
    const uint64_t part = static_cast<uint64_t>(slice.end - slice.begin) * elem;
    auto body = [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        file.read(
            base + static_cast<uint64_t>(r) * row_bytes + static_cast<uint64_t>(slice.begin) * elem,
            part, dst + static_cast<uint64_t>(r) * part);
    };
    if (pool_)
      pool_->parallel_for(info.shape[0], body);
    else
      body(0, info.shape[0]);
  }
  bytes_read_ += out.nbytes();
  read_seconds_ += now_seconds() - start;
  return out;
}

Tensor WeightSource::dummy(const std::string& name, std::span<const int64_t> shape, Slice slice) {
  std::vector<int64_t> out_shape(shape.begin(), shape.end());
  if (slice.dim >= 0) out_shape[slice.dim] = slice.end - slice.begin;
  Tensor out = Tensor::empty(out_shape, dummy_dtype_);
  // Uniform values scaled like an initialisation (vectors: around 1, as norm weights are); a
  // slice gets the values of the full tensor's elements it covers.
  const float half = shape.size() >= 2 ? std::sqrt(3.0f / static_cast<float>(shape.back())) : 0.1f;
  const float center = shape.size() >= 2 ? 0.0f : 1.0f;
  const uint64_t seed = hash_name(name);
  const int64_t cols = shape.size() >= 2 ? shape.back() : 1;
  const int64_t out_cols = out_shape.size() >= 2 ? out_shape.back() : 1;
  const int64_t rows = out.numel() / out_cols;
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t src_row = r + (slice.dim == 0 ? slice.begin : 0);
      const int64_t col0 = slice.dim == 1 ? slice.begin : 0;
      for (int64_t c = 0; c < out_cols; ++c) {
        uint64_t z =
            seed + static_cast<uint64_t>(src_row * cols + col0 + c) * 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
        store_from_f32(out.raw(), dummy_dtype_, r * out_cols + c,
                       center + (2.0f * u - 1.0f) * half);
      }
    }
  };
  if (pool_)
    pool_->parallel_for(rows, body);
  else
    body(0, rows);
  return out;
}

void WeightSource::ignore_prefix(const std::string& prefix) {
  if (!checkpoint_) return;
  for (const auto& name : checkpoint_->names())
    if (name.rfind(prefix, 0) == 0) used_.insert(name);
}

void WeightSource::ignore_suffix(const std::string& suffix) {
  if (!checkpoint_) return;
  for (const auto& name : checkpoint_->names())
    if (name.size() >= suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      used_.insert(name);
}

void WeightSource::check_all_used() const {
  if (format_ == LoadFormat::kDummy) return;
  std::vector<std::string> extra;
  for (const auto& name : checkpoint_->names())
    if (!used_.count(name)) extra.push_back(name);
  if (extra.empty()) return;
  std::string list;
  for (size_t i = 0; i < extra.size() && i < 5; ++i)
    list +=
        fmt::format("{}\"{}\" (in {})", i ? ", " : "", extra[i], checkpoint_->file_of(extra[i]));
  if (extra.size() > 5) list += fmt::format(" and {} more", extra.size() - 5);
  fail("unexpected tensor{} in the checkpoint: {}", extra.size() > 1 ? "s" : "", list);
}

}  // namespace tessera
