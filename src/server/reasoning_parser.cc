#include "server/reasoning_parser.h"

#include <fmt/format.h>

#include <string_view>

#include "core/status.h"
#include "server/text_markers.h"

namespace tessera {

namespace {

constexpr std::string_view kStart = "<think>", kEnd = "</think>";

std::optional<std::string> non_empty(std::string s) {
  if (s.empty()) return std::nullopt;
  return s;
}

// Reasoning from `from` to </think> (or, while streaming, to what may not yet be the tag), and
// content after it.
void after_start(const std::string& text, size_t from, bool done, ReasoningParser::Progress& p) {
  const size_t end = text.find(kEnd, from);
  if (end == std::string::npos) {
    const size_t stop = done ? text.size() : text.size() - marker_start_at_end(text, kEnd);
    p.reasoning = text.substr(from, stop > from ? stop - from : 0);
    return;
  }
  p.reasoning = text.substr(from, end - from);
  p.content += text.substr(end + kEnd.size());
}

class DeepSeekR1Parser : public ReasoningParser {
 public:
  std::string name() const override { return "deepseek_r1"; }

  ReasoningSplit split(const std::string& text) const override {
    const size_t start = text.find(kStart);
    const std::string rest = start == std::string::npos ? text : text.substr(start + kStart.size());
    const size_t end = rest.find(kEnd);
    if (end == std::string::npos) return {rest, std::nullopt};
    return {rest.substr(0, end), non_empty(rest.substr(end + kEnd.size()))};
  }

  Progress progress(const std::string& text, bool done) const override {
    Progress p;
    const size_t start = text.find(kStart);
    size_t from = 0;
    if (start != std::string::npos) {
      from = start + kStart.size();
    } else if (!done && text.size() < kStart.size() && kStart.substr(0, text.size()) == text) {
      return p;  // may become <think>
    }
    after_start(text, from, done, p);
    return p;
  }
};

class DeepSeekV3Parser : public DeepSeekR1Parser {
 public:
  std::string name() const override { return "deepseek_v3"; }
  // Python's bool() of kwargs["thinking"], as vLLM reads it.
  bool applies(const nlohmann::ordered_json& kwargs) const override {
    const auto it = kwargs.find("thinking");
    if (it == kwargs.end() || it->is_null()) return false;
    if (it->is_boolean()) return it->get<bool>();
    if (it->is_number()) return it->get<double>() != 0;
    return !it->empty() && !(it->is_string() && it->get<std::string>().empty());
  }
};

class Qwen3Parser : public ReasoningParser {
 public:
  std::string name() const override { return "qwen3"; }

  ReasoningSplit split(const std::string& text) const override {
    if (text.find(kStart) == std::string::npos || text.find(kEnd) == std::string::npos)
      return {std::nullopt, text};
    const std::string rest = text.substr(text.find(kStart) + kStart.size());
    const size_t end = rest.find(kEnd);
    if (end == std::string::npos) return {std::nullopt, rest};
    return {rest.substr(0, end), non_empty(rest.substr(end + kEnd.size()))};
  }

  // As vLLM streams it: reasoning once <think> has come, content otherwise.
  Progress progress(const std::string& text, bool done) const override {
    Progress p;
    const size_t start = text.find(kStart);
    if (start == std::string::npos) {
      p.content =
          text.substr(0, done ? text.size() : text.size() - marker_start_at_end(text, kStart));
      return p;
    }
    p.content = text.substr(0, start);
    after_start(text, start + kStart.size(), done, p);
    return p;
  }
};

}  // namespace

std::vector<std::string> ReasoningParser::names() {
  return {"deepseek_r1", "deepseek_v3", "qwen3"};
}

std::unique_ptr<ReasoningParser> ReasoningParser::create(const std::string& name) {
  if (name == "deepseek_r1") return std::make_unique<DeepSeekR1Parser>();
  if (name == "qwen3") return std::make_unique<Qwen3Parser>();
  if (name == "deepseek_v3") return std::make_unique<DeepSeekV3Parser>();
  fail(ErrorKind::kUnsupported, "invalid reasoning parser: {} (choose from {})", name,
       fmt::join(names(), ", "));
}

}  // namespace tessera
