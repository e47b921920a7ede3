// tessera generate: one prompt in, streamed text (or one JSON object) out.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "apps/cli/commands.h"
#include "apps/cli/engine_flags.h"
#include "core/status.h"
#include "server/text_processor.h"

namespace tessera::cli {

namespace {

struct GenerateOptions {
  EngineFlags engine;
  std::string prompt;
  std::string chat;  // FILE.json with {"messages": [...]} (OpenAI format)
  std::string chat_template;
  std::vector<std::string> prompt_ids;  // repeatable: several prompts run as one batch
  int64_t max_tokens = 16;
  // Unset: generation_config.json's value, else vLLM's default.
  std::optional<double> temperature, top_p, min_p, repetition_penalty;
  std::optional<int64_t> top_k;
  double presence_penalty = 0, frequency_penalty = 0;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int logprobs = -1;
  bool json = false;
};

std::vector<int32_t> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    while (used < item.size() && std::isspace(static_cast<unsigned char>(item[used]))) ++used;
    if (used != item.size() || item.empty() || v < 0 || v > INT32_MAX)
      fail("--prompt-ids: \"{}\" is not a token id (expected e.g. 1,2,3)", item);
    ids.push_back(static_cast<int32_t>(v));
  }
  if (ids.empty()) fail("--prompt-ids is empty");
  return ids;
}

void run_generate(const GenerateOptions& o) {
  const int given = !o.prompt.empty() + !o.chat.empty() + !o.prompt_ids.empty();
  if (given != 1) fail("generate needs exactly one of --prompt, --chat or --prompt-ids");
  if (o.prompt_ids.size() > 1 && !o.json)
    fail("several --prompt-ids need --json (one JSON object per prompt, one per line)");
  const EngineArgs args = to_engine_args(o.engine);
  std::unique_ptr<TextProcessor> processor =
      load_text_processor(args.tokenizer_dir(), o.chat_template);
  if (!processor && o.prompt_ids.empty())
    fail("{} has no tokenizer.json: pass the prompt as token ids with --prompt-ids",
         args.tokenizer_dir().string());
  std::vector<int32_t> prompt;
  std::vector<std::vector<int32_t>> extra_prompts;  // the second and later --prompt-ids
  if (!o.prompt_ids.empty()) {
    prompt = parse_ids(o.prompt_ids[0]);
    for (size_t i = 1; i < o.prompt_ids.size(); ++i)
      extra_prompts.push_back(parse_ids(o.prompt_ids[i]));
  } else if (!o.prompt.empty()) {
    prompt = processor->encode(o.prompt, /*add_special_tokens=*/true);
  } else {
    std::ifstream in(o.chat);
    if (!in) fail(ErrorKind::kNotFound, "--chat: cannot read {}", o.chat);
    nlohmann::ordered_json chat = nlohmann::ordered_json::parse(in, nullptr, false);
    if (chat.is_discarded() || !chat.is_object() || !chat.contains("messages") ||
        !chat["messages"].is_array())
      fail("--chat: {} must hold a JSON object with a \"messages\" list (OpenAI format)", o.chat);
    ChatRenderInputs inputs;
    inputs.messages = chat["messages"];
    if (chat.contains("tools")) inputs.tools = chat["tools"];
    if (chat.contains("chat_template_kwargs")) inputs.kwargs = chat["chat_template_kwargs"];
    prompt = processor->encode(processor->render_chat(inputs), /*add_special_tokens=*/false);
  }
  if (prompt.empty()) fail("the prompt is empty");

  std::unique_ptr<EngineInstance> instance =
      EngineInstance::create(args, processor ? processor->decoder_factory() : TextDecoderFactory());
  SamplingParams params = SamplingParams::from_defaults(instance->generation_config());
  params.max_tokens = o.max_tokens;
  if (o.temperature) params.temperature = *o.temperature;
  if (o.top_p) params.top_p = *o.top_p;
  if (o.top_k) params.top_k = *o.top_k;
  if (o.min_p) params.min_p = *o.min_p;
  if (o.repetition_penalty) params.repetition_penalty = *o.repetition_penalty;
  params.presence_penalty = o.presence_penalty;
  params.frequency_penalty = o.frequency_penalty;
  params.seed = o.engine.seed;  // same command, same output
  params.stop = o.stop;
  params.stop_token_ids = o.stop_token_ids;
  params.ignore_eos = o.ignore_eos;
  if (o.logprobs >= 0) params.logprobs = o.logprobs;

  const bool text_mode = processor != nullptr;
  LLMEngine& engine = instance->engine();
  std::vector<std::vector<int32_t>> prompts = {prompt};
  prompts.insert(prompts.end(), extra_prompts.begin(), extra_prompts.end());
  struct Result {
    std::vector<int32_t> output;
    std::vector<TokenLogprobs> logprobs;
    std::string text;
    FinishReason reason = FinishReason::kNone;
  };
  std::vector<Result> results(prompts.size());
  // All prompts are in the engine at once: they run as one continuous batch.
  for (size_t i = 0; i < prompts.size(); ++i)
    engine.add_request(prompts.size() == 1 ? "generate" : fmt::format("generate-{}", i), prompts[i],
                       params);
  while (engine.has_unfinished()) {
    for (const RequestOutput& out : engine.step()) {
      const size_t i =
          prompts.size() == 1 ? 0 : std::stoul(out.request_id.substr(out.request_id.find('-') + 1));
      Result& r = results[i];
      r.output.insert(r.output.end(), out.new_token_ids.begin(), out.new_token_ids.end());
      r.logprobs.insert(r.logprobs.end(), out.new_logprobs.begin(), out.new_logprobs.end());
      r.text += out.new_text;
      if (!o.json) {
        if (text_mode) {
          std::fwrite(out.new_text.data(), 1, out.new_text.size(), stdout);
        } else {
          for (int32_t id : out.new_token_ids) std::printf("%d ", id);  // no tokenizer: ids
        }
        std::fflush(stdout);
      }
      if (out.finished) r.reason = out.finish_reason;
    }
  }
  if (o.json) {
    for (size_t i = 0; i < prompts.size(); ++i) {
      const Result& r = results[i];
      nlohmann::json j = {{"prompt_ids", prompts[i]},
                          {"output_ids", r.output},
                          {"text", r.text},
                          {"finish_reason", finish_reason_name(r.reason)}};
      if (o.logprobs >= 0) {
        nlohmann::json lp = nlohmann::json::array();
        for (const TokenLogprobs& t : r.logprobs) {
          nlohmann::json pos = nlohmann::json::array();
          for (const auto& [id, value] : t.top) pos.push_back({id, value});
          lp.push_back(pos);
        }
        j["logprobs"] = lp;
      }
      std::printf("%s\n", j.dump().c_str());
    }
  } else {
    std::printf("\n");
  }
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto opts = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text for one prompt");
  add_engine_flags(cmd, opts->engine);
  cmd->add_option("--prompt", opts->prompt, "Prompt text (BOS added as the tokenizer says)");
  cmd->add_option("--chat", opts->chat,
                  "JSON file with {\"messages\": [...]}, rendered with the chat template");
  cmd->add_option("--chat-template", opts->chat_template,
                  "Chat template file or inline Jinja (default: the tokenizer's)");
  cmd->add_option("--prompt-ids", opts->prompt_ids,
                  "Prompt as comma-separated token ids; repeat for several prompts run as one "
                  "batch (with --json: one line each)");
  cmd->add_option("--max-tokens", opts->max_tokens, "Tokens to generate")->capture_default_str();
  cmd->add_option("--temperature", opts->temperature,
                  "0 = greedy (default: generation_config.json, else 1)");
  cmd->add_option("--top-p", opts->top_p, "Nucleus sampling mass");
  cmd->add_option("--top-k", opts->top_k, "Keep the k most likely tokens (0 or -1: off)");
  cmd->add_option("--min-p", opts->min_p, "Drop tokens below min_p x the top probability");
  cmd->add_option("--repetition-penalty", opts->repetition_penalty, "> 1 discourages repeats");
  cmd->add_option("--presence-penalty", opts->presence_penalty, "OpenAI presence penalty");
  cmd->add_option("--frequency-penalty", opts->frequency_penalty, "OpenAI frequency penalty");
  cmd->add_option("--stop", opts->stop, "Stop string (repeatable)");
  cmd->add_option("--stop-token-ids", opts->stop_token_ids, "Stop token ids")->delimiter(',');
  cmd->add_flag("--ignore-eos", opts->ignore_eos, "Do not stop at the end-of-sequence token");
  cmd->add_option("--logprobs", opts->logprobs,
                  "Report the top K log-probabilities per generated token");
  cmd->add_flag("--json", opts->json, "Print one JSON object instead of streaming text");
  cmd->callback([opts] { run_generate(*opts); });
}

}  // namespace tessera::cli
