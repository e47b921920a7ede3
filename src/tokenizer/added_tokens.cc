#include "tokenizer/added_tokens.h"

#include "tokenizer/utf8.h"

namespace tessera::tokenizer {
namespace {

// Word characters for single_word: alphanumeric or '_' (as Hugging Face checks).
bool is_word_char(char32_t cp) {
  return cp == U'_' || is_alphanumeric(cp);
}

char32_t last_char(std::string_view s) {
  size_t start = s.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  return utf8_next(s, start);
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(std::vector<std::string> patterns,
                                     std::vector<const AddedToken*> tokens)
    : patterns_(std::move(patterns)), tokens_(std::move(tokens)) {
  terminal_.push_back(-1);
  for (size_t i = 0; i < patterns_.size(); ++i) {
    const std::string& p = patterns_[i];
    if (p.empty()) continue;
    first_byte_[static_cast<unsigned char>(p[0])] = true;
    int32_t node = 0;
    for (const char c : p) {
      const uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(c);
      auto it = edges_.find(key);
      if (it == edges_.end()) {
        const auto child = static_cast<int32_t>(terminal_.size());
        terminal_.push_back(-1);
        it = edges_.emplace(key, child).first;
      }
      node = it->second;
    }
    // The first token with a given content wins.
    if (terminal_[node] < 0) terminal_[node] = static_cast<int32_t>(i);
  }
}

std::vector<Segment> AddedTokenMatcher::split(std::string_view text) const {
  std::vector<Segment> segments;
  if (tokens_.empty()) {
    if (!text.empty()) segments.push_back({text, -1});
    return segments;
  }
  size_t emitted = 0;  // text before this is in `segments`
  size_t pos = 0;
  while (pos < text.size()) {
    if (!first_byte_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    // Longest token starting at pos.
    int32_t best = -1;
    size_t best_end = 0;
    int32_t node = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      const uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(text[i]);
      auto it = edges_.find(key);
      if (it == edges_.end()) break;
      node = it->second;
      if (terminal_[node] >= 0) {
        best = terminal_[node];
        best_end = i + 1;
      }
    }
    if (best < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = *tokens_[best];
    size_t start = pos, stop = best_end;
    if (token.single_word) {
      const bool word_before = start > 0 && is_word_char(last_char(text.substr(0, start)));
      size_t after = stop;
      const bool word_after = stop < text.size() && is_word_char(utf8_next(text, after));
      if (word_before || word_after) {
        pos = best_end;  // a rejected match is still consumed, as in Hugging Face
        continue;
      }
    }
    if (token.lstrip) {
      while (start > emitted) {
        const std::string_view before = text.substr(0, start);
        const char32_t cp = last_char(before);
        if (!is_whitespace(cp)) break;
        size_t len = 1;
        while ((static_cast<unsigned char>(before[before.size() - len]) & 0xC0) == 0x80) ++len;
        start -= len;
      }
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        size_t next = stop;
        if (!is_whitespace(utf8_next(text, next))) break;
        stop = next;
      }
    }
    if (start > emitted) segments.push_back({text.substr(emitted, start - emitted), -1});
    segments.push_back({text.substr(start, stop - start), token.id});
    emitted = pos = stop;
  }
  if (emitted < text.size()) segments.push_back({text.substr(emitted), -1});
  return segments;
}

}  // namespace tessera::tokenizer
