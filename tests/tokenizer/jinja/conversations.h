// Conversations (render contexts as transformers builds them) that exercise chat templates:
// plain turns, system prompts, reasoning, tools and tool calls, multimodal content, errors.
#pragma once

#include <nlohmann/json.hpp>
#include <vector>

namespace tessera::testing {

inline std::vector<nlohmann::ordered_json> test_conversations() {
  using Json = nlohmann::ordered_json;
  const Json weather_tool = Json::parse(R"({"type": "function", "function": {
      "name": "get_weather", "description": "Current weather.\nUse for forecasts too.",
      "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "days": {"type": "integer"},
        "units": {"type": ["string", "null"], "enum": ["c", "f"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "extra": {"type": "object", "additionalProperties": {"type": "number"}}},
        "required": ["city"]},
      "returns": {"type": "object"}}})");
  const Json search_tool = Json::parse(R"({"type": "function", "function": {
      "name": "search", "description": "Search the web ☀",
      "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                     "required": ["query"]}}})");
  std::vector<Json> out = {
      Json::parse(R"({"messages": [{"role": "user", "content": "Hello!"}],
                      "add_generation_prompt": true})"),
      Json::parse(R"({"messages": [{"role": "system", "content": "  Be brief.  "},
                                   {"role": "user", "content": "What is 2+2?"},
                                   {"role": "assistant", "content": "4"},
                                   {"role": "user", "content": "And 3+3? ünïcödé 日本語 \"q\" 'a'"}],
                      "add_generation_prompt": true})"),
      Json::parse(R"({"messages": [{"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": "Hello, how can I help?"}],
                      "add_generation_prompt": false})"),
      Json::parse(R"({"messages": [{"role": "user", "content": "Think first"},
                                   {"role": "assistant",
                                    "content": "<think>\nLet me see.\n</think>\n\nDone."},
                                   {"role": "user", "content": "Again"}],
                      "add_generation_prompt": true, "enable_thinking": false})"),
      Json::parse(R"({"messages": [{"role": "user", "content": "Reason"},
                                   {"role": "assistant", "content": "Answer",
                                    "reasoning_content": "\nBecause.\n"}],
                      "add_generation_prompt": false})"),
      Json::parse(R"({"messages": [{"role": "assistant", "content": "I speak first"}],
                      "add_generation_prompt": true})"),
      Json::parse(R"({"messages": [], "add_generation_prompt": true})"),
  };
  Json tools_string_args = Json::parse(R"({"messages": [
      {"role": "system", "content": "You can use tools."},
      {"role": "user", "content": "Weather in Paris?"},
      {"role": "assistant", "content": null, "tool_calls": [
        {"id": "call12345", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
      {"role": "tool", "tool_call_id": "call12345", "content": "{\"temp\": 21}"},
      {"role": "assistant", "content": "It is 21 degrees."}],
      "add_generation_prompt": true})");
  tools_string_args["tools"] = Json::array({weather_tool, search_tool});
  out.push_back(tools_string_args);
  Json tools_dict_args = Json::parse(R"({"messages": [
      {"role": "user", "content": "Search for cats and weather in Rome"},
      {"role": "assistant", "content": "", "tool_calls": [
        {"id": "abcdefghi", "type": "function",
         "function": {"name": "search", "arguments": {"query": "cats"}}}]},
      {"role": "tool", "tool_call_id": "abcdefghi", "content": "Cats are mammals."},
      {"role": "tool", "tool_call_id": "abcdefghi", "content": {"more": [1, 2.5, true, null]}},
      {"role": "user", "content": "<tool_response>ok</tool_response>"}],
      "add_generation_prompt": true, "builtin_tools": ["search", "code_interpreter"],
      "date_string": "26 Jul 2024"})");
  tools_dict_args["tools"] = Json::array({search_tool});
  out.push_back(tools_dict_args);
  Json tools_in_system = tools_string_args;
  tools_in_system["tools_in_user_message"] = false;
  out.push_back(tools_in_system);
  out.push_back(Json::parse(R"({"messages": [
      {"role": "system", "content": [{"type": "text", "text": "Describe images."}]},
      {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "  What is this?  "}]},
      {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
      {"role": "user", "content": "Thanks"}],
      "add_generation_prompt": true})"));
  out.push_back(Json::parse(R"({"messages": [
      {"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
      "add_generation_prompt": true})"));
  return out;
}

}  // namespace tessera::testing
