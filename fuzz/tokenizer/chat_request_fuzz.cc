// Fuzz target: arbitrary bytes as a chat request ({"messages", "tools", "chat_template_kwargs",
// "continue_final_message", "add_generation_prompt"}) through the conversation preparation and
// two templates (string and openai content format), and as a template for content-format
// detection. tessera::Error is the only acceptable failure.
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "tokenizer/chat_template.h"

namespace {

using tessera::tokenizer::Json;

const tessera::tokenizer::ChatTemplates& templates() {
  // A Qwen-style (string content, tools, tool calls) and a Gemma-style (content parts, role
  // check) template, by name.
  static const tessera::tokenizer::ChatTemplates t(
      Json::parse(R"([
    {"name": "default", "template": "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\n' + m.content }}{% if m.tool_calls %}{% for c in m.tool_calls %}{{ c.function.name }}{{ c.function.arguments | tojson }}{% endfor %}{% endif %}{{ m.reasoning_content }}<|im_end|>\n{%- endfor %}{% for t in tools or [] %}{{ t | tojson }}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}{{ enable_thinking }}"},
    {"name": "parts", "template": "{{ bos_token }}{%- for message in messages -%}{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}{{ raise_exception('roles must alternate') }}{%- endif -%}{%- for item in message['content'] -%}{{ item['text'] | trim }}{%- endfor -%}{%- endfor -%}"}])"),
      Json::parse(R"({"bos_token": "<s>", "eos_token": "</s>"})"));
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)tessera::tokenizer::detect_content_format(text);
  const Json request = Json::parse(text, nullptr, false);
  if (request.is_discarded() || !request.is_object()) return 0;
  tessera::tokenizer::ChatInputs in;
  in.messages = request.value("messages", Json::array());
  in.tools = request.value("tools", Json());
  in.kwargs = request.value("chat_template_kwargs", Json::object());
  const Json agp = request.value("add_generation_prompt", Json(true));
  const Json cont = request.value("continue_final_message", Json(false));
  in.add_generation_prompt = agp.is_boolean() && agp.get<bool>();
  in.continue_final_message = cont.is_boolean() && cont.get<bool>();
  for (const char* name : {"", "parts"}) {
    try {
      (void)templates().render(in, name);
    } catch (const tessera::Error&) {
    }
  }
  return 0;
}

std::vector<std::string> fuzz_default_seeds() {
  return {
      R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}, "there"]}, {"role": "assistant", "content": null, "reasoning": "r", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": [1, 2]}"}}]}, {"role": "tool", "tool_call_id": "1", "content": [{"type": "text", "text": "ok"}]}], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}], "chat_template_kwargs": {"enable_thinking": false}})",
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "text", "text": "Once "}]}], "add_generation_prompt": false, "continue_final_message": true})",
      R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})",
      "{% set loop_messages = messages[1:] %}{% for message in loop_messages %}{% for item in "
      "(message['content'] | selectattr('type')) %}{{ item }}{% endfor %}{% endfor %}",
      "",
  };
}
