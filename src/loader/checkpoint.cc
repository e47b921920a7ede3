#include "loader/checkpoint.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/status.h"

namespace tessera {

namespace fs = std::filesystem;
using nlohmann::json;

Checkpoint Checkpoint::open(const fs::path& dir) {
  if (!fs::is_directory(dir))
    fail(ErrorKind::kNotFound, "model folder {} does not exist", dir.string());
  Checkpoint ckpt;
  auto add_file = [&](const fs::path& path) -> size_t {
    for (size_t i = 0; i < ckpt.files_.size(); ++i)
      if (ckpt.files_[i]->path() == path) return i;
    ckpt.files_.push_back(SafetensorsFile::open(path));
    return ckpt.files_.size() - 1;
  };
  const fs::path index_path = dir / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    std::ifstream in(index_path);
    std::stringstream buf;
    buf << in.rdbuf();
    json index;
    try {
      index = json::parse(buf.str());
    } catch (const json::exception& e) {
      fail("{} is not valid JSON: {}", index_path.string(), e.what());
    }
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      fail("{}: missing \"weight_map\"", index_path.string());
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      if (!it.value().is_string())
        fail("{}: weight_map[\"{}\"] is not a file name", index_path.string(), it.key());
      const std::string shard = it.value().get<std::string>();
      if (shard.find('/') != std::string::npos || shard.find("..") != std::string::npos)
        fail("{}: weight_map[\"{}\"] names a file outside the folder: {}", index_path.string(),
             it.key(), shard);
      const fs::path shard_path = dir / shard;
      if (!fs::exists(shard_path))
        fail(ErrorKind::kNotFound, "{}: shard {} (holding \"{}\") is missing", index_path.string(),
             shard, it.key());
      size_t f = add_file(shard_path);
      if (!ckpt.files_[f]->tensors().count(it.key()))
        fail("{}: tensor \"{}\" is listed in {} but not stored there", shard_path.string(),
             it.key(), index_path.filename().string());
      ckpt.where_[it.key()] = f;
    }
  } else {
    std::vector<fs::path> paths;
    if (fs::exists(dir / "model.safetensors")) {
      paths.push_back(dir / "model.safetensors");
    } else {
      for (const auto& entry : fs::directory_iterator(dir)) {
        const std::string name = entry.path().filename().string();
        if (entry.path().extension() == ".safetensors" && !name.starts_with("consolidated"))
          paths.push_back(entry.path());
      }
      std::sort(paths.begin(), paths.end());
    }
    if (paths.empty())
      fail(ErrorKind::kNotFound,
           "{} has no model.safetensors, model.safetensors.index.json or *.safetensors files",
           dir.string());
    for (const auto& p : paths) {
      size_t f = add_file(p);
      for (const auto& [name, info] : ckpt.files_[f]->tensors()) {
        auto [it, inserted] = ckpt.where_.emplace(name, f);
        if (!inserted)
          fail("tensor \"{}\" is stored twice: in {} and {}", name,
               ckpt.files_[it->second]->path().string(), p.string());
      }
    }
  }
  return ckpt;
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
  auto it = where_.find(name);
  TESSERA_CHECK(it != where_.end()) << name;
  return files_[it->second]->tensors().at(name);
}

Tensor Checkpoint::tensor(const std::string& name) const {
  auto it = where_.find(name);
  TESSERA_CHECK(it != where_.end()) << name;
  return files_[it->second]->tensor(name);
}

std::string Checkpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  return it == where_.end() ? std::string("?") : files_[it->second]->path().filename().string();
}

const SafetensorsFile& Checkpoint::file(const std::string& name) const {
  auto it = where_.find(name);
  TESSERA_CHECK(it != where_.end()) << name;
  return *files_[it->second];
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, f] : where_) out.push_back(name);
  return out;
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, f] : where_) {
    const TensorInfo& i = files_[f]->tensors().at(name);
    total += i.end - i.begin;
  }
  return total;
}

}  // namespace tessera
