// A Hugging Face model folder's weights: model.safetensors, or shards listed by
// model.safetensors.index.json, or every *.safetensors file. Tensors are views of the mappings.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "loader/safetensors.h"

namespace tessera {

class Checkpoint {
 public:
  // Throws tessera::Error on a missing folder, missing shard, malformed index or file.
  static Checkpoint open(const std::filesystem::path& model_dir);

  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  Tensor tensor(const std::string& name) const;
  // The file holding `name` (for messages).
  std::string file_of(const std::string& name) const;
  std::vector<std::string> names() const;
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }
  uint64_t total_bytes() const;

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index in files_
};

// Hands out checkpoint tensors to the model, checking names, shapes and dtypes, and remembers
// which were taken so that leftovers can be reported as unexpected.
class WeightSource {
 public:
  explicit WeightSource(const Checkpoint& checkpoint) : checkpoint_(checkpoint) {}
  // Weights stored in another float dtype are converted (copied) to this one.
  void convert_to(DType dtype) { convert_to_ = dtype; }

  bool has(const std::string& name) const { return checkpoint_.contains(name); }
  // The tensor, which must exist with exactly `shape` and a float dtype.
  Tensor get(const std::string& name, std::initializer_list<int64_t> shape);
  Tensor get(const std::string& name, std::span<const int64_t> shape);
  // Marks a tensor as known but unused (e.g. rotary_emb.inv_freq in old checkpoints).
  void ignore(const std::string& name) { used_.insert(name); }
  // Throws listing the checkpoint tensors nobody took.
  void check_all_used() const;
  uint64_t bytes_used() const { return bytes_used_; }

 private:
  const Checkpoint& checkpoint_;
  std::optional<DType> convert_to_;
  std::set<std::string> used_;
  uint64_t bytes_used_ = 0;
};

}  // namespace tessera
