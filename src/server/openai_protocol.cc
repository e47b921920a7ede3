#include "server/openai_protocol.h"

#include <cmath>

#include "server/api_error.h"

namespace tessera {

namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& field, const std::string& message) {
  throw ApiError(400, message, field);
}

const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<double> get_number(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad(name, fmt::format("'{}' must be a number, got {}", name, v->dump()));
  const double d = v->get<double>();
  if (!std::isfinite(d)) bad(name, fmt::format("'{}' must be finite", name));
  return d;
}

// Integers may be written as floats with no fraction (clients send top_k = 1.0).
std::optional<int64_t> get_int(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (v->is_number_integer()) return v->get<int64_t>();
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15)
      return static_cast<int64_t>(d);
  }
  bad(name, fmt::format("'{}' must be an integer, got {}", name, v->dump()));
}

std::optional<bool> get_bool(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) bad(name, fmt::format("'{}' must be a boolean, got {}", name, v->dump()));
  return v->get<bool>();
}

std::optional<std::string> get_string(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_string()) bad(name, fmt::format("'{}' must be a string, got {}", name, v->dump()));
  return v->get<std::string>();
}

void check_range(const char* name, double v, double lo, double hi, bool lo_open = false) {
  if (v < lo || v > hi || (lo_open && v == lo))
    bad(name, fmt::format("{} must be in {}{}, {}], got {}", name, lo_open ? "(" : "[", lo, hi, v));
}

std::vector<int32_t> token_list(const json& v, const char* name) {
  std::vector<int32_t> ids;
  for (const json& t : v) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > INT32_MAX)
      bad(name, fmt::format("'{}' must hold non-negative token ids, got {}", name, t.dump()));
    ids.push_back(t.get<int32_t>());
  }
  return ids;
}

// Structured output fields. Exactly one kind may be given.
void parse_structured(const json& body, GenerateRequest& r) {
  auto taken = [&] { return r.json_schema || !r.choices.empty() || r.regex; };
  auto set_regex = [&](const char* name, const json& v) {
    if (taken()) bad(name, "only one kind of structured output may be given per request");
    if (!v.is_string()) bad(name, fmt::format("'{}' must be a string", name));
    r.regex = v.get<std::string>();
    r.structured_field = name;
  };
  auto set_schema = [&](const char* name, json schema) {
    if (taken()) bad(name, "only one kind of structured output may be given per request");
    r.json_schema = std::move(schema);
    r.structured_field = name;
  };
  auto set_choices = [&](const char* name, const json& list) {
    if (taken()) bad(name, "only one kind of structured output may be given per request");
    if (!list.is_array() || list.empty())
      bad(name, fmt::format("'{}' must be a non-empty list of strings", name));
    for (const json& c : list) {
      if (!c.is_string() || c.get<std::string>().empty())
        bad(name, fmt::format("'{}' must be a non-empty list of non-empty strings", name));
      r.choices.push_back(c.get<std::string>());
    }
    r.structured_field = name;
  };
  // A schema given as an object or as its JSON text.
  auto schema_value = [&](const char* name, const json& v) {
    if (v.is_object() || v.is_boolean()) return v;
    if (v.is_string()) {
      json parsed = json::parse(v.get<std::string>(), nullptr, false);
      if (!parsed.is_discarded() && (parsed.is_object() || parsed.is_boolean())) return parsed;
    }
    bad(name, fmt::format("'{}' must be a JSON schema (an object, or its JSON text)", name));
  };
  if (const json* format = field(body, "response_format")) {
    if (!format->is_object() || !format->contains("type") || !(*format)["type"].is_string())
      bad("response_format", "'response_format' must be an object with a string 'type'");
    const std::string type = (*format)["type"].get<std::string>();
    if (type == "json_object") {
      set_schema("response_format", json{{"type", "object"}});
    } else if (type == "json_schema") {
      auto js = format->find("json_schema");
      if (js == format->end() || !js->is_object())
        bad("response_format", "response_format json_schema needs a 'json_schema' object");
      auto schema = js->find("schema");
      set_schema("response_format",
                 schema == js->end() ? json::object() : schema_value("response_format", *schema));
    } else if (type != "text") {
      bad("response_format",
          fmt::format("response_format type '{}' is not supported (text, json_object, "
                      "json_schema)",
                      type));
    }
  }
  if (const json* v = field(body, "guided_json"))
    set_schema("guided_json", schema_value("guided_json", *v));
  if (const json* v = field(body, "guided_choice")) set_choices("guided_choice", *v);
  if (const json* v = field(body, "guided_regex")) set_regex("guided_regex", *v);
  if (field(body, "guided_grammar"))
    bad("guided_grammar",
        "'guided_grammar' is not supported (guided_json, guided_regex and guided_choice are)");
  if (const json* so = field(body, "structured_outputs")) {
    if (!so->is_object()) bad("structured_outputs", "'structured_outputs' must be an object");
    for (const auto& [key, value] : so->items()) {
      if (value.is_null()) continue;
      if (key == "json") {
        set_schema("structured_outputs", schema_value("structured_outputs", value));
      } else if (key == "json_object") {
        if (!value.is_boolean()) bad("structured_outputs", "'json_object' must be a boolean");
        if (value.get<bool>()) set_schema("structured_outputs", json{{"type", "object"}});
      } else if (key == "choice") {
        set_choices("structured_outputs", value);
      } else if (key == "regex") {
        set_regex("structured_outputs", value);
      } else if (key == "grammar" || key == "structural_tag") {
        bad("structured_outputs", fmt::format("structured_outputs.{} is not supported", key));
      } else if (key == "disable_any_whitespace") {
        if (!value.is_boolean())
          bad("structured_outputs", "'disable_any_whitespace' must be a boolean");
        r.compact_json = value.get<bool>();
      } else if (key != "disable_fallback" && key != "disable_additional_properties" &&
                 key != "whitespace_pattern") {
        bad("structured_outputs", fmt::format("unknown structured_outputs field '{}'", key));
      }
    }
  }
}

// The fields completions and chat share (sampling, stopping, streaming, vLLM extras).
void parse_common(const json& body, GenerateRequest& r, int64_t max_logprobs) {
  if (!body.is_object()) bad("", "the request body must be a JSON object");
  r.model = get_string(body, "model");
  SamplingParams& p = r.params;
  if (auto v = get_number(body, "temperature")) {
    if (*v < 0) bad("temperature", fmt::format("temperature must be non-negative, got {}", *v));
    p.temperature = *v;
  }
  if (auto v = get_number(body, "top_p")) {
    check_range("top_p", *v, 0, 1, true);
    p.top_p = *v;
  }
  if (auto v = get_int(body, "top_k")) {
    if (*v < -1) bad("top_k", fmt::format("top_k must be -1 (disable), or at least 1, got {}", *v));
    p.top_k = *v;
  }
  if (auto v = get_number(body, "min_p")) {
    check_range("min_p", *v, 0, 1);
    p.min_p = *v;
  }
  if (auto v = get_number(body, "presence_penalty")) {
    check_range("presence_penalty", *v, -2, 2);
    p.presence_penalty = *v;
  }
  if (auto v = get_number(body, "frequency_penalty")) {
    check_range("frequency_penalty", *v, -2, 2);
    p.frequency_penalty = *v;
  }
  if (auto v = get_number(body, "repetition_penalty")) {
    if (*v <= 0 || *v > 2)
      bad("repetition_penalty", fmt::format("repetition_penalty must be in (0, 2], got {}", *v));
    p.repetition_penalty = *v;
  }
  if (auto v = get_int(body, "seed")) p.seed = static_cast<uint64_t>(*v);
  if (auto v = get_int(body, "n")) {
    if (*v < 1 || *v > 128) bad("n", fmt::format("n must be between 1 and 128, got {}", *v));
    r.n = *v;
  }
  if (auto v = get_bool(body, "use_beam_search")) r.use_beam_search = *v;
  if (const json* lp = field(body, "length_penalty")) {
    if (!lp->is_number()) bad("length_penalty", "'length_penalty' must be a number");
    r.length_penalty = lp->get<double>();
  }
  if (auto v = get_int(body, "best_of")) {
    if (*v != r.n)
      bad("best_of", "best_of must equal n (best_of is not supported; use_beam_search is)");
  }
  if (const json* stop = field(body, "stop")) {
    if (stop->is_string()) {
      p.stop = {stop->get<std::string>()};
    } else if (stop->is_array()) {
      for (const json& s : *stop) {
        if (!s.is_string()) bad("stop", "'stop' must be a string or a list of strings");
        p.stop.push_back(s.get<std::string>());
      }
    } else {
      bad("stop", "'stop' must be a string or a list of strings");
    }
    std::erase(p.stop, std::string());
  }
  if (const json* ids = field(body, "stop_token_ids")) {
    if (!ids->is_array()) bad("stop_token_ids", "'stop_token_ids' must be a list of token ids");
    p.stop_token_ids = token_list(*ids, "stop_token_ids");
  }
  if (const json* bias = field(body, "logit_bias")) {
    if (!bias->is_object()) bad("logit_bias", "'logit_bias' must map token ids to numbers");
    for (const auto& [key, value] : bias->items()) {
      char* end = nullptr;
      const long id = std::strtol(key.c_str(), &end, 10);
      if (key.empty() || *end != '\0' || id < 0 || id > INT32_MAX)
        bad("logit_bias", fmt::format("logit_bias key \"{}\" is not a token id", key));
      if (!value.is_number()) bad("logit_bias", "logit_bias values must be numbers");
      const double b = value.get<double>();
      check_range("logit_bias", b, -100, 100);
      p.logit_bias[static_cast<int32_t>(id)] = b;
    }
  }
  if (auto v = get_int(body, "min_tokens")) {
    if (*v < 0) bad("min_tokens", fmt::format("min_tokens must be non-negative, got {}", *v));
    p.min_tokens = *v;
  }
  if (auto v = get_bool(body, "ignore_eos")) p.ignore_eos = *v;
  if (auto v = get_int(body, "priority")) p.priority = *v;
  if (const json* salt = field(body, "cache_salt")) {
    if (!salt->is_string() || salt->get<std::string>().empty())
      bad("cache_salt", "Parameter 'cache_salt' must be a non-empty string if provided.");
    // FNV-1a, never 0 (the unsalted root).
    uint64_t h = 1469598103934665603ULL;
    for (unsigned char c : salt->get<std::string>()) h = (h ^ c) * 1099511628211ULL;
    p.cache_salt = h == 0 ? 1 : h;
  }
  if (auto v = get_bool(body, "include_stop_str_in_output")) p.include_stop_str_in_output = *v;
  if (auto v = get_bool(body, "skip_special_tokens")) p.skip_special_tokens = *v;
  if (auto v = get_int(body, "prompt_logprobs")) {
    if (*v < 0 || *v > max_logprobs)
      bad("prompt_logprobs",
          fmt::format("prompt_logprobs must be in [0, {}] (--max-logprobs), got {}", max_logprobs,
                      *v));
    p.prompt_logprobs = static_cast<int>(*v);
  }
  if (auto v = get_bool(body, "stream")) r.stream = *v;
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) bad("stream_options", "'stream_options' must be an object");
    if (!r.stream) bad("stream_options", "stream_options is only allowed when stream is true");
    if (auto v = get_bool(*so, "include_usage")) r.include_usage = *v;
    if (auto v = get_bool(*so, "continuous_usage_stats")) r.continuous_usage = *v;
  }
  if (auto v = get_bool(body, "return_tokens_as_token_ids")) r.return_tokens_as_token_ids = *v;
  parse_structured(body, r);
  if (auto v = get_string(body, "user")) (void)v;
  if (auto v = get_int(body, "truncate_prompt_tokens")) {
    if (*v < -1 || *v == 0)
      bad("truncate_prompt_tokens", "truncate_prompt_tokens must be -1 or at least 1");
    r.truncate_prompt_tokens = *v;
  }
}

void parse_max_tokens(const json& body, const char* name, GenerateRequest& r) {
  if (auto v = get_int(body, name)) {
    if (*v < 1) bad(name, fmt::format("{} must be at least 1, got {}", name, *v));
    r.params.max_tokens = *v;
    r.max_tokens_set = true;
  }
}

// tool_choice: "none" and "auto" leave the output free ("auto" calls are parsed out of it by the
// server's --tool-call-parser); "required" and a named function constrain it to JSON built from
// the tools' parameter schemas, as vLLM does.
void parse_tool_choice(const json& choice, const json& body, GenerateRequest& r) {
  if (choice.is_string() && (choice == "none" || choice == "auto")) return;
  const json* tools = field(body, "tools");
  const bool have_tools = tools && tools->is_array() && !tools->empty();
  auto parameters = [](const json& tool) {
    const json& fn = tool["function"];
    auto p = fn.find("parameters");
    return p == fn.end() || p->is_null() ? json{{"type", "object"}} : *p;
  };
  auto check_tool = [](const json& tool) {
    if (!tool.is_object() || !tool.contains("function") || !tool["function"].is_object() ||
        !tool["function"].contains("name") || !tool["function"]["name"].is_string())
      bad("tools", "each tool needs a 'function' object with a string 'name'");
  };
  if (r.json_schema || !r.choices.empty() || r.regex)
    bad("tool_choice",
        "tool_choice \"required\" or a named tool cannot be combined with "
        "another structured output");
  if (choice.is_string() && choice == "required") {
    if (!have_tools) bad("tool_choice", "tool_choice \"required\" needs a non-empty 'tools' list");
    json alternatives = json::array();
    for (const json& tool : *tools) {
      check_tool(tool);
      alternatives.push_back(
          {{"properties",
            {{"name", {{"type", "string"}, {"enum", json::array({tool["function"]["name"]})}}},
             {"parameters", parameters(tool)}}},
           {"required", {"name", "parameters"}}});
    }
    r.json_schema = json{{"type", "array"},
                         {"minItems", 1},
                         {"items", {{"type", "object"}, {"anyOf", alternatives}}}};
    r.structured_field = "tool_choice";
    r.tools_required = true;
    return;
  }
  if (choice.is_object() && choice.value("type", "") == "function" && choice.contains("function") &&
      choice["function"].is_object() && choice["function"].contains("name") &&
      choice["function"]["name"].is_string()) {
    const std::string name = choice["function"]["name"];
    if (!have_tools) bad("tool_choice", "a named tool_choice needs a non-empty 'tools' list");
    for (const json& tool : *tools) {
      check_tool(tool);
      if (tool["function"]["name"] == name) {
        r.json_schema = parameters(tool);
        r.structured_field = "tool_choice";
        r.forced_tool = name;
        return;
      }
    }
    bad("tool_choice", fmt::format("tool_choice names '{}', which is not in 'tools'", name));
  }
  bad("tool_choice",
      "tool_choice must be \"none\", \"auto\", \"required\" or "
      "{\"type\": \"function\", \"function\": {\"name\": ...}}");
}

}  // namespace

GenerateRequest parse_completion_request(const json& body, const SamplingParams& defaults,
                                         int64_t max_logprobs) {
  GenerateRequest r;
  r.params = defaults;
  r.params.max_tokens = 16;  // OpenAI's default for completions
  parse_common(body, r, max_logprobs);
  parse_max_tokens(body, "max_tokens", r);
  if (auto v = get_bool(body, "echo")) r.echo = *v;
  if (auto v = get_bool(body, "add_special_tokens")) r.add_special_tokens = *v;
  if (auto v = get_int(body, "logprobs")) {
    if (*v < 0 || *v > max_logprobs)
      bad("logprobs",
          fmt::format("logprobs must be in [0, {}] (--max-logprobs), got {}", max_logprobs, *v));
    r.logprobs = static_cast<int>(*v);
  }
  if (auto v = get_string(body, "suffix")) bad("suffix", "suffix is not supported");
  const json* prompt = field(body, "prompt");
  if (!prompt) bad("prompt", "'prompt' is required");
  // A string, a list of strings, a list of token ids, or a list of lists of token ids.
  auto add_ids = [&](const json& list) {
    if (list.empty()) bad("prompt", "a prompt cannot be empty");
    r.prompts.push_back(PromptInput{std::nullopt, token_list(list, "prompt")});
  };
  if (prompt->is_string()) {
    r.prompts.push_back(PromptInput{prompt->get<std::string>(), {}});
  } else if (prompt->is_array() && !prompt->empty()) {
    const json& first = prompt->front();
    if (first.is_number()) {
      add_ids(*prompt);
    } else {
      for (const json& item : *prompt) {
        if (item.is_string())
          r.prompts.push_back(PromptInput{item.get<std::string>(), {}});
        else if (item.is_array())
          add_ids(item);
        else
          bad("prompt", "'prompt' must be a string, a list of strings or a list of token ids");
      }
    }
  } else {
    bad("prompt", "'prompt' must be a non-empty string, list of strings or list of token ids");
  }
  if (r.prompts.size() * r.n > 1024) bad("prompt", "at most 1024 choices per request");
  if (r.logprobs) r.params.logprobs = *r.logprobs;
  if (r.echo && r.logprobs && !r.params.prompt_logprobs) r.params.prompt_logprobs = *r.logprobs;
  return r;
}

GenerateRequest parse_chat_request(const json& body, const SamplingParams& defaults,
                                   int64_t max_logprobs) {
  GenerateRequest r;
  r.chat = true;
  r.params = defaults;
  r.add_special_tokens = false;  // the template writes BOS itself
  parse_common(body, r, max_logprobs);
  parse_max_tokens(body, "max_tokens", r);
  parse_max_tokens(body, "max_completion_tokens", r);
  if (auto v = get_bool(body, "echo")) r.echo = *v;
  if (auto v = get_bool(body, "add_special_tokens")) r.add_special_tokens = *v;
  const bool want_logprobs = get_bool(body, "logprobs").value_or(false);
  if (auto v = get_int(body, "top_logprobs")) {
    if (*v < 0 || *v > max_logprobs)
      bad("top_logprobs", fmt::format("top_logprobs must be in [0, {}] (--max-logprobs), got {}",
                                      max_logprobs, *v));
    if (!want_logprobs && *v > 0) bad("top_logprobs", "top_logprobs needs logprobs set to true");
    r.logprobs = static_cast<int>(*v);
  }
  if (want_logprobs) {
    if (!r.logprobs) r.logprobs = 0;
    r.params.logprobs = *r.logprobs;
  } else {
    r.logprobs.reset();
  }
  const json* messages = field(body, "messages");
  if (!messages || !messages->is_array() || messages->empty())
    bad("messages", "'messages' must be a non-empty list");
  for (const json& m : *messages) {
    if (!m.is_object()) bad("messages", "each message must be an object");
    auto role = m.find("role");
    if (role == m.end() || !role->is_string())
      bad("messages", "each message needs a string 'role'");
    auto content = m.find("content");
    if (content != m.end() && !content->is_null() && !content->is_string() && !content->is_array())
      bad("messages", "message 'content' must be a string or a list of parts");
    // Content parts are checked where the conversation is prepared for the template
    // (tokenizer/chat_template.cc), as vLLM does: text-like parts pass, media parts are refused.
  }
  r.chat_inputs.messages = nlohmann::ordered_json::parse(messages->dump());
  bool have_tools = false;
  if (const json* tools = field(body, "tools")) {
    if (!tools->is_array()) bad("tools", "'tools' must be a list");
    for (const json& tool : *tools)
      if (!tool.is_object() || !tool.contains("function") || !tool["function"].is_object() ||
          !tool["function"].contains("name") || !tool["function"]["name"].is_string())
        bad("tools", "each tool needs a 'function' object with a string 'name'");
    if (!tools->empty()) r.chat_inputs.tools = nlohmann::ordered_json::parse(tools->dump());
    have_tools = !tools->empty();
  }
  const json* choice = field(body, "tool_choice");
  if (choice) parse_tool_choice(*choice, body, r);
  // As in vLLM, tools without a tool_choice mean "auto".
  r.auto_tools = have_tools && (!choice || (choice->is_string() && *choice == "auto"));
  if (auto v = get_bool(body, "add_generation_prompt")) r.chat_inputs.add_generation_prompt = *v;
  if (auto v = get_bool(body, "continue_final_message")) {
    r.chat_inputs.continue_final_message = *v;
    if (*v && r.chat_inputs.add_generation_prompt && field(body, "add_generation_prompt"))
      bad("continue_final_message",
          "continue_final_message and add_generation_prompt cannot both be true");
    if (*v) r.chat_inputs.add_generation_prompt = false;
  }
  if (const json* kw = field(body, "chat_template_kwargs")) {
    if (!kw->is_object()) bad("chat_template_kwargs", "'chat_template_kwargs' must be an object");
    r.chat_inputs.kwargs = nlohmann::ordered_json::parse(kw->dump());
  }
  if (auto v = get_string(body, "chat_template")) r.chat_inputs.chat_template = *v;
  return r;
}

}  // namespace tessera
