// Fuzz target: arbitrary bytes as tokenizer.json text. Any tessera::Error is an accepted answer;
// a crash, hang or sanitizer report is a bug. What loads also encodes and decodes a short string.
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    auto tokenizer = tessera::tokenizer::Tokenizer::from_json(text);
    const auto ids = tokenizer->encode("Hello <s> wörld 123 \xF0\x9F\x98\x80\xFF");
    (void)tokenizer->decode(ids, false);
    tessera::tokenizer::IncrementalDecoder stream(*tokenizer);
    for (const int32_t id : ids) (void)stream.add(id);
    (void)stream.flush();
  } catch (const tessera::Error&) {
  }
  return 0;
}

std::vector<std::string> fuzz_default_seeds() {
  return {
      R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<unk>": 3},
          "merges": ["a b"], "unk_token": "<unk>", "fuse_unk": true},
          "added_tokens": [{"id": 4, "content": "<s>", "special": true, "lstrip": true}],
          "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"},
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace",
            "pattern": {"String": " "}, "content": "▁"}]},
          "decoder": {"type": "Sequence", "decoders": [{"type": "Replace",
            "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
          "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken":
            {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [4], "tokens": ["<s>"]}}}})",
      R"({"model": {"type": "BPE", "vocab": {"H": 0, "e": 1, "He": 2, "Ġ": 3},
          "merges": [["H", "e"]], "ignore_merges": true, "byte_fallback": true},
          "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split",
            "pattern": {"Regex": "\\p{N}{1,3}| ?\\p{L}+|\\s+(?!\\S)|\\s+"},
            "behavior": "Isolated", "invert": false}, {"type": "Digits",
            "individual_digits": true}, {"type": "ByteLevel", "add_prefix_space": true,
            "use_regex": true}]},
          "decoder": {"type": "ByteLevel"}})",
      R"({"model": {"type": "BPE", "vocab": {"▁a": 0, "▁": 1, "a": 2}, "merges": ["▁ a"]},
          "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
            "split": true},
          "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"}})",
      R"({"model": {"type": "WordPiece", "vocab": {}}})",
      "{}",
  };
}
