// The safetensors format (our own reader; no C++ library for it exists in Debian): an 8-byte
// little-endian header length N, N bytes of JSON {"name": {"dtype", "shape", "data_offsets":
// [begin, end]}, "__metadata__": {...}}, then the data. Files are memory-mapped and tensors are
// views of the mapping: weights are never copied.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace tessera {

struct TensorInfo {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range within the data section
};

// The parsed header of a safetensors file; `data_size` is the size of the data section.
// Throws tessera::Error naming `source` on any inconsistency.
std::map<std::string, TensorInfo> parse_safetensors_header(std::string_view header,
                                                           uint64_t data_size,
                                                           const std::string& source);

class SafetensorsFile {
 public:
  // Maps the file read-only and validates the header.
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);
  ~SafetensorsFile();

  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  uint64_t file_size() const { return size_; }
  // A view of the named tensor (keeps the mapping alive).
  Tensor tensor(const std::string& name) const;
  // Start of the data section within the file (for pread-based loading).
  uint64_t data_offset() const { return data_offset_; }
  // Reads `bytes` at file offset `offset` into dst with pread (no page faults on the mapping);
  // throws on an I/O error or a short read.
  void read(uint64_t offset, uint64_t bytes, void* dst) const;
  // Asks the kernel to start reading [offset, offset + bytes) in the background (readahead for
  // the tensors after the one being read); clipped to the file, never fails.
  void prefetch(uint64_t offset, uint64_t bytes) const;
  // Drops the resident pages inside [offset, offset + bytes) of the mapping from this process
  // (they stay in the page cache, and a later read faults them back with the same bytes): after
  // the backend has copied a weight into its own layout, its mapped pages stop counting twice.
  void release_pages(uint64_t offset, uint64_t bytes) const;

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  std::shared_ptr<void> mapping_;
  std::shared_ptr<int> fd_;
  const char* base_ = nullptr;
  uint64_t size_ = 0;
  uint64_t data_offset_ = 0;
  std::map<std::string, TensorInfo> tensors_;
};

// Streams a safetensors file: the header (padded to 8 bytes) is written from the tensors'
// names, dtypes and shapes, then each tensor's bytes are appended in the same order.
class SafetensorsWriter {
 public:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t bytes() const;
  };
  SafetensorsWriter(const std::filesystem::path& path, std::vector<Entry> entries,
                    const std::map<std::string, std::string>& metadata = {});
  // Appends the next tensor's data; `bytes` must match its entry.
  void append(const void* data, uint64_t bytes);
  // Checks that every tensor was written and flushes; throws on an I/O error.
  void finish();

 private:
  std::filesystem::path path_;
  std::vector<Entry> entries_;
  size_t next_ = 0;
  std::unique_ptr<std::ofstream> out_;
};

// Writes tensors (contiguous, CPU) in name order.
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace tessera
