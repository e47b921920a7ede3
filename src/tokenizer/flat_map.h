// Open-addressing hash tables for the tokenizer's read-mostly lookups: token text -> id (the
// keys live in one arena, not one heap string each) and token-id pair -> merge. Built once at
// load, then only read, so concurrent lookups need no lock.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace tessera::tokenizer {

// 64-bit hash of a short byte string, eight bytes per step (tokens average under 8 bytes).
inline uint64_t hash_bytes(std::string_view s, uint64_t seed = 0) {
  const auto mix = [](uint64_t a, uint64_t b) {
    const unsigned __int128 m = static_cast<unsigned __int128>(a) * b;
    return static_cast<uint64_t>(m) ^ static_cast<uint64_t>(m >> 64);
  };
  constexpr uint64_t k0 = 0xa0761d6478bd642fULL, k1 = 0xe7037ed1a0b428dbULL;
  uint64_t h = seed ^ k0 ^ (s.size() * k1);
  const char* p = s.data();
  size_t n = s.size();
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    h = mix(h ^ v, k1);
    p += 8;
    n -= 8;
  }
  if (n > 0) {
    uint64_t v = 0;
    std::memcpy(&v, p, n);
    h = mix(h ^ v, k1);
  }
  return mix(h, k0);
}

// String -> int32. Inserting an existing key replaces its value. A slot holds everything a
// lookup needs but the key's bytes, so a lookup touches two cache lines: its slot and the key.
class TokenTable {
 public:
  void reserve(size_t entries, size_t key_bytes) {
    arena_.reserve(key_bytes);
    size_t capacity = 16;
    while (capacity < entries * 2) capacity *= 2;
    if (capacity > slots_.size()) rehash(capacity);
  }

  void insert_or_assign(std::string_view key, int32_t value) {
    insert_or_assign(key, hash_bytes(key), value);
  }
  void insert_or_assign(std::string_view key, uint64_t h, int32_t value) {
    if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.empty() ? 16 : slots_.size() * 2);
    const auto tag = static_cast<uint32_t>(h >> 32);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& slot = slots_[i];
      if (slot.offset == kEmpty) {
        TESSERA_CHECK(arena_.size() + key.size() < kEmpty);
        slot = {tag, static_cast<uint32_t>(arena_.size()), static_cast<uint32_t>(key.size()),
                value};
        arena_.append(key);
        ++size_;
        return;
      }
      if (slot.tag == tag && key_of(slot) == key) {
        slot.value = value;
        return;
      }
    }
  }

  // The value of `key`, or nullptr. `h` must be hash_bytes(key).
  const int32_t* find(std::string_view key) const { return find(key, hash_bytes(key)); }
  const int32_t* find(std::string_view key, uint64_t h) const {
    if (slots_.empty()) return nullptr;
    const auto tag = static_cast<uint32_t>(h >> 32);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.offset == kEmpty) return nullptr;
      if (slot.tag == tag && key_of(slot) == key) return &slot.value;
    }
  }

  // Hints for bulk lookups (loading): fetch the slot of hash `h`, then the key bytes of the
  // first slot there with its tag, some lookups before find() needs them.
  void prefetch_slot(uint64_t h) const {
    if (!slots_.empty()) __builtin_prefetch(&slots_[h & mask_]);
  }
  void prefetch_key(uint64_t h) const {
    if (slots_.empty()) return;
    const Slot& slot = slots_[h & mask_];
    if (slot.offset != kEmpty) __builtin_prefetch(arena_.data() + slot.offset);
  }

  size_t size() const { return size_; }
  // Every entry, in no particular order.
  template <typename Fn>
  void for_each(Fn&& fn) const {
    for (const Slot& slot : slots_) {
      if (slot.offset != kEmpty) fn(key_of(slot), slot.value);
    }
  }

 private:
  static constexpr uint32_t kEmpty = ~uint32_t{0};
  struct Slot {
    uint32_t tag;     // high half of the hash
    uint32_t offset;  // of the key in arena_; kEmpty for an empty slot
    uint32_t length;
    int32_t value;
  };
  std::string_view key_of(const Slot& slot) const {
    return std::string_view(arena_.data() + slot.offset, slot.length);
  }
  void rehash(size_t capacity) {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(capacity, Slot{0, kEmpty, 0, 0});
    mask_ = capacity - 1;
    for (const Slot& s : old) {
      if (s.offset == kEmpty) continue;
      size_t i = hash_bytes(key_of(s)) & mask_;
      while (slots_[i].offset != kEmpty) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }

  std::string arena_;
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// Pair of token ids -> (rank, merged id). Inserting an existing pair replaces its value.
class PairTable {
 public:
  struct Value {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  void reserve(size_t entries) {
    size_t capacity = 16;
    while (capacity < entries * 2) capacity *= 2;
    if (capacity > slots_.size()) rehash(capacity);
  }

  void insert_or_assign(uint64_t k, Value value) {
    TESSERA_CHECK(k != kEmpty);
    if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.empty() ? 16 : slots_.size() * 2);
    for (size_t i = slot_of(k);; i = (i + 1) & mask_) {
      Slot& slot = slots_[i];
      if (slot.key == kEmpty) {
        slot = {k, value};
        ++size_;
        return;
      }
      if (slot.key == k) {
        slot.value = value;
        return;
      }
    }
  }

  void prefetch(uint64_t k) const {
    if (!slots_.empty()) __builtin_prefetch(&slots_[slot_of(k)]);
  }

  const Value* find(uint64_t k) const {
    if (slots_.empty()) return nullptr;
    for (size_t i = slot_of(k);; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.key == k) return &slot.value;
      if (slot.key == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // ids are below 2^24, so no pair is this
  struct Slot {
    uint64_t key;
    Value value;
  };
  size_t slot_of(uint64_t k) const {
    const unsigned __int128 m = static_cast<unsigned __int128>(k) * 0x9E3779B97F4A7C15ULL;
    return (static_cast<uint64_t>(m) ^ static_cast<uint64_t>(m >> 64)) & mask_;
  }
  void rehash(size_t capacity) {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(capacity, Slot{kEmpty, {0, 0}});
    mask_ = capacity - 1;
    for (const Slot& s : old) {
      if (s.key == kEmpty) continue;
      size_t i = slot_of(s.key);
      while (slots_[i].key != kEmpty) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }

  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

}  // namespace tessera::tokenizer
