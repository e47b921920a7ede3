#include "tokenizer/decoder.h"

#include "core/status.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace tessera::tokenizer {
namespace {

class ByteLevel : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens, DecodeContext& context) const override {
    std::string bytes;
    for (const std::string& token : tokens) {
      const size_t mark = bytes.size();
      size_t pos = 0;
      bool mapped = true;
      while (pos < token.size()) {
        const int b = char_to_byte(utf8_next(token, pos));
        if (b < 0) {
          mapped = false;
          break;
        }
        bytes.push_back(static_cast<char>(b));
      }
      // A token with a character outside the byte alphabet (an added token) stays as written.
      if (!mapped) bytes.replace(mark, std::string::npos, token);
    }
    tokens.assign(1, context.raw_bytes ? bytes : utf8_lossy(bytes));
    context.fused = true;
  }
};

class Metaspace : public Decoder {
 public:
  Metaspace(std::string replacement, bool prepend)
      : replacement_(std::move(replacement)), prepend_(prepend) {}
  void decode_chain(std::vector<std::string>& tokens, DecodeContext& context) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      // Hugging Face drops every replacement character of the text's first token.
      const bool drop = i == 0 && prepend_ && context.at_text_start;
      std::string out;
      const std::string& token = tokens[i];
      for (size_t pos = 0; pos < token.size();) {
        if (token.compare(pos, replacement_.size(), replacement_) == 0) {
          if (!drop) out += ' ';
          pos += replacement_.size();
        } else {
          out += token[pos++];
        }
      }
      tokens[i] = std::move(out);
    }
  }

 private:
  std::string replacement_;
  bool prepend_;
};

class ByteFallback : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens, DecodeContext& context) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string bytes;
    size_t byte_count = 0;
    const auto flush = [&] {
      if (byte_count == 0) return;
      if (context.raw_bytes || utf8_valid(bytes)) {
        out.push_back(bytes);
      } else {
        // Invalid byte runs become one U+FFFD per byte, as in Hugging Face.
        for (size_t i = 0; i < byte_count; ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      bytes.clear();
      byte_count = 0;
    };
    for (std::string& token : tokens) {
      const int byte = parse_byte(token);
      if (byte >= 0) {
        bytes.push_back(static_cast<char>(byte));
        ++byte_count;
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    tokens = std::move(out);
  }

 private:
  static int hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  // "<0xNN>" -> NN, else -1.
  static int parse_byte(const std::string& token) {
    if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') return -1;
    const int hi = hex(token[3]), lo = hex(token[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }
};

class Fuse : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens, DecodeContext& context) const override {
    std::string joined;
    for (const std::string& t : tokens) joined += t;
    tokens.assign(1, std::move(joined));
    context.fused = true;
  }
};

class Strip : public Decoder {
 public:
  Strip(std::string content, size_t start, size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens, DecodeContext& context) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& token = tokens[i];
      // In a streaming window, the fused text does not begin the output: keep its start.
      const size_t start = (i == 0 && context.fused && !context.at_text_start) ? 0 : start_;
      size_t begin = 0, end = token.size();
      for (size_t n = 0; n < start && token.compare(begin, content_.size(), content_) == 0; ++n)
        begin += content_.size();
      for (size_t n = 0; n < stop_ && end >= begin + content_.size() &&
                         token.compare(end - content_.size(), content_.size(), content_) == 0;
           ++n)
        end -= content_.size();
      token = token.substr(begin, end - begin);
    }
  }

 private:
  std::string content_;
  size_t start_, stop_;
};

class Replace : public Decoder {
 public:
  Replace(std::unique_ptr<Regex> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens, DecodeContext&) const override {
    for (std::string& token : tokens) token = pattern_->replace_all(token, content_);
  }

 private:
  std::unique_ptr<Regex> pattern_;
  std::string content_;
};

class Sequence : public Decoder {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  void decode_chain(std::vector<std::string>& tokens, DecodeContext& context) const override {
    for (const auto& step : steps_) step->decode_chain(tokens, context);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

}  // namespace

std::unique_ptr<Decoder> parse_decoder(const nlohmann::json& json) {
  if (json.is_null()) return nullptr;
  const std::string type = json.at("type").get<std::string>();
  if (type == "ByteLevel") return std::make_unique<ByteLevel>();
  if (type == "Metaspace") {
    bool prepend = true;
    if (json.contains("prepend_scheme") && !json.at("prepend_scheme").is_null()) {
      prepend = json.at("prepend_scheme").get<std::string>() != "never";
    } else if (json.contains("add_prefix_space")) {
      prepend = json.at("add_prefix_space").get<bool>();
    }
    std::string replacement = json.value("replacement", std::string("\xE2\x96\x81"));
    if (replacement.empty()) fail("Metaspace replacement must not be empty");
    return std::make_unique<Metaspace>(std::move(replacement), prepend);
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallback>();
  if (type == "Fuse") return std::make_unique<Fuse>();
  if (type == "Strip") {
    std::string content = json.at("content").get<std::string>();
    if (content.empty()) fail("Strip decoder content must not be empty");
    return std::make_unique<Strip>(std::move(content), json.value("start", size_t{0}),
                                   json.value("stop", size_t{0}));
  }
  if (type == "Replace") {
    return std::make_unique<Replace>(parse_pattern(json.at("pattern")),
                                     json.at("content").get<std::string>());
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> steps;
    for (const auto& step : json.at("decoders")) {
      if (auto d = parse_decoder(step)) steps.push_back(std::move(d));
    }
    return std::make_unique<Sequence>(std::move(steps));
  }
  fail(ErrorKind::kUnsupported,
       "unsupported decoder type \"{}\" (supported: ByteLevel, Metaspace, ByteFallback, Fuse, "
       "Strip, Replace, Sequence)",
       type);
}

}  // namespace tessera::tokenizer
