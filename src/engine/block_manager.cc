#include "engine/block_manager.h"

#include <algorithm>

#include "core/status.h"

namespace tessera {

namespace {
constexpr uint64_t kRootHash = 0x6a09e667f3bcc908ull;

uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}
}  // namespace

BlockManager::BlockManager(int64_t num_blocks, int block_size, bool enable_prefix_caching)
    : num_blocks_(num_blocks),
      block_size_(block_size),
      prefix_caching_(enable_prefix_caching),
      blocks_(num_blocks) {
  TESSERA_CHECK(num_blocks > 0 && block_size > 0);
  for (int32_t i = 0; i < num_blocks; ++i) push_free_back(i);
}

double BlockManager::usage() const {
  return static_cast<double>(num_blocks_ - num_free_) / static_cast<double>(num_blocks_);
}

uint64_t BlockManager::hash_block(uint64_t parent, std::span<const int32_t> tokens) {
  uint64_t h = mix(kRootHash, parent);
  for (int32_t t : tokens) h = mix(h, static_cast<uint32_t>(t));
  return h;
}

void BlockManager::unlink_free(int32_t id) {
  Block& b = blocks_[id];
  if (b.prev >= 0)
    blocks_[b.prev].next = b.next;
  else
    free_head_ = b.next;
  if (b.next >= 0)
    blocks_[b.next].prev = b.prev;
  else
    free_tail_ = b.prev;
  b.prev = b.next = -1;
  --num_free_;
}

void BlockManager::push_free_back(int32_t id) {
  Block& b = blocks_[id];
  b.prev = free_tail_;
  b.next = -1;
  if (free_tail_ >= 0)
    blocks_[free_tail_].next = id;
  else
    free_head_ = id;
  free_tail_ = id;
  ++num_free_;
}

void BlockManager::push_free_front(int32_t id) {
  Block& b = blocks_[id];
  b.next = free_head_;
  b.prev = -1;
  if (free_head_ >= 0)
    blocks_[free_head_].prev = id;
  else
    free_tail_ = id;
  free_head_ = id;
  ++num_free_;
}

void BlockManager::uncache(int32_t id) {
  Block& b = blocks_[id];
  if (!b.cached) return;
  auto range = cache_.equal_range(b.hash);
  for (auto it = range.first; it != range.second; ++it) {
    if (it->second == id) {
      cache_.erase(it);
      break;
    }
  }
  b.cached = false;
  b.tokens.clear();
}

int32_t BlockManager::pop_free() {
  TESSERA_CHECK(free_head_ >= 0) << "no free KV cache block";
  int32_t id = free_head_;
  unlink_free(id);
  uncache(id);  // evicted from the prefix cache: its contents are about to be overwritten
  blocks_[id].ref = 1;
  return id;
}

int64_t BlockManager::match_prefix(std::span<const int32_t> tokens, int64_t max_tokens,
                                   std::vector<int32_t>& table, std::vector<uint64_t>& hashes,
                                   uint64_t salt) {
  TESSERA_CHECK(table.empty() && hashes.empty());
  if (!prefix_caching_) return 0;
  prefix_queries_ += static_cast<int64_t>(tokens.size());
  const int64_t full =
      std::min<int64_t>(max_tokens, static_cast<int64_t>(tokens.size())) / block_size_;
  uint64_t parent = salt;
  for (int64_t i = 0; i < full; ++i) {
    auto chunk = tokens.subspan(i * block_size_, block_size_);
    uint64_t h = hash_block(parent, chunk);
    int32_t found = -1;
    auto range = cache_.equal_range(h);
    for (auto it = range.first; it != range.second; ++it) {
      const Block& b = blocks_[it->second];
      if (b.parent == parent &&
          std::equal(b.tokens.begin(), b.tokens.end(), chunk.begin(), chunk.end())) {
        found = it->second;
        break;
      }
    }
    if (found < 0) break;
    Block& b = blocks_[found];
    if (b.ref == 0) unlink_free(found);
    ++b.ref;
    table.push_back(found);
    hashes.push_back(h);
    parent = h;
  }
  const int64_t hit = static_cast<int64_t>(table.size()) * block_size_;
  prefix_hits_ += hit;
  return hit;
}

bool BlockManager::can_grow(const std::vector<int32_t>& table, int64_t total_tokens) const {
  int64_t needed =
      (total_tokens + block_size_ - 1) / block_size_ - static_cast<int64_t>(table.size());
  return needed <= num_free_;
}

void BlockManager::grow(std::vector<int32_t>& table, int64_t total_tokens) {
  int64_t needed = (total_tokens + block_size_ - 1) / block_size_;
  while (static_cast<int64_t>(table.size()) < needed) table.push_back(pop_free());
}

void BlockManager::cache_full_blocks(std::span<const int32_t> tokens, int64_t computed_tokens,
                                     const std::vector<int32_t>& table,
                                     std::vector<uint64_t>& hashes, uint64_t salt) {
  if (!prefix_caching_) return;
  const int64_t full =
      std::min<int64_t>(computed_tokens, static_cast<int64_t>(tokens.size())) / block_size_;
  for (int64_t i = static_cast<int64_t>(hashes.size()); i < full; ++i) {
    uint64_t parent = i == 0 ? salt : hashes[i - 1];
    auto chunk = tokens.subspan(i * block_size_, block_size_);
    uint64_t h = hash_block(parent, chunk);
    hashes.push_back(h);
    Block& b = blocks_[table[i]];
    if (b.cached) continue;  // a reused block is already registered
    b.cached = true;
    b.hash = h;
    b.parent = parent;
    b.tokens.assign(chunk.begin(), chunk.end());
    cache_.emplace(h, table[i]);
  }
}

void BlockManager::release(std::vector<int32_t>& table, std::vector<uint64_t>& hashes) {
  for (auto it = table.rbegin(); it != table.rend(); ++it) {
    Block& b = blocks_[*it];
    TESSERA_CHECK_GT(b.ref, 0);
    if (--b.ref == 0) {
      // Uncached blocks are worthless: reuse them first. Cached ones wait at the back.
      if (b.cached)
        push_free_back(*it);
      else
        push_free_front(*it);
    }
  }
  table.clear();
  hashes.clear();
}

void BlockManager::reset_prefix_cache() {
  // Forgotten blocks go to the front of the free list: they are worth no more than never-used
  // ones, and their memory is already resident (the CPU pool commits pages on first write).
  for (int32_t i = 0; i < num_blocks_; ++i) {
    if (blocks_[i].ref != 0 || !blocks_[i].cached) continue;
    uncache(i);
    unlink_free(i);
    push_free_front(i);
  }
}

}  // namespace tessera
