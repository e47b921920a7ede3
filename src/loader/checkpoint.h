// A Hugging Face model folder's weights: model.safetensors, or shards listed by
// model.safetensors.index.json, or every *.safetensors file. Tensors are views of the mappings.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
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
  // The file holding `name`: its name (for messages) and the file itself.
  std::string file_of(const std::string& name) const;
  const SafetensorsFile& file(const std::string& name) const;
  std::vector<std::string> names() const;
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }
  uint64_t total_bytes() const;

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index in files_
};

}  // namespace tessera
