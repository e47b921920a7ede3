// The built-in tokenizer for random-weight models (no download possible): byte-level BPE whose
// merges are learned here, deterministically, from a small embedded English/code text.
#include <fmt/format.h>

#include <fstream>
#include <map>

#include "core/status.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/regex.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace tessera::tokenizer {
namespace {

constexpr char kLlama3Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

constexpr char kChatTemplate[] =
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}";

// Training text: everyday English plus a little C++ and Python, so that common words, spaces
// and code punctuation get their own tokens.
constexpr char kTrainingText[] = R"TEXT(
The quick brown fox jumps over the lazy dog. A language model reads text as a sequence of
tokens and predicts the next one. This is a small tokenizer for testing the inference engine:
it is built from this paragraph and a few lines of code, so that the same bytes come out every
time it is written. When the model has random weights the text it writes is not meaningful,
but every part of the server still runs: the chat template, the tokenizer, the scheduler, the
sampler and the streaming decoder that turns tokens back into text.
Hello, world! How are you today? I am fine, thank you. What would you like to do next? Let us
write a function that adds two numbers and returns the result. Then we will test it with some
examples, print the output, and check that the answer is correct. There are many ways to solve
a problem; the simplest one is often the best. Please read the documentation before you start,
and ask a question if something is not clear. The system should answer in English unless the
user writes in another language. Numbers such as 1, 2, 3, 10, 42, 100, 2024 and 3.14159 appear
in text, in tables and in code.
The user said: "Can you explain how attention works?" The assistant answered that each token
looks at the tokens before it, weighs them by similarity, and mixes their values. The key and
value vectors of past tokens are kept in a cache so that they are not computed again.

#include <cstdint>
#include <string>
#include <vector>

int add(int a, int b) { return a + b; }

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::string current;
  for (char c : text) {
    if (c == separator) {
      parts.push_back(current);
      current.clear();
    } else {
      current += c;
    }
  }
  parts.push_back(current);
  return parts;
}

def fibonacci(n):
    """Return the first n Fibonacci numbers."""
    result = []
    a, b = 0, 1
    for _ in range(n):
        result.append(a)
        a, b = b, a + b
    return result

if __name__ == "__main__":
    for value in fibonacci(10):
        print(f"value = {value}")

const response = await fetch("/v1/chat/completions", {
  method: "POST",
  headers: { "Content-Type": "application/json" },
  body: JSON.stringify({ model: "default", messages: [{ role: "user", content: "Hi" }] }),
});
)TEXT";

constexpr const char* kSpecialTokens[] = {"<|begin_of_text|>", "<|end_of_text|>",
                                          "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};

std::string byte_level(std::string_view bytes) {
  std::string out;
  for (const char c : bytes) utf8_append(out, byte_to_char(static_cast<unsigned char>(c)));
  return out;
}

// Learns up to `max_merges` merges: repeatedly merge the most frequent adjacent pair (ties:
// the smallest pair in byte order), stopping when no pair occurs twice.
std::vector<std::pair<std::string, std::string>> learn_merges(size_t max_merges) {
  const Regex split(kLlama3Pattern, false);
  const std::string text = kTrainingText;
  std::map<std::string, int64_t> word_counts;
  for (const auto& [b, e] : split.find_all(text)) word_counts[byte_level(text.substr(b, e - b))]++;
  std::vector<std::pair<std::vector<std::string>, int64_t>> words;
  for (const auto& [word, count] : word_counts) {
    std::vector<std::string> symbols;
    for (size_t pos = 0; pos < word.size();) {
      const size_t len = utf8_char_len(static_cast<unsigned char>(word[pos]));
      symbols.push_back(word.substr(pos, len));
      pos += len;
    }
    words.emplace_back(std::move(symbols), count);
  }
  std::vector<std::pair<std::string, std::string>> merges;
  while (merges.size() < max_merges) {
    std::map<std::pair<std::string, std::string>, int64_t> pairs;
    for (const auto& [symbols, count] : words) {
      for (size_t i = 0; i + 1 < symbols.size(); ++i) pairs[{symbols[i], symbols[i + 1]}] += count;
    }
    const std::pair<std::string, std::string>* best = nullptr;
    int64_t best_count = 1;
    for (const auto& [pair, count] : pairs) {
      if (count > best_count) {
        best = &pair;
        best_count = count;
      }
    }
    if (best == nullptr) break;
    const auto merge = *best;
    merges.push_back(merge);
    for (auto& [symbols, count] : words) {
      std::vector<std::string> merged;
      for (size_t i = 0; i < symbols.size(); ++i) {
        if (i + 1 < symbols.size() && symbols[i] == merge.first && symbols[i + 1] == merge.second) {
          merged.push_back(merge.first + merge.second);
          ++i;
        } else {
          merged.push_back(symbols[i]);
        }
      }
      symbols = std::move(merged);
    }
  }
  return merges;
}

}  // namespace

void write_builtin_tokenizer(const std::filesystem::path& dir, int64_t vocab_size) {
  constexpr int64_t kSpecials = std::size(kSpecialTokens);
  if (vocab_size < 512 || vocab_size > (int64_t{1} << 24)) {
    fail("built-in tokenizer: vocab_size {} is out of range (512 to {})", vocab_size,
         int64_t{1} << 24);
  }
  const int64_t first_special = vocab_size - kSpecials;
  // Merges fill what the training text allows; word-like tokens (a learned word joined with a
  // learned subword) fill the rest, so that every id below vocab_size names a token and a
  // random-weight model's output decodes to visible (meaningless) text. With Llama 3's
  // reserved special tokens there instead, almost every sampled id would be a special token and
  // the text empty once they are skipped.
  const auto merges = learn_merges(static_cast<size_t>(first_special - 256));

  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level(std::string(1, static_cast<char>(b)))] = b;
  nlohmann::json merges_json = nlohmann::json::array();
  int64_t next_id = 256;
  for (const auto& [left, right] : merges) {
    merges_json.push_back(nlohmann::json::array({left, right}));
    const std::string merged = left + right;
    if (!vocab.contains(merged)) vocab[merged] = next_id++;
  }
  nlohmann::json added = nlohmann::json::array();
  const auto add_special = [&](int64_t id, const std::string& content) {
    added.push_back({{"id", id},
                     {"content", content},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  };
  std::vector<std::string> words, pieces;  // learned tokens with and without a leading space
  for (const auto& [left, right] : merges) {
    const std::string merged = left + right;
    (merged.rfind("\xC4\xA0", 0) == 0 ? words : pieces).push_back(merged);  // "Ġ": a space
  }
  // word + piece, then word + piece + piece: far more combinations than any vocabulary needs.
  const size_t w = words.size(), p = pieces.size();
  for (size_t i = 0; i < w * p * (p + 1) && next_id < first_special; ++i) {
    std::string token = words[i % w] + pieces[(i / w) % p];
    if (i >= w * p) token += pieces[i / (w * p) - 1];
    if (!vocab.contains(token)) vocab[token] = next_id++;
  }
  for (int64_t n = 0; next_id < first_special; ++next_id, ++n)  // tiny training text only
    add_special(next_id, fmt::format("<|reserved_special_token_{}|>", n));
  for (int64_t i = 0; i < kSpecials; ++i) add_special(first_special + i, kSpecialTokens[i]);
  const std::string bos = kSpecialTokens[0];

  nlohmann::json tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern", {{"Regex", kLlama3Pattern}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"},
           {"add_prefix_space", false},
           {"trim_offsets", true},
           {"use_regex", false}}}}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair",
         {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
          {{"SpecialToken", {{"id", bos}, {"type_id", 1}}}},
          {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
        {"special_tokens", {{bos, {{"id", bos}, {"ids", {first_special}}, {"tokens", {bos}}}}}}}},
      {"decoder",
       {{"type", "ByteLevel"},
        {"add_prefix_space", true},
        {"trim_offsets", true},
        {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", true},
        {"vocab", vocab},
        {"merges", merges_json}}}};
  nlohmann::json config = {{"bos_token", bos},
                           {"eos_token", "<|eot_id|>"},
                           {"chat_template", kChatTemplate},
                           {"clean_up_tokenization_spaces", false},
                           {"model_max_length", 131072},
                           {"tokenizer_class", "PreTrainedTokenizerFast"}};

  std::filesystem::create_directories(dir);
  for (const auto& [name, json] :
       {std::pair{"tokenizer.json", &tokenizer}, std::pair{"tokenizer_config.json", &config}}) {
    const auto path = dir / name;
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << json->dump(1) << '\n';
    if (!out) fail(ErrorKind::kUnavailable, "cannot write {}", path.string());
  }
}

}  // namespace tessera::tokenizer
