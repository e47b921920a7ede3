#include "tokenizer/bpe.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <limits>
#include <random>

#include "core/status.h"
#include "tokenizer/json_reader.h"
#include "tokenizer/utf8.h"

namespace tessera::tokenizer {
namespace {

// Ids above this are rejected: the id -> token table is dense.
constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;

}  // namespace

Bpe::Bpe(const nlohmann::json& model, std::string_view vocab_json, std::string_view merges_json)
    : cache_seed_((static_cast<uint64_t>(std::random_device{}()) << 32) | std::random_device{}()),
      cache_(new CacheShard[kCacheShards]) {
  for (size_t i = 0; i < kCacheShards; ++i) {
    cache_[i].entries = decltype(cache_[i].entries)(0, SeededHash{cache_seed_});
  }
  if (model.contains("dropout") && !model.at("dropout").is_null() &&
      model.at("dropout").get<double>() > 0.0) {
    fail(ErrorKind::kUnsupported, "BPE dropout is not supported (it makes encoding random)");
  }
  const auto optional_string = [&](const char* key) -> std::optional<std::string> {
    if (!model.contains(key) || model.at(key).is_null()) return std::nullopt;
    return model.at(key).get<std::string>();
  };
  unk_token_ = optional_string("unk_token");
  continuing_subword_prefix_ = optional_string("continuing_subword_prefix").value_or("");
  end_of_word_suffix_ = optional_string("end_of_word_suffix").value_or("");
  fuse_unk_ = model.value("fuse_unk", false);
  byte_fallback_ = model.value("byte_fallback", false);
  ignore_merges_ = model.value("ignore_merges", false);

  parse_vocab(vocab_json);
  if (unk_token_) {
    if (const int32_t* id = vocab_.find(*unk_token_)) unk_id_ = *id;
  }
  for (int b = 0; b < 256; ++b) {
    const int32_t* id = vocab_.find(fmt::format("<0x{:02X}>", b));
    byte_ids_[b] = id ? *id : -1;
  }
  for (int c = 0; c < 128; ++c) {
    const char ch = static_cast<char>(c);
    const int32_t* id = vocab_.find(std::string_view(&ch, 1));
    ascii_ids_[c] = id ? *id : -1;
  }
  parse_merges(merges_json);
}

// Loading is bound by cache misses in the tables (a few hundred thousand random lookups), so
// the loops below run each lookup in stages some entries apart: prefetch the slot, then the key
// bytes, then look up. The stages keep file order, so later entries still win.
namespace {
constexpr size_t kAhead = 8;  // entries between stages
}  // namespace

void Bpe::parse_vocab(std::string_view json) {
  if (json.empty()) fail("model.vocab is missing");
  JsonReader reader(json);
  if (reader.peek() != '{') fail("model.vocab must be an object of token -> id");
  // A guess at the entry count (the table grows if it is short): an oversized table costs
  // page faults and cache misses on every lookup.
  vocab_.reserve(json.size() / 24 + 16, json.size() / 2);
  reader.expect('{');
  if (reader.consume('}')) return;
  struct Pending {
    std::string token;
    uint64_t hash;
    int32_t id;
  };
  std::array<Pending, kAhead> ring;
  size_t count = 0;
  std::string scratch;
  do {
    const std::string_view token = reader.read_string(scratch);
    reader.expect(':');
    const std::optional<int64_t> parsed = reader.read_integer();
    if (!parsed) {
      reader.skip_value();  // a malformed value is reported as such
      fail("model.vocab: the id of \"{}\" is not an integer", token);
    }
    const int64_t id = *parsed;
    if (id < 0 || id > kMaxTokenId) fail("model.vocab: id {} of \"{}\" is out of range", id, token);
    Pending& p = ring[count % kAhead];
    if (count >= kAhead) vocab_.insert_or_assign(p.token, p.hash, p.id);
    p.token.assign(token);
    p.hash = hash_bytes(token);
    p.id = static_cast<int32_t>(id);
    vocab_.prefetch_slot(p.hash);
    ++count;
  } while (reader.consume(','));
  reader.expect('}');
  if (!reader.at_end()) reader.error("unexpected text after model.vocab");
  for (size_t i = count > kAhead ? count - kAhead : 0; i < count; ++i) {
    const Pending& p = ring[i % kAhead];
    vocab_.insert_or_assign(p.token, p.hash, p.id);
  }
}

void Bpe::parse_merges(std::string_view json) {
  if (json.empty()) fail("model.merges is missing");
  JsonReader reader(json);
  if (reader.peek() != '[') fail("model.merges must be an array");
  merges_.reserve(json.size() / 48 + 16);  // a guess, as for the vocabulary
  reader.expect('[');
  if (reader.consume(']')) return;
  struct Pending {
    std::string left, right, merged;
    uint64_t hash[3];
    uint64_t pair;
    PairTable::Value value;
  };
  // Stages: 0 parse and prefetch slots, 1 prefetch keys, 2 look up and prefetch the pair's
  // slot, 3 insert the pair.
  constexpr size_t kStages = 4;
  std::array<Pending, kAhead * kStages> ring;
  const auto slot = [&](size_t i) -> Pending& { return ring[i % ring.size()]; };
  size_t count = 0;
  const auto advance = [&](size_t n) {  // stages 1-3 of the entries behind entry n
    if (n >= kAhead && n - kAhead < count) {
      for (const uint64_t h : slot(n - kAhead).hash) vocab_.prefetch_key(h);
    }
    if (n >= 2 * kAhead && n - 2 * kAhead < count) {
      const size_t rank = n - 2 * kAhead;
      Pending& p = slot(rank);
      const int32_t* a = vocab_.find(p.left, p.hash[0]);
      const int32_t* b = vocab_.find(p.right, p.hash[1]);
      if (a == nullptr || b == nullptr)
        fail("model.merges[{}]: token \"{}\" is not in the vocabulary", rank,
             a == nullptr ? p.left : p.right);
      const int32_t* c = vocab_.find(p.merged, p.hash[2]);
      if (c == nullptr)
        fail("model.merges[{}]: merged token \"{}\" is not in the vocabulary", rank, p.merged);
      p.pair = PairTable::key(*a, *b);
      p.value = {static_cast<int32_t>(rank), *c};
      merges_.prefetch(p.pair);
    }
    if (n >= 3 * kAhead && n - 3 * kAhead < count) {
      // A repeated pair keeps its last rank, as Hugging Face's map construction does.
      const Pending& p = slot(n - 3 * kAhead);
      merges_.insert_or_assign(p.pair, p.value);
    }
  };
  const auto add = [&](std::string_view left, std::string_view right) {
    if (count >= static_cast<size_t>(std::numeric_limits<int32_t>::max()))
      fail("model.merges: more than 2^31 merges");
    Pending& p = slot(count);
    p.left.assign(left);
    p.right.assign(right);
    // The continuing-subword prefix of the right part is dropped in the merged token.
    const std::string_view right_body = right.substr(
        right.rfind(continuing_subword_prefix_, 0) == 0 ? continuing_subword_prefix_.size() : 0);
    p.merged.assign(left);
    p.merged += right_body;
    p.hash[0] = hash_bytes(p.left);
    p.hash[1] = hash_bytes(p.right);
    p.hash[2] = hash_bytes(p.merged);
    for (const uint64_t h : p.hash) vocab_.prefetch_slot(h);
    advance(count++);
  };
  std::string scratch_left, scratch_right;
  do {
    const size_t rank = count;
    const char c = reader.peek();
    if (c == '"') {
      const std::string_view s = reader.read_string(scratch_left);
      const size_t space = s.find(' ');
      if (space == std::string_view::npos || s.find(' ', space + 1) != std::string_view::npos)
        fail("model.merges[{}]: \"{}\" is not two tokens separated by one space", rank, s);
      add(s.substr(0, space), s.substr(space + 1));
      continue;
    }
    if (c == '[') {
      reader.expect('[');
      if (reader.peek() == '"') {
        const std::string_view left = reader.read_string(scratch_left);
        if (reader.consume(',') && reader.peek() == '"') {
          const std::string_view right = reader.read_string(scratch_right);
          if (reader.consume(']')) {
            add(left, right);
            continue;
          }
        }
      }
    }
    fail("model.merges[{}] must be \"a b\" or [\"a\", \"b\"]", rank);
  } while (reader.consume(','));
  reader.expect(']');
  if (!reader.at_end()) reader.error("unexpected text after model.merges");
  for (size_t n = count; n < count + kStages * kAhead; ++n) advance(n);
}

std::optional<int32_t> Bpe::token_to_id(std::string_view token) const {
  const int32_t* id = vocab_.find(token);
  if (id == nullptr) return std::nullopt;
  return *id;
}

void Bpe::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const int32_t* id = vocab_.find(word)) {
      out.push_back(*id);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  // The shard comes from the top bits: the shard's own table uses the low ones.
  CacheShard& shard = cache_[hash_bytes(word, cache_seed_) >> 60];
  if (cacheable) {
    std::lock_guard<std::mutex> lock(shard.mutex);
    if (auto it = shard.entries.find(word); it != shard.entries.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::vector<int32_t> ids(out.begin() + static_cast<ptrdiff_t>(start), out.end());
    std::lock_guard<std::mutex> lock(shard.mutex);
    if (shard.entries.size() >= kCacheEntriesPerShard) shard.entries.clear();
    shard.entries.emplace(std::string(word), std::move(ids));
  }
}

// Splits the word into characters, then applies merges lowest rank first. Symbols form a linked
// list and candidate pairs sit in a priority queue, so a word of n characters costs O(n log n).
void Bpe::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  // Per-thread buffers: words that miss the cache would otherwise allocate twice each.
  thread_local std::vector<Symbol> symbols;
  symbols.clear();
  const auto add = [&](int32_t id) {
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, -1, true});
    if (n > 0) symbols[n - 1].next = n;
  };

  std::optional<int32_t> pending_unk;  // an unknown run waiting to be emitted (fuse_unk)
  std::string piece;
  const bool affixes_empty = continuing_subword_prefix_.empty() && end_of_word_suffix_.empty();
  size_t pos = 0;
  while (pos < word.size()) {
    const size_t begin = pos;
    pos += std::min(utf8_char_len(static_cast<unsigned char>(word[pos])), word.size() - pos);
    if (affixes_empty && pos == begin + 1 && static_cast<unsigned char>(word[begin]) < 0x80) {
      const int32_t id = ascii_ids_[static_cast<unsigned char>(word[begin])];
      if (id >= 0) {  // the common case, without hashing
        if (pending_unk) add(*std::exchange(pending_unk, std::nullopt));
        add(id);
        continue;
      }
    }
    std::string_view key = word.substr(begin, pos - begin);
    if (!affixes_empty) {
      piece.clear();
      if (begin > 0) piece += continuing_subword_prefix_;
      piece.append(key);
      if (pos == word.size()) piece += end_of_word_suffix_;
      key = piece;
    }
    if (const int32_t* id = vocab_.find(key)) {
      if (pending_unk) add(*std::exchange(pending_unk, std::nullopt));
      add(*id);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (size_t i = begin; i < pos; ++i)
        all = all && byte_ids_[static_cast<uint8_t>(word[i])] >= 0;
      if (all) {
        // Hugging Face does not flush a pending unknown here; neither do we.
        for (size_t i = begin; i < pos; ++i) add(byte_ids_[static_cast<uint8_t>(word[i])]);
        continue;
      }
    }
    if (unk_token_) {
      if (!unk_id_) fail("BPE unk_token \"{}\" is not in the vocabulary", *unk_token_);
      if (pending_unk && !fuse_unk_) add(*pending_unk);
      pending_unk = *unk_id_;
    }
    // Without an unk_token an unknown character is dropped, as in Hugging Face.
  }
  if (pending_unk) add(*pending_unk);

  struct Candidate {
    uint64_t order;  // rank, then position: lowest first
    int32_t new_id;
    int32_t pos() const { return static_cast<int32_t>(order & 0xFFFFFFFF); }
    bool operator>(const Candidate& o) const { return order > o.order; }
  };
  // A binary heap in a per-thread vector (std::priority_queue cannot reuse its memory).
  thread_local std::vector<Candidate> heap;
  heap.clear();
  const auto push = [&](const Candidate& c) {
    heap.push_back(c);
    std::push_heap(heap.begin(), heap.end(), std::greater<>());
  };
  const auto push_pair = [&](int32_t left) {
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    if (const auto* m = merges_.find(PairTable::key(symbols[left].id, symbols[right].id)))
      push({(static_cast<uint64_t>(m->rank) << 32) | static_cast<uint32_t>(left), m->new_id});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) push_pair(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    const Candidate top = heap.back();
    heap.pop_back();
    const int32_t top_pos = top.pos();
    Symbol& left = symbols[top_pos];
    if (!left.alive || left.next < 0) continue;
    // The pair may have changed since it was queued.
    const auto* m = merges_.find(PairTable::key(left.id, symbols[left.next].id));
    if (m == nullptr || m->new_id != top.new_id) continue;
    Symbol& right = symbols[left.next];
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top_pos;
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(top_pos);
  }
  for (const Symbol& s : symbols) {
    if (s.alive) out.push_back(s.id);
  }
  // A huge word must not pin its buffers to the thread for good.
  constexpr size_t kKeep = size_t{1} << 16;
  if (symbols.capacity() > kKeep) std::vector<Symbol>().swap(symbols);
  if (heap.capacity() > kKeep) std::vector<Candidate>().swap(heap);
}

}  // namespace tessera::tokenizer
