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
  return checkpoint_ != nullptr && format_ != LoadFormat::kDummy &&
         (checkpoint_->contains(name) || int_weight(name).has_value());
}

void WeightSource::ignore(const std::string& name) {
  used_.insert(name);
  if (checkpoint_ && !checkpoint_->contains(name))
    if (std::optional<IntWeight> w = int_weight(name))
      for (const std::string* n : {&w->packed, &w->zeros, &w->scales, &w->g_idx, &w->shape})
        if (!n->empty()) used_.insert(*n);
}

void WeightSource::set_int_weights(const IntWeights& format, DType dequantized) {
  TESSERA_CHECK(format.bits == 4 || format.bits == 8) << format.bits;
  TESSERA_CHECK(format.group_size >= 0);
  TESSERA_CHECK(format.kind != IntWeights::Kind::kAwq || format.bits == 4);
  TESSERA_CHECK(is_float(dequantized));
  int_format_ = format;
  dequantized_ = dequantized;
}

namespace {

// AutoAWQ packs the 8 outputs of a word in the order 0, 2, 4, 6, 1, 3, 5, 7: output 8w + j is
// in nibble kAwqNibble[j].
constexpr int kAwqNibble[8] = {0, 4, 1, 5, 2, 6, 3, 7};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() > suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

}  // namespace

std::optional<WeightSource::IntWeight> WeightSource::int_weight(const std::string& name) const {
  using Kind = IntWeights::Kind;
  if (int_format_.kind == Kind::kNone || checkpoint_ == nullptr || format_ == LoadFormat::kDummy ||
      !ends_with(name, ".weight"))
    return std::nullopt;
  auto has = [&](const std::string& n) { return checkpoint_->contains(n); };
  auto need = [&](const std::string& n, const std::string& of) {
    if (!has(n))
      fail(ErrorKind::kNotFound, "{}: integer weight \"{}\" has no \"{}\" beside it",
           checkpoint_->file_of(of), of, n);
    return n;
  };
  const int per = 32 / int_format_.bits;
  const std::string base = name.substr(0, name.size() - 7);
  IntWeight w;
  auto packed_2d = [&](DType dtype) -> const TensorInfo& {
    const TensorInfo& info = checkpoint_->info(w.packed);
    if (info.dtype != dtype || info.shape.size() != 2)
      fail(ErrorKind::kUnsupported,
           "{}: tensor \"{}\" has dtype {} and shape {}, expected a 2-d {}",
           checkpoint_->file_of(w.packed), w.packed, dtype_name(info.dtype), shape_str(info.shape),
           dtype_name(dtype));
    return info;
  };
  switch (int_format_.kind) {
    case Kind::kNone:
      return std::nullopt;
    case Kind::kGptq:
    case Kind::kAwq: {
      if (!has(base + ".qweight")) return std::nullopt;
      w.packed = base + ".qweight";
      w.zeros = need(base + ".qzeros", w.packed);
      w.scales = need(base + ".scales", w.packed);
      if (has(base + ".g_idx")) w.g_idx = base + ".g_idx";
      const TensorInfo& q = packed_2d(DType::kI32);
      const bool gptq = int_format_.kind == Kind::kGptq;
      w.in = gptq ? q.shape[0] * per : q.shape[0];
      w.out = gptq ? q.shape[1] : q.shape[1] * per;
      break;
    }
    case Kind::kPacked: {
      if (!has(name + "_packed")) return std::nullopt;
      w.packed = name + "_packed";
      w.scales = need(name + "_scale", w.packed);
      // Asymmetric weights must have their zero points (symmetric ones are offset instead).
      if (!int_format_.symmetric)
        w.zeros = need(name + "_zero_point", w.packed);
      else if (has(name + "_zero_point"))  // zeros stored anyway (older writers)
        w.zeros = name + "_zero_point";
      if (has(name + "_g_idx")) w.g_idx = name + "_g_idx";
      const TensorInfo& q = packed_2d(DType::kI32);
      w.out = q.shape[0];
      w.in = q.shape[1] * per;
      if (has(name + "_shape")) {  // the true input count (the last word may be padding)
        w.shape = name + "_shape";
        const TensorInfo& info = checkpoint_->info(w.shape);
        const int64_t n = info.shape.size() == 1 ? info.shape[0] : 0;
        if (n != 2 || (info.dtype != DType::kI32 && info.dtype != DType::kI64))
          fail("{}: tensor \"{}\" must be 2 integers", checkpoint_->file_of(w.shape), w.shape);
        const SafetensorsFile& file = checkpoint_->file(w.shape);
        int64_t dims[2];
        if (info.dtype == DType::kI64) {
          file.read(file.data_offset() + info.begin, sizeof dims, dims);
        } else {
          int32_t d32[2];
          file.read(file.data_offset() + info.begin, sizeof d32, d32);
          dims[0] = d32[0];
          dims[1] = d32[1];
        }
        if (dims[0] != w.out || dims[1] <= (q.shape[1] - 1) * per || dims[1] > w.in)
          fail("{}: \"{}\" says [{}, {}], which \"{}\" {} cannot hold",
               checkpoint_->file_of(w.shape), w.shape, dims[0], dims[1], w.packed,
               shape_str(q.shape));
        w.in = dims[1];
      }
      break;
    }
    case Kind::kInt8: {
      if (!has(name) || checkpoint_->info(name).dtype != DType::kI8) return std::nullopt;
      w.packed = name;
      w.scales = need(name + "_scale", name);
      if (has(name + "_zero_point")) w.zeros = name + "_zero_point";
      const TensorInfo& q = packed_2d(DType::kI8);
      w.out = q.shape[0];
      w.in = q.shape[1];
      break;
    }
  }
  return w;
}

const WeightSource::IntParams& WeightSource::int_params(const std::string& name,
                                                        const IntWeight& w) {
  using Kind = IntWeights::Kind;
  if (name == last_params_of_) return last_params_;
  const IntWeights& f = int_format_;
  const int bits = f.bits, per = 32 / bits;
  const uint32_t mask = (1u << bits) - 1;
  const std::string file = checkpoint_->file_of(w.packed);
  IntParams p;
  // Scales: [groups, out] (GPTQ, AWQ) or [out, groups] (compressed-tensors; one, or [out, 1]).
  const TensorInfo& si = checkpoint_->info(w.scales);
  if (!is_float(si.dtype) || si.dtype == DType::kF64)
    fail(ErrorKind::kUnsupported, "{}: scale \"{}\" has dtype {}, expected F32, BF16 or F16", file,
         w.scales, dtype_name(si.dtype));
  const Tensor s = stored(w.scales, si.shape, {}).contiguous().to(DType::kF32);
  const float* sv = s.data<float>();
  const bool by_group_first = f.kind == Kind::kGptq || f.kind == Kind::kAwq;
  const int64_t numel = s.numel();
  if (by_group_first ? (si.shape.size() != 2 || si.shape[1] != w.out)
                     : (numel != 1 && (si.shape.empty() || si.shape[0] != w.out)))
    fail("{}: scale \"{}\" has shape {}, which does not fit the [{}, {}] weight \"{}\"", file,
         w.scales, shape_str(si.shape), w.out, w.in, name);
  p.groups = numel == 1 ? 1 : numel / w.out;
  const int64_t gs = f.group_size;
  const int64_t expected = gs > 0 ? ceil_div(w.in, gs) : 1;
  if (p.groups != expected && !(numel == 1 && f.kind == Kind::kInt8))
    fail("{}: scale \"{}\" has {} group{} per row; group_size {} over {} inputs makes {}", file,
         w.scales, p.groups, p.groups == 1 ? "" : "s", gs > 0 ? std::to_string(gs) : "-1", w.in,
         expected);
  p.scales.resize(static_cast<size_t>(w.out * p.groups));
  for (int64_t r = 0; r < w.out; ++r)
    for (int64_t g = 0; g < p.groups; ++g)
      p.scales[r * p.groups + g] = numel == 1       ? sv[0]
                                   : by_group_first ? sv[g * w.out + r]
                                                    : sv[r * p.groups + g];
  // Each input's group: g_idx (act order), else consecutive inputs.
  p.group.resize(static_cast<size_t>(w.in));
  for (int64_t c = 0; c < w.in; ++c) p.group[c] = gs > 0 ? static_cast<int32_t>(c / gs) : 0;
  if (!w.g_idx.empty()) {
    const TensorInfo& gi = checkpoint_->info(w.g_idx);
    if ((gi.dtype != DType::kI32 && gi.dtype != DType::kI64) || gi.shape.size() != 1 ||
        gi.shape[0] != w.in)
      fail("{}: \"{}\" has dtype {} and shape {}, expected I32 [{}]", file, w.g_idx,
           dtype_name(gi.dtype), shape_str(gi.shape), w.in);
    const Tensor t = stored(w.g_idx, gi.shape, {}).contiguous();
    for (int64_t c = 0; c < w.in; ++c) {
      const int64_t g = gi.dtype == DType::kI64 ? t.data<int64_t>()[c] : t.data<int32_t>()[c];
      if (g < 0 || g >= p.groups)
        fail("{}: \"{}\"[{}] is {}, outside the {} groups", file, w.g_idx, c, g, p.groups);
      if (g != p.group[c]) p.contiguous = false;
      p.group[c] = static_cast<int32_t>(g);
    }
  }
  // Zero points, in the unsigned domain of the stored values (q - zero is the weight / scale).
  p.zeros.assign(static_cast<size_t>(w.out * p.groups),
                 static_cast<int16_t>(f.kind == Kind::kInt8 ? 0 : 1 << (bits - 1)));
  if (!w.zeros.empty()) {
    const TensorInfo& zi = checkpoint_->info(w.zeros);
    const Tensor z = stored(w.zeros, zi.shape, {}).contiguous();
    auto bad = [&] {
      fail(
          "{}: zero points \"{}\" have dtype {} and shape {}, which do not fit the [{}, {}] "
          "weight \"{}\" in {} groups",
          file, w.zeros, dtype_name(zi.dtype), shape_str(zi.shape), w.out, w.in, name, p.groups);
    };
    if (zi.shape.size() != 2 && !(f.kind == Kind::kInt8 && z.numel() == 1)) bad();
    if (f.kind == Kind::kGptq || f.kind == Kind::kAwq) {
      // [groups, out / per]: GPTQ in order (stored minus one unless gptq_v2), AWQ in its order.
      if (zi.dtype != DType::kI32 || zi.shape[0] != p.groups || zi.shape[1] != ceil_div(w.out, per))
        bad();
      const int32_t* zv = z.data<int32_t>();
      for (int64_t g = 0; g < p.groups; ++g)
        for (int64_t r = 0; r < w.out; ++r) {
          const int nibble = f.kind == Kind::kAwq ? kAwqNibble[r % per] : static_cast<int>(r % per);
          const uint32_t word = static_cast<uint32_t>(zv[g * zi.shape[1] + r / per]);
          const int zero = static_cast<int>((word >> (bits * nibble)) & mask) +
                           (f.kind == Kind::kGptq && !f.gptq_v2 ? 1 : 0);
          p.zeros[r * p.groups + g] = static_cast<int16_t>(zero);
        }
    } else if (f.kind == Kind::kPacked) {
      // Packed along the outputs, [ceil(out / per), groups], offset by 2^(bits-1); or unpacked
      // I8 [out, groups], signed.
      const int offset = 1 << (bits - 1);
      if (zi.dtype == DType::kI32 && zi.shape[0] == ceil_div(w.out, per) &&
          zi.shape[1] == p.groups) {
        for (int64_t r = 0; r < w.out; ++r)
          for (int64_t g = 0; g < p.groups; ++g) {
            const uint32_t word =
                static_cast<uint32_t>(z.data<int32_t>()[(r / per) * p.groups + g]);
            p.zeros[r * p.groups + g] = static_cast<int16_t>((word >> (bits * (r % per))) & mask);
          }
      } else if (zi.dtype == DType::kI8 && zi.shape[0] == w.out && zi.shape[1] == p.groups) {
        for (int64_t i = 0; i < w.out * p.groups; ++i)
          p.zeros[i] = static_cast<int16_t>(z.data<int8_t>()[i] + offset);
      } else {
        bad();
      }
    } else {  // kInt8: symmetric only; a stored zero point must be zero
      if (zi.dtype != DType::kI8) bad();
      for (int64_t i = 0; i < z.numel(); ++i)
        if (z.data<int8_t>()[i] != 0)
          fail(ErrorKind::kUnsupported,
               "{}: \"{}\" has non-zero zero points; asymmetric int8 weights are not supported",
               file, w.zeros);
    }
  }
  last_params_of_ = name;
  last_params_ = std::move(p);
  return last_params_;
}

std::vector<int16_t> WeightSource::int_values(const std::string& name, const IntWeight& w,
                                              Slice slice) {
  using Kind = IntWeights::Kind;
  const IntParams& p = int_params(name, w);
  const IntWeights& f = int_format_;
  const int bits = f.bits, per = 32 / bits;
  const uint32_t mask = (1u << bits) - 1;
  const int64_t r0 = slice.dim == 0 ? slice.begin : 0, r1 = slice.dim == 0 ? slice.end : w.out;
  const int64_t c0 = slice.dim == 1 ? slice.begin : 0, c1 = slice.dim == 1 ? slice.end : w.in;
  const int64_t rows = r1 - r0, cols = c1 - c0;
  // Read only the words of this slice: rows or columns of the stored tensor.
  const TensorInfo& info = checkpoint_->info(w.packed);
  Slice ps;
  int64_t pr0 = 0, pc0 = 0;  // the stored tensor's first row and column read
  const bool out_rows = f.kind == Kind::kPacked || f.kind == Kind::kInt8;  // stored [out, ...]
  const int64_t in_per = f.kind == Kind::kInt8 || f.kind == Kind::kAwq ? 1 : per;
  const int64_t out_per = f.kind == Kind::kAwq ? per : 1;
  if (slice.dim == 0) {
    const int64_t b = r0 / out_per,
                  e = std::min<int64_t>(ceil_div(r1, out_per), info.shape[out_rows ? 0 : 1]);
    ps = Slice{out_rows ? 0 : 1, b, e};
    (out_rows ? pr0 : pc0) = b;
  } else if (slice.dim == 1) {
    const int64_t b = c0 / in_per,
                  e = std::min<int64_t>(ceil_div(c1, in_per), info.shape[out_rows ? 1 : 0]);
    ps = Slice{out_rows ? 1 : 0, b, e};
    (out_rows ? pc0 : pr0) = b;
  }
  const Tensor t = stored(w.packed, info.shape, ps);
  if (!w.shape.empty()) used_.insert(w.shape);  // read by int_weight()
  ++int_weights_taken_;
  // What is resident is what the caller gets (codes or dequantized values), counted there.
  bytes_used_ -= t.nbytes();
  const int64_t ld = t.stride(0), cs = t.stride(1);
  std::vector<int16_t> v(static_cast<size_t>(rows * cols));
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t r = r0 + i;
      const int16_t* zero = p.zeros.data() + r * p.groups;
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t c = c0 + j;
        int q;
        if (f.kind == Kind::kInt8) {
          q = t.data<int8_t>()[(r - pr0) * ld + (c - pc0) * cs];
        } else {
          int64_t at;
          int nibble;
          if (f.kind == Kind::kGptq) {  // [in / per, out]
            at = (c / per - pr0) * ld + (r - pc0) * cs;
            nibble = static_cast<int>(c % per);
          } else if (f.kind == Kind::kAwq) {  // [in, out / per]
            at = (c - pr0) * ld + (r / per - pc0) * cs;
            nibble = kAwqNibble[r % per];
          } else {  // [out, in / per]
            at = (r - pr0) * ld + (c / per - pc0) * cs;
            nibble = static_cast<int>(c % per);
          }
          q = static_cast<int>((static_cast<uint32_t>(t.data<int32_t>()[at]) >> (bits * nibble)) &
                               mask);
        }
        v[i * cols + j] = static_cast<int16_t>(q - zero[p.group[c]]);
      }
    }
  };
  if (pool_)
    pool_->parallel_for(rows, body);
  else
    body(0, rows);
  return v;
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
  if (checkpoint_ != nullptr && format_ != LoadFormat::kDummy && int_format_.bits == 4)
    if (std::optional<IntWeight> w = int_weight(name)) {
      // 4-bit integers: q - zero (-15 to 15) as E4M3 codes, exact; the groups are the blocks.
      if (transposed) return std::nullopt;
      check_int_shape(name, *w, shape);
      const IntParams& p = int_params(name, *w);
      if (!p.contiguous) return std::nullopt;  // act order: get() dequantizes
      const std::vector<int16_t> v = int_values(name, *w, slice);
      const int64_t r0 = slice.dim == 0 ? slice.begin : 0, c0 = slice.dim == 1 ? slice.begin : 0;
      const int64_t rows = slice.dim == 0 ? slice.end - slice.begin : w->out;
      const int64_t cols = slice.dim == 1 ? slice.end - slice.begin : w->in;
      Fp8Rows out;
      out.codes = Tensor::empty({rows, cols}, DType::kF8E4M3);
      uint8_t* codes = out.codes.data<uint8_t>();
      uint8_t code_of[31];  // q - zero in [-15, 15]
      for (int i = 0; i < 31; ++i) code_of[i] = f32_to_fp8_e4m3(static_cast<float>(i - 15));
      auto convert = [&](int64_t b, int64_t e) {
        for (int64_t i = b * cols; i < e * cols; ++i) codes[i] = code_of[v[i] + 15];
      };
      if (pool_)
        pool_->parallel_for(rows, convert);
      else
        convert(0, rows);
      bytes_used_ += out.codes.nbytes();
      if (p.groups == 1) {
        out.scales = Tensor::empty({rows}, DType::kF32);
        for (int64_t r = 0; r < rows; ++r) out.scales.data<float>()[r] = p.scales[r0 + r];
        bytes_used_ += out.scales.nbytes();
        return out;
      }
      const int64_t gs = int_format_.group_size;
      out.block_cols = gs;
      out.block_offset = c0 % gs;
      const int64_t chunks = ceil_div(cols + out.block_offset, gs);
      out.scales = Tensor::empty({rows, chunks}, DType::kF32);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < chunks; ++b)
          out.scales.data<float>()[r * chunks + b] =
              p.scales[(r0 + r) * p.groups +
                       (c0 + std::max<int64_t>(0, b * gs - out.block_offset)) / gs];
      bytes_used_ += out.scales.nbytes();
      return out;
    }
  if (!has(name) || !checkpoint_->contains(name) || checkpoint_->info(name).dtype != DType::kF8E4M3)
    return std::nullopt;
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

void WeightSource::check_int_shape(const std::string& name, const IntWeight& w,
                                   std::span<const int64_t> shape) const {
  if (shape.size() != 2 || shape[0] != w.out || shape[1] != w.in)
    fail("{}: integer weight \"{}\" (stored as \"{}\") is [{}, {}], expected {}",
         checkpoint_->file_of(w.packed), name, w.packed, w.out, w.in, shape_str(shape));
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
    if (std::optional<IntWeight> w = int_weight(name)) {
      // An integer weight: w = scale * (q - zero), rounded once.
      check_int_shape(name, *w, shape);
      if (slice.dim >= 0)
        TESSERA_CHECK(slice.dim < 2 && 0 <= slice.begin && slice.begin <= slice.end &&
                      slice.end <= shape[slice.dim])
            << name << " slice";
      const IntParams& p = int_params(name, *w);
      const std::vector<int16_t> v = int_values(name, *w, slice);
      const int64_t r0 = slice.dim == 0 ? slice.begin : 0, c0 = slice.dim == 1 ? slice.begin : 0;
      const int64_t rows = slice.dim == 0 ? slice.end - slice.begin : w->out;
      const int64_t cols = slice.dim == 1 ? slice.end - slice.begin : w->in;
      t = Tensor::empty({rows, cols}, convert_to_.value_or(dequantized_));
      auto body = [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const float* s = p.scales.data() + (r0 + r) * p.groups;
          for (int64_t c = 0; c < cols; ++c)
            store_from_f32(t.raw(), t.dtype(), r * cols + c,
                           s[p.group[c0 + c]] * static_cast<float>(v[r * cols + c]));
        }
      };
      if (pool_)
        pool_->parallel_for(rows, body);
      else
        body(0, rows);
      bytes_used_ += t.nbytes();
      return t;
    }
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
