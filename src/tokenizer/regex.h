// PCRE2 (UTF + UCP, JIT) wrapper for the tokenizer's patterns: Split/Replace `{"Regex": ...}` and
// `{"String": ...}` (a literal).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace tessera::tokenizer {

class Regex {
 public:
  // `literal`: the pattern is matched as plain text. Throws tessera::Error on a bad pattern.
  Regex(std::string_view pattern, bool literal);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Non-overlapping, non-empty matches in valid UTF-8 `text` as [begin, end) byte offsets.
  // Thread-safe.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;
  // The same into `matches` (cleared first), reusing its memory.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& matches) const;
  // Every match replaced by `replacement` (taken literally).
  std::string replace_all(std::string_view text, std::string_view replacement) const;

 private:
  void* code_;           // pcre2_code*
  std::string literal_;  // for literal patterns we search without PCRE2
};

// Parses a Hugging Face pattern object: {"String": "..."} or {"Regex": "..."}.
std::unique_ptr<Regex> parse_pattern(const nlohmann::json& pattern);

}  // namespace tessera::tokenizer
