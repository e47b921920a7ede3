#include "core/tensor.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string_view>

namespace tessera {

namespace {

int64_t product(std::span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

}  // namespace

Tensor Tensor::wrap(void* data, std::span<const int64_t> shape, DType dtype,
                    std::shared_ptr<void> owner, Device device) {
  TESSERA_CHECK_LE(static_cast<int>(shape.size()), kMaxDims);
  Tensor t;
  t.data_ = data;
  t.owner_ = std::move(owner);
  t.ndim_ = static_cast<int>(shape.size());
  t.dtype_ = dtype;
  t.device_ = device;
  int64_t stride = 1;
  for (int d = t.ndim_ - 1; d >= 0; --d) {
    TESSERA_CHECK_GE(shape[d], 0);
    t.shape_[d] = shape[d];
    t.strides_[d] = stride;
    stride *= shape[d];
  }
  return t;
}

Tensor Tensor::empty(std::span<const int64_t> shape, DType dtype) {
  const size_t bytes = static_cast<size_t>(product(shape)) * dtype_size(dtype);
  // Large buffers (weights, the KV cache) are mapped directly: the memory is committed as it is
  // first written and reads as zeros until then. Transparent huge pages follow the system's
  // setting; TESSERA_THP=1 asks for them (madvise). The packed GEMM runs no faster with them,
  // and first-touching fresh huge pages can cost seconds per GB (docs/models.md).
  constexpr size_t kLarge = 4u << 20, kHuge = 2u << 20;
  if (bytes >= kLarge) {
    // Over-map by one huge page and start at a 2 MiB boundary: huge pages need aligned ranges.
    const size_t mapped = bytes + kHuge;
    void* base = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TESSERA_CHECK(base != MAP_FAILED) << "out of memory mapping " << bytes << " bytes";
    const uintptr_t aligned = (reinterpret_cast<uintptr_t>(base) + kHuge - 1) & ~(kHuge - 1);
    void* data = reinterpret_cast<void*>(aligned);
    if (const char* thp = std::getenv("TESSERA_THP"); thp && std::string_view(thp) == "1")
      madvise(data, bytes, MADV_HUGEPAGE);
    std::shared_ptr<void> owner(base, [mapped](void* p) { munmap(p, mapped); });
    return wrap(data, shape, dtype, std::move(owner));
  }
  const size_t rounded = std::max<size_t>((bytes + 63) / 64 * 64, 64);
  void* data = std::aligned_alloc(64, rounded);
  TESSERA_CHECK(data != nullptr) << "out of memory allocating " << bytes << " bytes";
  std::shared_ptr<void> owner(data, [](void* p) { std::free(p); });
  return wrap(data, shape, dtype, std::move(owner));
}

Tensor Tensor::zeros(std::initializer_list<int64_t> shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  std::memset(t.raw(), 0, t.nbytes());
  return t;
}

int64_t Tensor::size(int d) const {
  if (d < 0) d += ndim_;
  TESSERA_CHECK(d >= 0 && d < ndim_) << "dim " << d << " of a " << ndim_ << "-d tensor";
  return shape_[d];
}

int64_t Tensor::stride(int d) const {
  if (d < 0) d += ndim_;
  TESSERA_CHECK(d >= 0 && d < ndim_) << "dim " << d << " of a " << ndim_ << "-d tensor";
  return strides_[d];
}

int64_t Tensor::numel() const {
  return product(shape());
}

bool Tensor::is_contiguous() const {
  int64_t stride = 1;
  for (int d = ndim_ - 1; d >= 0; --d) {
    if (shape_[d] != 1 && strides_[d] != stride) return false;
    stride *= shape_[d];
  }
  return true;
}

std::string Tensor::shape_string() const {
  std::string s = "[";
  for (int d = 0; d < ndim_; ++d) {
    if (d) s += ", ";
    s += std::to_string(shape_[d]);
  }
  return s + "]";
}

Tensor Tensor::reshape(std::initializer_list<int64_t> shape) const {
  return reshape(std::span<const int64_t>(shape.begin(), shape.size()));
}

Tensor Tensor::reshape(std::span<const int64_t> shape) const {
  TESSERA_CHECK(layout_ == 0) << "view of a packed tensor " << shape_string();
  TESSERA_CHECK(is_contiguous()) << "reshape of a strided tensor " << shape_string();
  TESSERA_CHECK_EQ(product(shape), numel());
  return wrap(data_, shape, dtype_, owner_, device_);
}

Tensor Tensor::slice(int d, int64_t begin, int64_t end) const {
  TESSERA_CHECK(layout_ == 0) << "view of a packed tensor " << shape_string();
  if (d < 0) d += ndim_;
  TESSERA_CHECK(d >= 0 && d < ndim_);
  TESSERA_CHECK(0 <= begin && begin <= end && end <= shape_[d])
      << "slice [" << begin << ", " << end << ") of " << shape_string();
  Tensor t = *this;
  t.data_ = static_cast<char*>(data_) + begin * strides_[d] * dtype_size(dtype_);
  t.shape_[d] = end - begin;
  return t;
}

Tensor Tensor::split_dim(int d, int64_t inner) const {
  TESSERA_CHECK(layout_ == 0) << "view of a packed tensor " << shape_string();
  if (d < 0) d += ndim_;
  TESSERA_CHECK(d >= 0 && d < ndim_ && ndim_ < kMaxDims);
  TESSERA_CHECK(inner > 0 && shape_[d] % inner == 0)
      << "split " << shape_string() << " by " << inner;
  Tensor t = *this;
  for (int i = ndim_; i > d + 1; --i) {
    t.shape_[i] = shape_[i - 1];
    t.strides_[i] = strides_[i - 1];
  }
  t.shape_[d] = shape_[d] / inner;
  t.strides_[d] = strides_[d] * inner;
  t.shape_[d + 1] = inner;
  t.strides_[d + 1] = strides_[d];
  t.ndim_ = ndim_ + 1;
  return t;
}

Tensor Tensor::operator[](int64_t i) const {
  TESSERA_CHECK(layout_ == 0) << "view of a packed tensor " << shape_string();
  TESSERA_CHECK_GE(ndim_, 1);
  TESSERA_CHECK(0 <= i && i < shape_[0]) << "index " << i << " of " << shape_string();
  Tensor t;
  t.data_ = static_cast<char*>(data_) + i * strides_[0] * dtype_size(dtype_);
  t.owner_ = owner_;
  t.ndim_ = ndim_ - 1;
  t.dtype_ = dtype_;
  t.device_ = device_;
  for (int d = 1; d < ndim_; ++d) {
    t.shape_[d - 1] = shape_[d];
    t.strides_[d - 1] = strides_[d];
  }
  return t;
}

Tensor Tensor::contiguous() const {
  TESSERA_CHECK(layout_ == 0) << "view of a packed tensor " << shape_string();
  TESSERA_CHECK(device_ == Device::kCPU);
  if (is_contiguous()) return *this;
  Tensor out = empty(shape(), dtype_);
  size_t elem = dtype_size(dtype_);
  // Copy row by row along the last dimension, which is contiguous for every tensor we make.
  TESSERA_CHECK(ndim_ >= 1 && strides_[ndim_ - 1] == 1);
  int64_t rows = numel() / std::max<int64_t>(shape_[ndim_ - 1], 1);
  int64_t row_bytes = shape_[ndim_ - 1] * static_cast<int64_t>(elem);
  std::array<int64_t, kMaxDims> index{};
  for (int64_t r = 0; r < rows; ++r) {
    int64_t offset = 0;
    for (int d = 0; d < ndim_ - 1; ++d) offset += index[d] * strides_[d];
    std::memcpy(static_cast<char*>(out.raw()) + r * row_bytes,
                static_cast<const char*>(data_) + offset * static_cast<int64_t>(elem),
                static_cast<size_t>(row_bytes));
    for (int d = ndim_ - 2; d >= 0; --d) {
      if (++index[d] < shape_[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

Tensor Tensor::transposed() const {
  TESSERA_CHECK(layout_ == 0) << "view of a packed tensor " << shape_string();
  TESSERA_CHECK(device_ == Device::kCPU && ndim_ == 2) << "transpose of " << shape_string();
  const int64_t rows = shape_[0], cols = shape_[1];
  Tensor out = empty({cols, rows}, dtype_);
  const size_t elem = dtype_size(dtype_);
  const char* src = static_cast<const char*>(data_);
  char* dst = static_cast<char*>(out.raw());
  // Blocks of 32 x 32 elements keep both sides in cache.
  constexpr int64_t kBlock = 32;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock)
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock)
      for (int64_t r = r0; r < std::min(rows, r0 + kBlock); ++r)
        for (int64_t c = c0; c < std::min(cols, c0 + kBlock); ++c)
          std::memcpy(dst + (c * rows + r) * elem, src + (r * strides_[0] + c * strides_[1]) * elem,
                      elem);
  return out;
}

Tensor Tensor::to(DType dtype) const {
  TESSERA_CHECK(layout_ == 0) << "view of a packed tensor " << shape_string();
  TESSERA_CHECK(is_float(dtype) && is_float(dtype_));
  Tensor src = contiguous();
  Tensor out = empty(shape(), dtype);
  int64_t n = numel();
  for (int64_t i = 0; i < n; ++i)
    store_from_f32(out.raw(), dtype, i, load_as_f32(src.raw(), dtype_, i));
  return out;
}

float load_as_f32(const void* data, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kF32:
      return static_cast<const float*>(data)[i];
    case DType::kBF16:
      return bf16_to_f32(static_cast<const uint16_t*>(data)[i]);
    case DType::kF16:
      return f16_to_f32(static_cast<const uint16_t*>(data)[i]);
    case DType::kF64:
      return static_cast<float>(static_cast<const double*>(data)[i]);
    case DType::kF8E4M3:
      return fp8_e4m3_to_f32(static_cast<const uint8_t*>(data)[i]);
    default:
      TESSERA_CHECK(false) << "not a float dtype: " << dtype_name(dtype);
  }
  return 0;
}

void store_from_f32(void* data, DType dtype, int64_t i, float value) {
  switch (dtype) {
    case DType::kF32:
      static_cast<float*>(data)[i] = value;
      break;
    case DType::kBF16:
      static_cast<uint16_t*>(data)[i] = f32_to_bf16(value);
      break;
    case DType::kF16:
      static_cast<uint16_t*>(data)[i] = f32_to_f16(value);
      break;
    case DType::kF64:
      static_cast<double*>(data)[i] = value;
      break;
    case DType::kF8E4M3:  // an FP8 KV cache (scale 1, saturating at +-448)
      static_cast<uint8_t*>(data)[i] = f32_to_fp8_e4m3(value);
      break;
    default:
      TESSERA_CHECK(false) << "not a float dtype: " << dtype_name(dtype);
  }
}

}  // namespace tessera
