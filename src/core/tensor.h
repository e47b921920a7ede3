// A typed, strided view of memory with shared ownership of whatever backs it (a heap buffer, a
// memory-mapped file, device memory). Copies of a Tensor share the data.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>

#include "core/dtype.h"
#include "core/status.h"

namespace tessera {

enum class Device : uint8_t { kCPU, kCUDA };

inline constexpr int kMaxDims = 4;

class Tensor {
 public:
  Tensor() = default;

  // Uninitialised CPU memory, 64-byte aligned, contiguous.
  static Tensor empty(std::span<const int64_t> shape, DType dtype);
  static Tensor empty(std::initializer_list<int64_t> shape, DType dtype) {
    return empty(std::span<const int64_t>(shape.begin(), shape.size()), dtype);
  }
  static Tensor zeros(std::initializer_list<int64_t> shape, DType dtype);
  // Wraps memory owned elsewhere; `owner` keeps it alive (may be null for borrowed memory).
  static Tensor wrap(void* data, std::span<const int64_t> shape, DType dtype,
                     std::shared_ptr<void> owner, Device device = Device::kCPU);

  bool defined() const { return data_ != nullptr || ndim_ > 0; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  int dim() const { return ndim_; }
  int64_t size(int d) const;
  int64_t stride(int d) const;
  std::span<const int64_t> shape() const { return {shape_.data(), static_cast<size_t>(ndim_)}; }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  std::string shape_string() const;

  void* raw() const { return data_; }
  template <typename T>
  T* data() const {
    return static_cast<T*>(data_);
  }

  // Same data, new contiguous shape (numel must match; tensor must be contiguous).
  Tensor reshape(std::initializer_list<int64_t> shape) const;
  Tensor reshape(std::span<const int64_t> shape) const;
  // Elements [begin, end) along dimension d; shares data, keeps strides.
  Tensor slice(int d, int64_t begin, int64_t end) const;
  // Splits dimension d of size n into [n / inner, inner] (a view; strides follow).
  Tensor split_dim(int d, int64_t inner) const;
  // Index along dimension 0, dropping it.
  Tensor operator[](int64_t i) const;
  // A contiguous copy (CPU only).
  Tensor contiguous() const;
  // A contiguous copy of a 2-d [rows, cols] tensor as [cols, rows] (CPU only): GPT-2's Conv1D
  // weights are stored [in, out] where linear layers take [out, in].
  Tensor transposed() const;
  // Converting copy to a float dtype (CPU only, contiguous result).
  Tensor to(DType dtype) const;

  const std::shared_ptr<void>& owner() const { return owner_; }

  // 0: the strided layout that the shape and strides describe. Other values name a backend's
  // packed format (a weight rearranged for its kernels, e.g. kernels/cpu's bf16 tiles): the shape
  // stays the logical one, the bytes are that backend's business, and views (reshape, slice,
  // indexing, copies) refuse the tensor.
  uint8_t layout() const { return layout_; }
  Tensor with_layout(uint8_t layout) const {
    Tensor t = *this;
    t.layout_ = layout;
    return t;
  }

 private:
  void* data_ = nullptr;
  std::shared_ptr<void> owner_;
  std::array<int64_t, kMaxDims> shape_{};
  std::array<int64_t, kMaxDims> strides_{};
  int ndim_ = 0;
  DType dtype_ = DType::kF32;
  Device device_ = Device::kCPU;
  uint8_t layout_ = 0;
};

// Reads element i of a contiguous float tensor (any float dtype) as f32. For tests and cold paths.
float load_as_f32(const void* data, DType dtype, int64_t i);
void store_from_f32(void* data, DType dtype, int64_t i, float value);

}  // namespace tessera
