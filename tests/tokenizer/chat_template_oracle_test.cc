// Renders the real chat templates of Llama 3.1, Qwen3, Gemma 3 and DeepSeek-V3 (from the npm
// tokenizer packages) on every conversation of data/chat_conversations.json, and compares each
// prompt byte for byte with chat_oracle.py: Python Jinja2 set up as transformers'
// apply_chat_template, with the conversation prepared as vLLM prepares it. Errors must agree
// too, and a template's raise_exception message must come through unchanged.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>

#include "real_tokenizers.h"
#include "tokenizer/chat_template.h"

namespace tessera::tokenizer {
namespace {

namespace fs = std::filesystem;
using testing::read_text;

const fs::path kConversations =
    fs::path(TESSERA_SOURCE_DIR) / "tests/tokenizer/data/chat_conversations.json";
const fs::path kOracle = fs::path(TESSERA_SOURCE_DIR) / "tests/tokenizer/chat_oracle.py";
const std::vector<std::string> kModels = {"llama3_1", "qwen3", "gemma3", "deepseek_v3"};

// Runs the oracle once for all models, unless its output is newer than its inputs. Null when
// python3-jinja2 is missing.
nlohmann::json oracle_output() {
  const fs::path out = fs::path(TESSERA_BINARY_DIR) / "tokenizer_assets/chat_oracle.json";
  const auto newest = std::max(fs::last_write_time(kConversations), fs::last_write_time(kOracle));
  if (!fs::exists(out) || fs::last_write_time(out) < newest) {
    fs::create_directories(out.parent_path());
    const std::string tmp = out.string() + ".tmp." + std::to_string(::getpid());
    std::string command = "/usr/bin/python3 '" + kOracle.string() + "' '" +
                          kConversations.string() + "' '" + tmp + "'";
    for (const std::string& name : kModels)
      command += " '" + name + "=" +
                 (testing::real_tokenizer_dir(name) / "tokenizer_config.json").string() + "'";
    if (std::system(command.c_str()) != 0) return nullptr;
    fs::rename(tmp, out);
  }
  return nlohmann::json::parse(read_text(out));
}

ChatInputs inputs_of(const Json& conv) {
  ChatInputs in;
  in.messages = conv["messages"];
  if (conv.contains("tools")) in.tools = conv["tools"];
  in.add_generation_prompt = conv.value("add_generation_prompt", true);
  in.continue_final_message = conv.value("continue_final_message", false);
  if (conv.contains("chat_template_kwargs")) in.kwargs = conv["chat_template_kwargs"];
  return in;
}

class ChatOracleTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ChatOracleTest, PromptsMatchTransformersAndVllm) {
  TESSERA_REQUIRE_NPM();
  const fs::path dir = testing::real_tokenizer_dir(GetParam());
  if (!fs::exists(dir / "tokenizer_config.json"))
    GTEST_SKIP() << dir << " is missing: run tests/npm/fetch_assets.sh";
  const nlohmann::json oracle = oracle_output();
  if (oracle.is_null())
    GTEST_SKIP() << "the Python oracle did not run (needs Debian's python3-jinja2 at "
                    "/usr/bin/python3)";
  const nlohmann::json& expected = oracle[GetParam()];
  const Json conversations = Json::parse(read_text(kConversations))["conversations"];
  ASSERT_EQ(expected["results"].size(), conversations.size());

  const ChatTemplates templates = ChatTemplates::load(dir, "");
  const auto tmpl = templates.select(false);
  EXPECT_EQ(tmpl->content_format() == ContentFormat::kOpenAI ? "openai" : "string",
            expected["format"].get<std::string>())
      << "content format detection differs from vLLM's";

  int matched = 0, errors = 0;
  double seconds = 0;
  for (size_t i = 0; i < conversations.size(); ++i) {
    const Json& conv = conversations[i];
    const nlohmann::json& want = expected["results"][i];
    ASSERT_EQ(want["name"], conv["name"]);
    SCOPED_TRACE(GetParam() + " / " + conv["name"].get<std::string>());
    std::string got, error;
    const ChatInputs inputs = inputs_of(conv);
    const auto start = std::chrono::steady_clock::now();
    try {
      got = templates.render(inputs);
    } catch (const Error& e) {
      error = e.what();
    }
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (want.contains("prompt")) {
      EXPECT_EQ(error, "");
      EXPECT_EQ(got, want["prompt"].get<std::string>());
      matched += error.empty() && got == want["prompt"].get<std::string>();
    } else {
      EXPECT_NE(error, "") << "the oracle fails (" << want["error"] << ") but we rendered:\n"
                           << got;
      if (want["raised"].get<bool>()) {
        EXPECT_EQ(error, want["error"].get<std::string>());
      }
      ++errors;
    }
  }
  const double us = seconds * 1e6 / static_cast<double>(conversations.size());
  std::printf(
      "[ oracle   ] %s: %d prompts identical, %d errors agreed; %.1f us per conversation "
      "(Python Jinja2 oracle: %.1f us)\n",
      GetParam().c_str(), matched, errors, us, expected.value("render_us", 0.0));
  EXPECT_GE(matched, 15);
}

INSTANTIATE_TEST_SUITE_P(Real, ChatOracleTest, ::testing::ValuesIn(kModels),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace tessera::tokenizer
