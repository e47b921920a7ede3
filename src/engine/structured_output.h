// Structured outputs (vLLM's response_format json_object / json_schema, guided_json,
// guided_choice): the sampler only lets through tokens that keep the output a prefix of a text
// the grammar accepts, and the sequence ends once the text is complete.
//
// The grammar is a JSON Schema subset compiled to nodes (object, array, string, number,
// integer, boolean, null, enum/const, anyOf/oneOf/type lists, $ref into $defs/definitions,
// items, minItems/maxItems, properties, required, additionalProperties, string patterns), or a
// regular expression (guided_regex), matched byte by byte by
// a pushdown automaton (one stack per way of reading the text: anyOf alternatives that begin
// alike are followed side by side). Whitespace between tokens is allowed (a line break, then up
// to kMaxWhitespaceRun spaces or tabs) so that pretty-printed JSON passes. Written here: no Debian
// library constrains decoding (vLLM uses xgrammar or outlines).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tessera {

inline constexpr int kMaxWhitespaceRun = 16;

// What each token id adds to the text (decoded mid-text; empty for special and unknown ids), in
// the forms the mask computation needs. Built once per tokenizer and shared.
class TokenVocabulary {
 public:
  TokenVocabulary(std::vector<std::string> texts, std::vector<int32_t> eos_ids);
  int64_t size() const { return static_cast<int64_t>(texts_.size()); }
  const std::string& text(int32_t id) const { return texts_[id]; }
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }

 private:
  friend class GrammarMatcher;
  std::vector<std::string> texts_;
  std::vector<int32_t> eos_ids_;
  std::vector<int32_t> sorted_;    // non-empty ids in byte order of their text
  std::vector<int32_t> lcp_;       // lcp_[i]: common prefix of sorted_[i - 1] and sorted_[i]
  std::vector<char> string_safe_;  // [vocab]: no '"', '\\' or control byte
  std::vector<int32_t> string_unsafe_ids_;  // the other non-empty ids
};

struct GrammarNode;

// A compiled grammar; immutable, shared by every sequence of a request.
class Grammar {
 public:
  // A JSON Schema (a boolean true/{} accepts any JSON value). Throws tessera::Error
  // (kInvalidArgument) naming what is not supported.
  // any_whitespace false: no whitespace between tokens (vLLM's disable_any_whitespace).
  static std::shared_ptr<const Grammar> from_json_schema(const nlohmann::json& schema,
                                                         bool any_whitespace = true);
  // Any JSON object (response_format json_object).
  static std::shared_ptr<const Grammar> any_json_object();
  // Exactly one of these texts (guided_choice).
  static std::shared_ptr<const Grammar> choice(const std::vector<std::string>& options);
  // Text that the regular expression matches whole (guided_regex; engine/regex_dfa.h). Throws
  // tessera::Error naming what it cannot compile.
  static std::shared_ptr<const Grammar> regex(const std::string& pattern);

  ~Grammar();
  const GrammarNode* root() const { return root_; }

 private:
  Grammar();
  GrammarNode* add();
  std::vector<std::unique_ptr<GrammarNode>> nodes_;
  GrammarNode* root_ = nullptr;
  friend struct SchemaCompiler;
};

// A sequence's position in the grammar.
class GrammarMatcher {
 public:
  GrammarMatcher(std::shared_ptr<const Grammar> grammar,
                 std::shared_ptr<const TokenVocabulary> vocab);
  ~GrammarMatcher();

  // allowed[id] = 1 for every token that may come next (end-of-sequence ids when the text may
  // end here); resized to the vocabulary.
  void fill_allowed(std::vector<char>& allowed) const;
  // Advances by a sampled token; false (state unchanged) if the grammar does not allow it.
  bool accept(int32_t token);
  // Whether the text so far is complete (it may end), and whether nothing may follow.
  bool can_end() const;
  bool must_end() const;

  // Byte-level access, for tests: advance by text; false (state unchanged) if rejected.
  bool accept_text(const std::string& text);

  struct State;

 private:
  std::shared_ptr<const Grammar> grammar_;
  std::shared_ptr<const TokenVocabulary> vocab_;
  std::unique_ptr<State> state_;
};

}  // namespace tessera
