// Hugging Face tokenizer.json (BPE) tokenizer: loading, encoding identical to Hugging Face
// tokenizers, decoding and streaming decoding. Our own implementation: Debian ships no C++
// tokenizer library. See docs/tokenizer.md for what is supported.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace tessera::tokenizer {

class Pipeline;  // normalizer, pre-tokenizer, model, post-processor, decoder (tokenizer.cc)

// From tokenizer_config.json (all optional).
struct TokenizerConfig {
  std::optional<std::string> bos_token, eos_token, pad_token, unk_token;
  std::optional<bool> add_bos_token, add_eos_token;
  nlohmann::json chat_template;  // null, a string, or a list of {"name","template"}
  std::optional<int64_t> model_max_length;
};

// The tokenizer.json that transformers' GPT-2 converter makes from a byte-level BPE stored the
// old way (vocab.json + merges.txt), with the added and special tokens of tokenizer_config.json
// (its text, or empty).
std::string gpt2_tokenizer_json(const std::filesystem::path& vocab_path,
                                const std::filesystem::path& merges_path,
                                const std::string& config_text);

// The tokenizer.json that transformers' LlamaConverter or GemmaConverter makes from a
// SentencePiece BPE tokenizer.model, for the tokenizer class of tokenizer_config.json (its
// text, or empty).
std::string sentencepiece_tokenizer_json(const std::filesystem::path& model_path,
                                         const std::string& config_text);

// Whether DIR holds a tokenizer Tokenizer::load reads: tokenizer.json, vocab.json +
// merges.txt, or tokenizer.model.
bool has_tokenizer(const std::filesystem::path& dir);

class Tokenizer {
 public:
  // Reads DIR/tokenizer.json and DIR/tokenizer_config.json (optional). Without tokenizer.json,
  // DIR/vocab.json + DIR/merges.txt (GPT-2's files) make a byte-level BPE, or else
  // DIR/tokenizer.model (SentencePiece) is converted as transformers converts it.
  static std::unique_ptr<Tokenizer> load(const std::filesystem::path& dir);
  // Also construct from in-memory JSON text (for tests and fuzzing).
  static std::unique_ptr<Tokenizer> from_json(std::string_view tokenizer_json,
                                              std::string_view tokenizer_config_json = "");
  ~Tokenizer();

  // Thread-safe. Invalid UTF-8 in `text` is replaced (one U+FFFD per maximal invalid subpart,
  // like Rust's String::from_utf8_lossy) before normalization.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Ids outside the vocabulary are skipped. No clean-up of tokenization spaces.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = true) const;
  std::optional<std::string> id_to_token(int32_t id) const;  // raw vocab string
  std::optional<int32_t> token_to_id(std::string_view token) const;
  int64_t vocab_size() const;  // max id + 1, added tokens included
  bool is_special(int32_t id) const;
  const TokenizerConfig& config() const;
  std::optional<int32_t> bos_token_id() const;
  std::optional<int32_t> eos_token_id() const;

  // Internal: decodes ids whose first one is not the first token of the text when
  // `at_text_start` is false (decoders that strip a leading space must not strip it then).
  std::string decode_window(std::span<const int32_t> ids, bool skip_special_tokens,
                            bool at_text_start, bool raw_bytes = false) const;
  // The bytes token `id` adds in the middle of a text: a byte-level or byte-fallback piece of a
  // character stays that byte (decode() would show U+FFFD). What structured outputs match.
  std::string token_bytes(int32_t id) const {
    return decode_window({&id, 1}, false, false, /*raw_bytes=*/true);
  }

 private:
  Tokenizer();
  std::unique_ptr<Pipeline> pipeline_;
  TokenizerConfig config_;
};

// Streaming decoder: feeds one id at a time and returns only complete UTF-8 characters. The
// concatenation of every add() and the final flush() equals tokenizer.decode(all ids).
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = true);
  std::string add(int32_t id);  // text newly completed by this token (possibly empty)
  std::string flush();          // the rest at the end of the stream

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0;             // start of the window re-decoded for context
  size_t read_offset_ = 0;               // ids before this have been emitted
  std::optional<size_t> first_visible_;  // index of the first id that decodes to a token
};

// Writes DIR/tokenizer.json and DIR/tokenizer_config.json: a deterministic byte-level BPE
// tokenizer with Llama-3-style special tokens at the top ids, for random-weight models.
void write_builtin_tokenizer(const std::filesystem::path& dir, int64_t vocab_size);

}  // namespace tessera::tokenizer
