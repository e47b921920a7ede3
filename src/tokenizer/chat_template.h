// Chat templates as vLLM serves them: which template a model folder has, how an OpenAI-format
// conversation becomes the template's messages (vLLM's preprocessing), and the context
// transformers' apply_chat_template renders it with. See docs/chat-templates.md, "How tessera
// builds the chat context".
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/jinja/jinja.h"

namespace tessera::tokenizer {

using Json = nlohmann::ordered_json;

// How message content reaches the template (vLLM's --chat-template-content-format): kString
// joins text parts into one string with "\n"; kOpenAI passes a list of {"type": "text", ...}.
enum class ContentFormat { kString, kOpenAI };

// vLLM's "auto" detection: kOpenAI when the template has a for loop over a message's content
// (`for part in message['content']`, where `message` is the target of a loop over `messages` or
// over a variable assigned from it); kString otherwise.
ContentFormat detect_content_format(std::string_view source);

// What one render needs (OpenAI format, as a request carries it).
struct ChatInputs {
  Json messages = Json::array();
  Json tools;      // null or a list of {"type": "function", "function": {...}}
  Json documents;  // null or a list
  bool add_generation_prompt = false;
  bool continue_final_message = false;
  Json kwargs = Json::object();  // chat_template_kwargs (e.g. enable_thinking)
};

// vLLM's conversation: each message reduced to role, content (a string, or a list of text parts
// for kOpenAI), tool_calls (arguments parsed from JSON strings), tool_call_id, name and
// reasoning_content. Throws tessera::Error on non-text parts and malformed messages.
Json prepare_messages(const Json& messages, ContentFormat format);

// vLLM's tool list as its request model dumps it: {"type", "function": {"name", "description",
// "parameters", ...}, ...}, with null for a missing description or parameters.
Json prepare_tools(const Json& tools);

// transformers' special_tokens_map from tokenizer_config.json (and special_tokens_map.json's
// content, which overrides it): bos/eos/unk/sep/pad/cls/mask tokens as strings,
// additional_special_tokens, and the model's extra_special_tokens. Unset ones are left out.
Json special_tokens_map(const nlohmann::json& tokenizer_config,
                        const nlohmann::json& special_tokens_file = nullptr);

// One parsed template.
class ChatTemplate {
 public:
  // Throws tessera::Error (kInvalidArgument) on a syntax error.
  ChatTemplate(std::string source, Json special_tokens, jinja::Options options = {});

  const std::string& source() const { return source_; }
  ContentFormat content_format() const { return format_; }

  // The variables the template sees (transformers: special tokens, then kwargs, messages, tools,
  // documents, add_generation_prompt), with messages already prepared.
  Json context(const ChatInputs& inputs) const;
  // The prompt. Throws tessera::Error with the template's message (raise_exception) or a clear
  // one for bad input.
  std::string render(const ChatInputs& inputs) const;

 private:
  std::string source_;
  Json special_tokens_;
  ContentFormat format_;
  jinja::Template template_;
};

// A model's templates: one, or several by name (tokenizer_config.json's list of {name,
// template}), chosen as transformers does.
class ChatTemplates {
 public:
  ChatTemplates() = default;
  // `templates`: null, a string, or a list of {"name", "template"} (tokenizer_config.json).
  ChatTemplates(const Json& templates, Json special_tokens, jinja::Options options = {});

  // The folder's templates: `override_arg` (--chat-template: a file, or inline Jinja when it
  // cannot be opened and contains '{', '}' or a newline) if given; else chat_template.jinja (and
  // additional_chat_templates/NAME.jinja); else tokenizer_config.json's chat_template.
  static ChatTemplates load(const std::filesystem::path& dir, const std::string& override_arg,
                            jinja::Options options = {});

  bool empty() const { return templates_.empty(); }
  std::vector<std::string> names() const;

  // The template for a render: `request_template` (a template name, or Jinja source) if given,
  // else "tool_use" when there are tools and it exists, else "default" (or the only one).
  std::shared_ptr<const ChatTemplate> select(bool has_tools,
                                             std::string_view request_template = {}) const;

  // select() then render(); chat_template_kwargs may carry "chat_template" too (as in vLLM).
  std::string render(const ChatInputs& inputs, std::string_view request_template = {}) const;

 private:
  std::map<std::string, std::shared_ptr<const ChatTemplate>> templates_;
  bool named_ = false;                            // a list of named templates (not a single one)
  std::shared_ptr<const ChatTemplate> override_;  // --chat-template
  Json special_tokens_ = Json::object();
  jinja::Options options_;
  // Per-request templates, parsed once (a client usually sends the same one).
  struct Cache {
    std::mutex mutex;
    std::map<std::string, std::shared_ptr<const ChatTemplate>, std::less<>> templates;
  };
  std::unique_ptr<Cache> cache_ = std::make_unique<Cache>();
};

// vLLM's --chat-template argument: the file's text, or the argument itself as inline Jinja.
std::string load_chat_template_arg(const std::string& arg);

}  // namespace tessera::tokenizer
