// tokenizer.json "added_tokens": tokens matched in the raw (or normalized) text before the model
// runs, longest match first, with the lstrip/rstrip/single_word flags.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace tessera::tokenizer {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool single_word = false;
};

// One segment of a split: either plain text or a matched added token.
struct Segment {
  std::string_view text;  // points into the split string
  int32_t id = -1;        // >= 0 for an added token
};

// Leftmost-longest matcher over a set of token strings (a byte trie).
class AddedTokenMatcher {
 public:
  // `patterns[i]` is the text to match for `tokens[i]`.
  AddedTokenMatcher(std::vector<std::string> patterns, std::vector<const AddedToken*> tokens);
  AddedTokenMatcher() = default;
  // Splits `text` into segments; empty text segments are omitted.
  std::vector<Segment> split(std::string_view text) const;
  bool empty() const { return tokens_.empty(); }

 private:
  // Edge (node << 8 | byte) -> child node.
  std::unordered_map<uint64_t, int32_t> edges_;
  std::vector<int32_t> terminal_;  // node -> index into tokens_, or -1
  std::vector<std::string> patterns_;
  std::vector<const AddedToken*> tokens_;
  bool first_byte_[256] = {};
};

}  // namespace tessera::tokenizer
