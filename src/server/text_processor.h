// The served model's text side: its tokenizer and chat template, as the server and the CLI use
// them. An interface so that the HTTP layer can be tested with a fake, and so that a model folder
// without tokenizer.json still serves token-id prompts (like vLLM's --skip-tokenizer-init).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/sequence.h"

namespace tessera {

struct ChatRenderInputs {
  nlohmann::ordered_json messages;  // OpenAI format
  nlohmann::ordered_json tools;     // null or an array
  bool add_generation_prompt = true;
  bool continue_final_message = false;
  nlohmann::ordered_json kwargs = nlohmann::ordered_json::object();  // chat_template_kwargs
  std::string chat_template;  // per-request override; empty: the model's
};

class TextProcessor {
 public:
  virtual ~TextProcessor() = default;
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const = 0;
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const = 0;
  // The prompt text for a chat. Throws tessera::Error (a bad template, a role order the
  // template rejects, no template at all).
  virtual std::string render_chat(const ChatRenderInputs& inputs) const = 0;
  virtual TextDecoderFactory decoder_factory() const = 0;
  virtual std::optional<int32_t> eos_token_id() const = 0;
  // What each token adds to a text, for structured outputs; built on first use (thread-safe)
  // with `eos_ids` as the tokens that end a sequence.
  virtual std::shared_ptr<const TokenVocabulary> token_vocabulary(
      const std::vector<int32_t>& eos_ids) const = 0;
};

// The tokenizer of the model folder (tokenizer.json, tokenizer_config.json) with the chat
// template `chat_template_arg` (a file or inline Jinja; empty: the folder's). nullptr when the
// folder has no tokenizer.json. Throws tessera::Error when it has a broken one.
std::unique_ptr<TextProcessor> load_text_processor(const std::filesystem::path& model_dir,
                                                   const std::string& chat_template_arg);

}  // namespace tessera
