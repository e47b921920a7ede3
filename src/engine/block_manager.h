// The KV cache as a pool of fixed-size blocks: each sequence owns a block table (logical block i
// -> physical block), blocks are reference-counted, and full blocks are remembered by a hash of
// their tokens and their parent block's hash so that a later sequence with the same prefix reuses
// them (prefix caching). A block whose last user finished stays reusable until it is evicted,
// least recently freed first. Deals in ids and counts only; the model runner turns the tables
// into tensors.
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

namespace tessera {

class BlockManager {
 public:
  BlockManager(int64_t num_blocks, int block_size, bool enable_prefix_caching);

  int block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t num_free_blocks() const { return num_free_; }
  // Share of blocks in use by sequences (cached but unused blocks count as free): 0..1.
  double usage() const;

  // For a sequence starting from scratch: appends the longest run of cached full blocks that
  // match `tokens` to `table` (taking references) and returns the tokens they hold. At most
  // `max_tokens` tokens are reused (the caller keeps at least one token to compute).
  // `salt` (a request's cache_salt, hashed; 0: none) stands in as the first block's parent, so
  // only sequences with the same salt share blocks.
  int64_t match_prefix(std::span<const int32_t> tokens, int64_t max_tokens,
                       std::vector<int32_t>& table, std::vector<uint64_t>& hashes,
                       uint64_t salt = 0);
  // Whether `table` can grow to hold `total_tokens` tokens.
  bool can_grow(const std::vector<int32_t>& table, int64_t total_tokens) const;
  // Appends fresh blocks until `table` holds `total_tokens` tokens (check can_grow first).
  void grow(std::vector<int32_t>& table, int64_t total_tokens);
  // Records the blocks of `table` that are full among the first `computed_tokens` tokens in the
  // prefix cache; `hashes` holds the hashes of blocks already recorded and is extended.
  void cache_full_blocks(std::span<const int32_t> tokens, int64_t computed_tokens,
                         const std::vector<int32_t>& table, std::vector<uint64_t>& hashes,
                         uint64_t salt = 0);
  // Drops the sequence's references; blocks are released in reverse so that a prefix outlives
  // its tail in the cache.
  void release(std::vector<int32_t>& table, std::vector<uint64_t>& hashes);
  // Forgets every cached block that no sequence uses (e.g. after weights change) and hands those
  // blocks out before never-used ones; blocks in use keep their hashes.
  void reset_prefix_cache();

  // Prefix cache counters in tokens, as vLLM reports them.
  int64_t prefix_queries() const { return prefix_queries_; }
  int64_t prefix_hits() const { return prefix_hits_; }

 private:
  struct Block {
    int32_t ref = 0;
    bool cached = false;
    uint64_t hash = 0;
    uint64_t parent = 0;
    std::vector<int32_t> tokens;   // a cached block's tokens, to rule out hash collisions
    int32_t prev = -1, next = -1;  // free list links
  };

  static uint64_t hash_block(uint64_t parent, std::span<const int32_t> tokens);
  int32_t pop_free();
  void push_free_back(int32_t id);
  void push_free_front(int32_t id);
  void unlink_free(int32_t id);
  void uncache(int32_t id);

  int64_t num_blocks_;
  int block_size_;
  bool prefix_caching_;
  std::vector<Block> blocks_;
  int32_t free_head_ = -1, free_tail_ = -1;
  int64_t num_free_ = 0;
  std::unordered_multimap<uint64_t, int32_t> cache_;  // hash -> block
  int64_t prefix_queries_ = 0, prefix_hits_ = 0;
};

}  // namespace tessera
