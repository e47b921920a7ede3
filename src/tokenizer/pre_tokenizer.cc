#include "tokenizer/pre_tokenizer.h"

#include <functional>
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

// Splits `piece` around `matches` the way Hugging Face's NormalizedString::split does.
void split_piece(const Piece& piece, const std::vector<std::pair<size_t, size_t>>& matches,
                 Behavior behavior, bool invert, std::vector<Piece>& out) {
  const std::string& text = piece.text;
  std::vector<Span> spans;
  size_t last = 0;
  for (const auto& [b, e] : matches) {
    if (b > last) spans.push_back({last, b, false});
    spans.push_back({b, e, true});
    last = e;
  }
  if (last < text.size()) spans.push_back({last, text.size(), false});
  if (invert) {
    for (Span& s : spans) s.is_match = !s.is_match;
  }

  std::vector<Span> result;
  switch (behavior) {
    case Behavior::kIsolated:
      result = spans;
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
  for (const Span& s : result) {
    if (s.end > s.begin) {
      out.push_back({text.substr(s.begin, s.end - s.begin), piece.at_origin && s.begin == 0});
    }
  }
}

// Applies `split` to every piece.
template <typename SplitFn>
void split_all(std::vector<Piece>& pieces, SplitFn&& split) {
  std::vector<Piece> out;
  out.reserve(pieces.size());
  for (const Piece& piece : pieces) split(piece, out);
  pieces = std::move(out);
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<Regex> pattern, Behavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_all(pieces, [&](const Piece& piece, std::vector<Piece>& out) {
      split_piece(piece, pattern_->find_all(piece.text), behavior_, invert_, out);
    });
  }

 private:
  std::unique_ptr<Regex> pattern_;
  Behavior behavior_;
  bool invert_;
};

class ByteLevel : public PreTokenizer {
 public:
  ByteLevel(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space),
        regex_(use_regex ? std::make_unique<Regex>(kGpt2Pattern, false) : nullptr) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_all(pieces, [&](const Piece& piece, std::vector<Piece>& out) {
      Piece p = piece;
      if (add_prefix_space_ && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, " ");
      if (regex_) {
        split_piece(p, regex_->find_all(p.text), Behavior::kIsolated, false, out);
      } else if (!p.text.empty()) {
        out.push_back(std::move(p));
      }
    });
    for (Piece& p : pieces) {
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      for (const char c : p.text) utf8_append(mapped, byte_to_char(static_cast<unsigned char>(c)));
      p.text = std::move(mapped);
    }
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

class Digits : public PreTokenizer {
 public:
  explicit Digits(bool individual) : individual_(individual) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_all(pieces, [&](const Piece& piece, std::vector<Piece>& out) {
      std::vector<std::pair<size_t, size_t>> matches;
      size_t pos = 0;
      while (pos < piece.text.size()) {
        const size_t start = pos;
        if (is_numeric(utf8_next(piece.text, pos))) matches.emplace_back(start, pos);
      }
      split_piece(piece, matches, individual_ ? Behavior::kIsolated : Behavior::kContiguous, false,
                  out);
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
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_all(pieces, [&](const Piece& piece, std::vector<Piece>& out) {
      Piece p{{}, piece.at_origin};
      for (const char c : piece.text) {
        if (c == ' ') {
          p.text += replacement_;
        } else {
          p.text += c;
        }
      }
      const bool starts = p.text.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts && (prepend_ == Prepend::kAlways || (prepend_ == Prepend::kFirst && p.at_origin)))
        p.text.insert(0, replacement_);
      if (!split_) {
        if (!p.text.empty()) out.push_back(std::move(p));
        return;
      }
      std::vector<std::pair<size_t, size_t>> matches;
      for (size_t pos = p.text.find(replacement_); pos != std::string::npos;
           pos = p.text.find(replacement_, pos + replacement_.size())) {
        matches.emplace_back(pos, pos + replacement_.size());
      }
      split_piece(p, matches, Behavior::kMergedWithNext, false, out);
    });
  }

 private:
  std::string replacement_;
  Prepend prepend_;
  bool split_;
};

class Sequence : public PreTokenizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
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
