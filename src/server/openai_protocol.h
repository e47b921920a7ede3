// The OpenAI request bodies (completions and chat completions, with vLLM's extra fields) read
// into engine terms. Parsing checks types and ranges and throws ApiError(400) naming the field;
// what needs the model (tokenizing, context length) is the server's job.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/sampling_params.h"
#include "server/text_processor.h"

namespace tessera {

struct PromptInput {
  std::optional<std::string> text;  // set when the prompt was text
  std::vector<int32_t> ids;         // set when it was token ids (filled by tokenizing otherwise)
};

struct GenerateRequest {
  bool chat = false;
  std::optional<std::string> model;
  std::vector<PromptInput> prompts;  // completions: one or more; chat: filled after rendering
  ChatRenderInputs chat_inputs;      // chat only
  SamplingParams params;             // max_tokens resolved by the server when unset
  bool max_tokens_set = false;
  int64_t n = 1;
  // vLLM's use_beam_search (n beams) and length_penalty.
  bool use_beam_search = false;
  double length_penalty = 1.0;
  bool stream = false;
  bool include_usage = false;
  bool continuous_usage = false;
  bool echo = false;
  bool add_special_tokens = true;
  // Completions: `logprobs` k; chat: `top_logprobs` when `logprobs` is true.
  std::optional<int> logprobs;
  bool return_tokens_as_token_ids = false;
  // Keep only the last k prompt tokens (vLLM's truncate_prompt_tokens; -1: max_model_len).
  std::optional<int64_t> truncate_prompt_tokens;
  // Structured output (response_format json_object / json_schema, vLLM's guided_json,
  // guided_choice and structured_outputs): a JSON schema, or texts to choose from; compiled by
  // the server. `structured_field` names the request field, for errors.
  std::optional<nlohmann::json> json_schema;
  std::vector<std::string> choices;
  std::optional<std::string> regex;  // guided_regex / structured_outputs.regex
  bool compact_json = false;         // structured_outputs.disable_any_whitespace
  std::string structured_field;
  // Chat tool_choice: a named function (the output is its arguments, as JSON) or "required"
  // (a JSON list of {"name", "parameters"} calls); both set json_schema.
  std::optional<std::string> forced_tool;
  bool tools_required = false;
  // Tools with tool_choice "auto" (or none given): calls are parsed out of the free text by the
  // server's tool parser (--enable-auto-tool-choice --tool-call-parser).
  bool auto_tools = false;
};

// vLLM's default --max-logprobs: the most logprobs, top_logprobs or prompt_logprobs a request
// may ask for.
inline constexpr int kMaxLogprobs = 20;

GenerateRequest parse_completion_request(const nlohmann::json& body, const SamplingParams& defaults,
                                         int64_t max_logprobs = kMaxLogprobs);
GenerateRequest parse_chat_request(const nlohmann::json& body, const SamplingParams& defaults,
                                   int64_t max_logprobs = kMaxLogprobs);

}  // namespace tessera
