// Reasoning split out of a chat answer, with vLLM's --reasoning-parser NAME: the text between
// <think> and </think> goes to `reasoning_content`, the rest to `content`. Our own code (vLLM's
// parsers are Python), returning what vLLM's parsers of the same names return:
//   deepseek_r1  the output is reasoning up to </think> (the template already wrote <think>;
//                one at the start of the output is dropped); without </think>, all reasoning
//   qwen3        reasoning only when the output has both <think> and </think>; otherwise all
//                of it is content
//   deepseek_v3  DeepSeek-V3.1: as deepseek_r1 when the request's chat_template_kwargs turn
//                `thinking` on (its template then opens <think>), otherwise no split at all
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace tessera {

struct ReasoningSplit {
  std::optional<std::string> reasoning;
  std::optional<std::string> content;
};

class ReasoningParser {
 public:
  virtual ~ReasoningParser() = default;
  // Throws tessera::Error naming the known parsers when `name` is not one of them.
  static std::unique_ptr<ReasoningParser> create(const std::string& name);
  static std::vector<std::string> names();

  virtual std::string name() const = 0;
  // Whether this request's answer is split at all, given its chat_template_kwargs.
  virtual bool applies(const nlohmann::ordered_json& chat_template_kwargs) const { return true; }
  // The whole output, once finished.
  virtual ReasoningSplit split(const std::string& text) const = 0;

  // Streaming: the output so far (`done`: all of it) as the reasoning and the content that are
  // settled whatever comes next; a trailing piece that may become a tag is held back.
  struct Progress {
    std::string reasoning, content;
  };
  virtual Progress progress(const std::string& text, bool done) const = 0;
};

}  // namespace tessera
