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

class WeightSource {
 public:
  // `checkpoint` may be null only for kDummy. `pool` parallelises reads.
  WeightSource(const Checkpoint* checkpoint, LoadFormat format, ThreadPool* pool,
               DType dummy_dtype);
  // Weights stored in another float dtype are converted to this one.
  void convert_to(DType dtype) { convert_to_ = dtype; }

  bool has(const std::string& name) const;
  // The tensor `name`, which must exist with exactly `shape` and a float dtype, cut to `slice`.
  Tensor get(const std::string& name, std::span<const int64_t> shape, Slice slice = {});
  Tensor get(const std::string& name, std::initializer_list<int64_t> shape, Slice slice = {}) {
    return get(name, std::span<const int64_t>(shape.begin(), shape.size()), slice);
  }
  // Marks a tensor as known but unused (e.g. rotary_emb.inv_freq in old checkpoints).
  void ignore(const std::string& name) { used_.insert(name); }
  // Marks every tensor whose name starts with `prefix` (another pipeline stage's layers).
  void ignore_prefix(const std::string& prefix);
  // Throws listing the checkpoint tensors nobody took.
  void check_all_used() const;
  // mmap format: drops the mapped pages of the tensor returned last (get() does it for the one
  // before): the layers have prepared it, so a backend's own copy does not count twice. Always
  // safe: a later read faults the same bytes back.
  void release_last_mapped();
  // Bytes of the slices taken (this rank's share) and bytes actually read from files.
  uint64_t bytes_used() const { return bytes_used_; }
  uint64_t bytes_read() const { return bytes_read_; }
  // Wall time spent reading files (pread path), for the GB/s of the start-up log.
  double read_seconds() const { return read_seconds_; }
  LoadFormat format() const { return format_; }

 private:
  Tensor read_slice(const std::string& name, const TensorInfo& info, Slice slice);
  Tensor dummy(const std::string& name, std::span<const int64_t> shape, Slice slice);

  const Checkpoint* checkpoint_;
  LoadFormat format_;
  ThreadPool* pool_;
  DType dummy_dtype_;
  std::optional<DType> convert_to_;
  std::set<std::string> used_;
  std::string last_mapped_;  // mmap format: the tensor whose pages go at the next get()
  uint64_t bytes_used_ = 0, bytes_read_ = 0;
  double read_seconds_ = 0;
};

}  // namespace tessera
