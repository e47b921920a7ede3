#include "tokenizer/bpe.h"

#include <fmt/format.h>

#include <queue>

#include "core/status.h"
#include "tokenizer/utf8.h"

namespace tessera::tokenizer {
namespace {

// Ids above this are rejected: the id -> token table is dense.
constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;

}  // namespace

Bpe::Bpe(const nlohmann::json& model) : cache_(new CacheShard[kCacheShards]) {
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

  const auto& vocab = model.at("vocab");
  if (!vocab.is_object()) fail("model.vocab must be an object of token -> id");
  vocab_.reserve(vocab.size());
  for (const auto& [token, id_json] : vocab.items()) {
    const int64_t id = id_json.get<int64_t>();
    if (id < 0 || id > kMaxTokenId) fail("model.vocab: id {} of \"{}\" is out of range", id, token);
    vocab_.emplace(token, static_cast<int32_t>(id));
  }
  if (unk_token_) {
    auto it = vocab_.find(*unk_token_);
    if (it != vocab_.end()) unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(fmt::format("<0x{:02X}>", b));
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }

  const auto& merges = model.at("merges");
  if (!merges.is_array()) fail("model.merges must be an array");
  merges_.reserve(merges.size());
  std::string merged;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& m = merges[rank];
    std::string left, right;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        fail("model.merges[{}]: \"{}\" is not two tokens separated by one space", rank, s);
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      fail("model.merges[{}] must be \"a b\" or [\"a\", \"b\"], got {}", rank, m.dump());
    }
    const auto a = vocab_.find(left), b = vocab_.find(right);
    if (a == vocab_.end() || b == vocab_.end())
      fail("model.merges[{}]: token \"{}\" is not in the vocabulary", rank,
           a == vocab_.end() ? left : right);
    // The continuing-subword prefix of the right part is dropped in the merged token.
    const std::string_view right_body = std::string_view(right).substr(
        right.rfind(continuing_subword_prefix_, 0) == 0 ? continuing_subword_prefix_.size() : 0);
    merged = left;
    merged += right_body;
    const auto c = vocab_.find(merged);
    if (c == vocab_.end())
      fail("model.merges[{}]: merged token \"{}\" is not in the vocabulary", rank, merged);
    // A repeated pair keeps its last rank, as Hugging Face's map construction does.
    merges_.insert_or_assign(pair_key(a->second, b->second),
                             Merge{static_cast<int32_t>(rank), c->second});
  }
}

std::optional<int32_t> Bpe::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

void Bpe::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  CacheShard& shard = cache_[std::hash<std::string_view>{}(word) % kCacheShards];
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
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  const auto add = [&](int32_t id) {
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, -1, true});
    if (n > 0) symbols[n - 1].next = n;
  };

  std::optional<int32_t> pending_unk;  // an unknown run waiting to be emitted (fuse_unk)
  std::string piece;
  size_t pos = 0;
  while (pos < word.size()) {
    const size_t begin = pos;
    pos += std::min(utf8_char_len(static_cast<unsigned char>(word[pos])), word.size() - pos);
    piece.clear();
    if (begin > 0) piece += continuing_subword_prefix_;
    piece.append(word.substr(begin, pos - begin));
    if (pos == word.size()) piece += end_of_word_suffix_;
    if (auto it = vocab_.find(piece); it != vocab_.end()) {
      if (pending_unk) add(*std::exchange(pending_unk, std::nullopt));
      add(it->second);
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
    int32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  const auto push_pair = [&](int32_t left) {
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    auto it = merges_.find(pair_key(symbols[left].id, symbols[right].id));
    if (it != merges_.end()) queue.push({it->second.rank, left, it->second.new_id});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) push_pair(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    // The pair may have changed since it was queued.
    auto it = merges_.find(pair_key(left.id, symbols[left.next].id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    Symbol& right = symbols[left.next];
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(top.pos);
  }
  for (const Symbol& s : symbols) {
    if (s.alive) out.push_back(s.id);
  }
}

}  // namespace tessera::tokenizer
