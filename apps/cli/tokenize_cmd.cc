// tessera tokenize: the ids (and vocabulary strings) a model's tokenizer gives a text or a chat.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "apps/cli/commands.h"
#include "apps/cli/engine_flags.h"
#include "core/status.h"
#include "server/text_processor.h"
#include "tokenizer/tokenizer.h"

namespace tessera::cli {

namespace {

struct TokenizeOptions {
  std::string model = "default";
  std::string text;
  std::string chat;
  std::string chat_template;
  bool no_special_tokens = false;
  bool no_generation_prompt = false;
};

void run_tokenize(const TokenizeOptions& o) {
  if (o.text.empty() == o.chat.empty()) fail("tokenize needs exactly one of --text or --chat");
  const std::filesystem::path dir = resolve_model(o.model);
  if (!tokenizer::has_tokenizer(dir))
    fail(ErrorKind::kNotFound, "{} has no tokenizer.json", dir.string());
  std::unique_ptr<tokenizer::Tokenizer> tok = tokenizer::Tokenizer::load(dir);
  nlohmann::ordered_json out;
  std::vector<int32_t> ids;
  if (!o.text.empty()) {
    ids = tok->encode(o.text, !o.no_special_tokens);
  } else {
    std::ifstream in(o.chat);
    if (!in) fail(ErrorKind::kNotFound, "--chat: cannot read {}", o.chat);
    nlohmann::ordered_json chat = nlohmann::ordered_json::parse(in, nullptr, false);
    if (chat.is_discarded() || !chat.is_object() || !chat.contains("messages") ||
        !chat["messages"].is_array())
      fail("--chat: {} must hold a JSON object with a \"messages\" list (OpenAI format)", o.chat);
    std::unique_ptr<TextProcessor> processor = load_text_processor(dir, o.chat_template);
    ChatRenderInputs inputs;
    inputs.messages = chat["messages"];
    if (chat.contains("tools")) inputs.tools = chat["tools"];
    if (chat.contains("chat_template_kwargs")) inputs.kwargs = chat["chat_template_kwargs"];
    inputs.add_generation_prompt = !o.no_generation_prompt;
    const std::string prompt = processor->render_chat(inputs);
    // The template writes the special tokens itself (as vLLM's chat endpoint does).
    ids = tok->encode(prompt, false);
    out["prompt"] = prompt;
  }
  nlohmann::ordered_json tokens = nlohmann::ordered_json::array();
  for (int32_t id : ids) tokens.push_back(tok->id_to_token(id).value_or(""));
  nlohmann::ordered_json result;
  result["ids"] = ids;
  result["tokens"] = tokens;
  if (out.contains("prompt")) result["prompt"] = out["prompt"];
  std::printf("%s\n",
              result.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto o = std::make_shared<TokenizeOptions>();
  auto* cmd = app.add_subcommand("tokenize", "Tokenize text or a chat with a model's tokenizer");
  cmd->add_option("--model", o->model, "Model folder (or 'default')")->capture_default_str();
  cmd->add_option("--text", o->text, "Text to tokenize");
  cmd->add_option("--chat", o->chat, "JSON file with {\"messages\": [...]} (OpenAI format)");
  cmd->add_option("--chat-template", o->chat_template, "Chat template file or inline Jinja");
  cmd->add_flag("--no-special-tokens", o->no_special_tokens,
                "Do not add BOS/EOS (the post-processor's special tokens)");
  cmd->add_flag("--no-generation-prompt", o->no_generation_prompt,
                "Render the chat without the assistant prompt at the end");
  cmd->callback([o] { run_tokenize(*o); });
}

}  // namespace tessera::cli
