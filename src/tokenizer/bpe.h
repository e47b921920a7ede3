// tokenizer.json "model" of type BPE: vocabulary, merge ranks and the merge algorithm, with a
// bounded thread-safe cache of recently tokenized words.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/flat_map.h"

namespace tessera::tokenizer {

// Lets unordered_map<std::string, T> be queried with a string_view without a copy.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename T>
using StringMap = std::unordered_map<std::string, T, StringHash, std::equal_to<>>;

class Bpe {
 public:
  // Parses the "model" object, whose "vocab" and "merges" come as their raw JSON text (empty
  // when absent; see split_tokenizer_json). Throws tessera::Error naming the problem.
  Bpe(const nlohmann::json& model, std::string_view vocab_json, std::string_view merges_json);

  // Appends the ids of one pre-tokenized word. Thread-safe.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const TokenTable& vocab() const { return vocab_; }

 private:
  void parse_vocab(std::string_view json);
  void parse_merges(std::string_view json);
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  TokenTable vocab_;
  PairTable merges_;
  std::optional<std::string> unk_token_;
  std::optional<int32_t> unk_id_;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  int32_t byte_ids_[256];   // ids of "<0xNN>" tokens for byte_fallback, -1 when absent
  int32_t ascii_ids_[128];  // ids of the one-character tokens, -1 when absent

  // Word cache, sharded to keep lock contention low between server threads. A full shard is
  // cleared rather than evicted entry by entry: simple, bounded, and hot words come back fast.
  static constexpr size_t kCacheShards = 16;  // a power of two: the top 4 bits of the hash
  static constexpr size_t kCacheEntriesPerShard = 4096;
  static constexpr size_t kMaxCachedWordBytes = 256;
  // Hashes words with a per-tokenizer random seed, so that no fixed set of input words can
  // collide in every shard.
  struct SeededHash {
    using is_transparent = void;
    uint64_t seed;
    size_t operator()(std::string_view s) const { return hash_bytes(s, seed); }
  };
  struct CacheShard {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>, SeededHash, std::equal_to<>> entries;
  };
  uint64_t cache_seed_ = 0;
  mutable std::unique_ptr<CacheShard[]> cache_;
};

}  // namespace tessera::tokenizer
