#include "tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "core/status.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace tessera::tokenizer {

const char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

namespace {

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Behavior parse_behavior(const std::string& name) {
  if (name == "Removed") return Behavior::kRemoved;
  if (name == "Isolated") return Behavior::kIsolated;
  if (name == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return Behavior::kMergedWithNext;
  if (name == "Contiguous") return Behavior::kContiguous;
  fail(
      "unknown split behavior \"{}\" (expected Removed, Isolated, MergedWithPrevious, "
      "MergedWithNext or Contiguous)",
      name);
}

struct Span {
  size_t begin, end;
  bool is_match;
};

using Matches = std::vector<std::pair<size_t, size_t>>;

// Vectors reused across the pieces of one pre_tokenize call.
struct Scratch {
  Matches matches;
  std::vector<Span> spans, result;
};

// Splits `piece` (the text of `at` in `pieces`) around `matches` (offsets in the piece) the way
// Hugging Face's NormalizedString::split does, appending the parts to `out`.
void split_piece(const Pieces::Span& at, std::string_view piece, const Matches& matches,
                 Behavior behavior, bool invert, Scratch& scratch, std::vector<Pieces::Span>& out) {
  std::vector<Span>& spans = scratch.spans;
  std::vector<Span>& result = scratch.result;
  spans.clear();
  result.clear();
  size_t last = 0;
  for (const auto& [b, e] : matches) {
    if (b > last) spans.push_back({last, b, false});
    spans.push_back({b, e, true});
    last = e;
  }
  if (last < piece.size()) spans.push_back({last, piece.size(), false});
  if (invert) {
    for (Span& s : spans) s.is_match = !s.is_match;
  }

  const std::vector<Span>* parts = &result;
  switch (behavior) {
    case Behavior::kIsolated:
      parts = &spans;
      break;
    case Behavior::kRemoved:
      for (const Span& s : spans) {
        if (!s.is_match) result.push_back(s);
      }
      break;
    case Behavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !result.empty()) {
          result.back().end = s.end;
        } else {
          result.push_back(s);
        }
        previous_match = s.is_match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !result.empty()) {
          result.back().begin = it->begin;
        } else {
          result.push_back(*it);
        }
        previous_match = it->is_match;
      }
      std::reverse(result.begin(), result.end());
      break;
    }
    case Behavior::kContiguous: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !result.empty()) {
          result.back().end = s.end;
        } else {
          result.push_back(s);
        }
        previous_match = s.is_match;
      }
      break;
    }
  }
  for (const Span& s : *parts) {
    if (s.end > s.begin)
      out.push_back({at.begin + s.begin, at.begin + s.end, at.at_origin && s.begin == 0});
  }
}

// Replaces the spans of `pieces` by what `split(span, piece text, out)` makes of each.
template <typename SplitFn>
void split_all(Pieces& pieces, SplitFn&& split) {
  std::vector<Pieces::Span> out;
  out.reserve(pieces.spans.size() * 2);
  for (const Pieces::Span& at : pieces.spans) split(at, pieces.view(at), out);
  pieces.spans = std::move(out);
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<Regex> pattern, Behavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(Pieces& pieces) const override {
    Scratch scratch;
    split_all(pieces,
              [&](const Pieces::Span& at, std::string_view piece, std::vector<Pieces::Span>& out) {
                pattern_->find_all(piece, scratch.matches);
                split_piece(at, piece, scratch.matches, behavior_, invert_, scratch, out);
              });
  }

 private:
  std::unique_ptr<Regex> pattern_;
  Behavior behavior_;
  bool invert_;
};

// Each byte's GPT-2 byte-level character, UTF-8 encoded (one or two bytes).
struct ByteLevelMap {
  char bytes[256][2];
  uint8_t length[256];
  ByteLevelMap() {
    for (int b = 0; b < 256; ++b) {
      std::string s;
      utf8_append(s, byte_to_char(static_cast<unsigned char>(b)));
      length[b] = static_cast<uint8_t>(s.size());
      for (size_t i = 0; i < s.size(); ++i) bytes[b][i] = s[i];
    }
  }
};

class ByteLevel : public PreTokenizer {
 public:
  ByteLevel(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space),
        regex_(use_regex ? std::make_unique<Regex>(kGpt2Pattern, false) : nullptr) {}
  void pre_tokenize(Pieces& pieces) const override {
    Pieces out;
    // Room for the worst case: two bytes per byte, one prefix space per piece. Spans do not
    // overlap, so their bytes add up to at most the text's.
    out.text.resize(pieces.text.size() * 2 + pieces.spans.size() * 2);
    out.spans.reserve(pieces.spans.size());
    size_t size = 0;  // of out.text in use
    // Appends the byte-level form of `piece` as one span.
    const auto emit = [&](std::string_view piece, bool at_origin) {
      const size_t begin = size;
      char* dst = out.text.data();
      for (const char c : piece) {
        const auto b = static_cast<unsigned char>(c);
        dst[size] = map_.bytes[b][0];
        dst[size + 1] = map_.bytes[b][1];
        size += map_.length[b];
      }
      out.spans.push_back({begin, size, at_origin});
    };
    Scratch scratch;
    std::string prefixed;
    for (const Pieces::Span& at : pieces.spans) {
      std::string_view piece = pieces.view(at);
      if (add_prefix_space_ && (piece.empty() || piece[0] != ' ')) {
        prefixed.assign(" ");
        prefixed += piece;
        piece = prefixed;
      }
      if (!regex_) {
        if (!piece.empty()) emit(piece, at.at_origin);
        continue;
      }
      regex_->find_all(piece, scratch.matches);
      size_t last = 0;  // Isolated: the gaps and the matches, in order
      for (const auto& [b, e] : scratch.matches) {
        if (b > last) emit(piece.substr(last, b - last), at.at_origin && last == 0);
        emit(piece.substr(b, e - b), at.at_origin && b == 0);
        last = e;
      }
      if (last < piece.size()) emit(piece.substr(last), at.at_origin && last == 0);
    }
    out.text.resize(size);
    pieces = std::move(out);
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
  ByteLevelMap map_;
};

class Digits : public PreTokenizer {
 public:
  explicit Digits(bool individual) : individual_(individual) {}
  void pre_tokenize(Pieces& pieces) const override {
    Scratch scratch;
    split_all(pieces, [&](const Pieces::Span& at, std::string_view piece,
                          std::vector<Pieces::Span>& out) {
      Matches& matches = scratch.matches;
      matches.clear();
      size_t pos = 0;
      while (pos < piece.size()) {
        const size_t start = pos;
        if (is_numeric(utf8_next(piece, pos))) matches.emplace_back(start, pos);
      }
      split_piece(at, piece, matches, individual_ ? Behavior::kIsolated : Behavior::kContiguous,
                  false, scratch, out);
    });
  }

 private:
  bool individual_;
};

class Metaspace : public PreTokenizer {
 public:
  enum class Prepend { kAlways, kFirst, kNever };
  Metaspace(std::string replacement, Prepend prepend, bool split)
      : replacement_(std::move(replacement)), prepend_(prepend), split_(split) {}
  void pre_tokenize(Pieces& pieces) const override {
    Pieces out;
    out.text.reserve(pieces.text.size() * 2);
    Scratch scratch;
    std::string p;
    for (const Pieces::Span& at : pieces.spans) {
      p.clear();
      for (const char c : pieces.view(at)) {
        if (c == ' ') {
          p += replacement_;
        } else {
          p += c;
        }
      }
      const bool starts = p.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts &&
          (prepend_ == Prepend::kAlways || (prepend_ == Prepend::kFirst && at.at_origin)))
        p.insert(0, replacement_);
      const Pieces::Span placed{out.text.size(), out.text.size() + p.size(), at.at_origin};
      out.text += p;
      if (!split_) {
        if (!p.empty()) out.spans.push_back(placed);
        continue;
      }
      Matches& matches = scratch.matches;
      matches.clear();
      for (size_t pos = p.find(replacement_); pos != std::string::npos;
           pos = p.find(replacement_, pos + replacement_.size())) {
        matches.emplace_back(pos, pos + replacement_.size());
      }
      split_piece(placed, p, matches, Behavior::kMergedWithNext, false, scratch, out.spans);
    }
    pieces = std::move(out);
  }

 private:
  std::string replacement_;
  Prepend prepend_;
  bool split_;
};

class Sequence : public PreTokenizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  void pre_tokenize(Pieces& pieces) const override {
    for (const auto& step : steps_) step->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

}  // namespace

std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const nlohmann::json& json) {
  if (json.is_null()) return nullptr;
  const std::string type = json.at("type").get<std::string>();
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevel>(json.value("add_prefix_space", true),
                                       json.value("use_regex", true));
  }
  if (type == "Split") {
    return std::make_unique<SplitPreTokenizer>(
        parse_pattern(json.at("pattern")), parse_behavior(json.at("behavior").get<std::string>()),
        json.value("invert", false));
  }
  if (type == "Digits") return std::make_unique<Digits>(json.value("individual_digits", false));
  if (type == "Metaspace") {
    Metaspace::Prepend prepend = Metaspace::Prepend::kAlways;
    if (json.contains("prepend_scheme") && !json.at("prepend_scheme").is_null()) {
      const std::string scheme = json.at("prepend_scheme").get<std::string>();
      if (scheme == "always") {
        prepend = Metaspace::Prepend::kAlways;
      } else if (scheme == "first") {
        prepend = Metaspace::Prepend::kFirst;
      } else if (scheme == "never") {
        prepend = Metaspace::Prepend::kNever;
      } else {
        fail("unknown Metaspace prepend_scheme \"{}\" (expected always, first or never)", scheme);
      }
    } else if (json.contains("add_prefix_space")) {  // older files
      prepend = json.at("add_prefix_space").get<bool>() ? Metaspace::Prepend::kAlways
                                                        : Metaspace::Prepend::kNever;
    }
    std::string replacement = json.value("replacement", std::string("\xE2\x96\x81"));
    if (replacement.empty()) fail("Metaspace replacement must not be empty");
    return std::make_unique<Metaspace>(std::move(replacement), prepend, json.value("split", true));
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const auto& step : json.at("pretokenizers")) {
      if (auto p = parse_pre_tokenizer(step)) steps.push_back(std::move(p));
    }
    return std::make_unique<Sequence>(std::move(steps));
  }
  fail(ErrorKind::kUnsupported,
       "unsupported pre_tokenizer type \"{}\" (supported: ByteLevel, Split, Digits, Metaspace, "
       "Sequence)",
       type);
}

}  // namespace tessera::tokenizer
