// Tensor and pipeline parallelism give the single-rank results: for every architecture, a tiny
// f32 model generates greedily for 8 prompts (one batch) through `tessera generate --json` with
// TP=1 and with TP=2, PP=2, PP=3 (uneven: 4 layers as 1,2,1), TP=2 x PP=2 (4 ranks on 2 cores).
// The tp/pp runs re-execute themselves under mpirun, as a user's would. Tokens must be
// identical and log-probs within 1e-4. Also: each rank reads only its share of the weights.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <tuple>

#include <array>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "cli_run.h"
#include "core/thread_pool.h"
#include "model/arch/registry.h"
#include "model/model_test_util.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

using testing::CliRun;
using testing::run_shell;

CliRun run(const std::string& args) {
  return testing::run_tessera(args);
}

std::vector<nlohmann::json> lines(const std::string& out) {
  std::vector<nlohmann::json> v;
  std::stringstream in(out);
  for (std::string line; std::getline(in, line);)
    if (!line.empty() && line[0] == '{') v.push_back(nlohmann::json::parse(line));
  return v;
}

// Same greedy tokens as one rank and log-probs within 1e-4, `tokens` per prompt.
void expect_matches(const std::vector<nlohmann::json>& got, const std::vector<nlohmann::json>& want,
                    size_t tokens) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t p = 0; p < want.size(); ++p) {
    ASSERT_EQ(got[p]["output_ids"], want[p]["output_ids"]) << "prompt " << p;
    ASSERT_EQ(got[p]["output_ids"].size(), tokens);
    for (size_t t = 0; t < tokens; ++t) {
      const double a = got[p]["logprobs"][t][0][1], b = want[p]["logprobs"][t][0][1];
      EXPECT_NEAR(a, b, 1e-4) << "prompt " << p << " token " << t;
    }
  }
}

// `generate` on `dir`, greedy with log-probs, for prompts of the given lengths (ids drawn with
// seeds seed, seed + 1, ...).
std::string generate_args(const fs::path& dir, int max_tokens, const std::vector<int>& lengths,
                          uint64_t seed) {
  std::string args = "generate --model " + dir.string() + " --max-tokens " +
                     std::to_string(max_tokens) +
                     " --temperature 0 --ignore-eos --logprobs 1 --json";
  for (size_t i = 0; i < lengths.size(); ++i) {
    std::string ids;
    for (int32_t id : testing::test_ids(lengths[i], 4000, seed + i))
      ids += (ids.empty() ? "" : ",") + std::to_string(id);
    args += " --prompt-ids " + ids;
  }
  return args;
}

class ParallelEquivalence : public ::testing::TestWithParam<std::string> {};

TEST_P(ParallelEquivalence, MatchesOneRank) {
  const std::string name = GetParam();
  // GPT2Config calls the layer count n_layer.
  nlohmann::json config{{name == "gpt2" ? "n_layer" : "num_hidden_layers", 4}};
  std::string arch = name;
  if (name == "falcon_new_decoder") {
    // Falcon-40B's layout: query_key_value in 2 key/value groups (one per rank at TP=2; both,
    // merged into one weight, at TP=1), ln_attn and ln_mlp, and biases on the row-parallel
    // layers whose partial sums share one all-reduce.
    arch = "falcon";
    config.update({{"new_decoder_architecture", true}, {"num_kv_heads", 2}, {"bias", true}});
  } else if (name == "opt_350m") {
    // project_in on the first stage, project_out on the last, replicated over TP ranks.
    arch = "opt";
    config.update({{"do_layer_norm_before", false}, {"word_embed_proj_dim", 40}});
  }
  const fs::path dir = testing::make_tiny(arch, DType::kF32, 3, config);
  const std::string args = generate_args(dir, 32, {3, 8, 13, 18, 23, 28, 33, 38}, 100);
  const CliRun base = run(args);
  ASSERT_EQ(base.status, 0) << base.err;
  const std::vector<nlohmann::json> want = lines(base.out);
  ASSERT_EQ(want.size(), 8u) << base.out;
  for (const char* layout : {"-tp 2", "-pp 2", "-pp 3", "-tp 2 -pp 2"}) {
    SCOPED_TRACE(name + " " + layout);
    const CliRun r = run(args + " " + layout);
    ASSERT_EQ(r.status, 0) << r.err;
    const std::vector<nlohmann::json> got = lines(r.out);
    ASSERT_EQ(got.size(), 8u) << r.out << r.err;
    expect_matches(got, want, 32);
    // The stages and shards the log reports.
    if (std::string(layout) == "-pp 3") {
      EXPECT_NE(r.err.find("layers [0, 1) of 4, embedding"), std::string::npos) << r.err;
      EXPECT_NE(r.err.find("layers [1, 3) of 4,"), std::string::npos) << r.err;
      EXPECT_NE(r.err.find("layers [3, 4) of 4, LM head"), std::string::npos) << r.err;
    }
  }
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Arch, ParallelEquivalence,
                         ::testing::Values("llama", "mistral", "qwen2", "qwen3", "gemma2", "gpt2",
                                           "opt", "opt_350m", "falcon", "falcon_new_decoder",
                                           "mixtral", "qwen3_moe", "qwen2_moe", "deepseek_v3"));

// `generate` with `args` (4 prompts, 16 tokens) gives one rank's results with -tp 2 and -pp 2.
void expect_tp2_and_pp2_match(const std::string& args) {
  const CliRun base = run(args);
  ASSERT_EQ(base.status, 0) << base.err;
  const std::vector<nlohmann::json> want = lines(base.out);
  ASSERT_EQ(want.size(), 4u) << base.out;
  for (const char* layout : {"-tp 2", "-pp 2"}) {
    SCOPED_TRACE(layout);
    const CliRun r = run(args + " " + layout);
    ASSERT_EQ(r.status, 0) << r.err;
    expect_matches(lines(r.out), want, 16);
  }
}

// --quantization fp8: a row-parallel shard holds part of every row, and is quantized with the
// whole rows' scales (gathered at load), so the ranks hold exactly what one rank would hold and
// the results are one rank's.
TEST(ParallelEquivalenceFp8, QuantizedShardsMatchOneRank) {
  const fs::path dir =
      testing::make_tiny("qwen2", DType::kBF16, 6, nlohmann::json{{"num_hidden_layers", 4}});
  expect_tp2_and_pp2_match(generate_args(dir, 16, {5, 12, 19, 26}, 300) + " --quantization fp8");
  fs::remove_all(dir);
}

// FP8 checkpoints: each rank takes its rows (column-parallel) or its blocks of columns
// (row-parallel) of the stored codes, with their scales; the results are one rank's.
TEST(ParallelEquivalenceFp8, Fp8CheckpointShardsMatchOneRank) {
  const nlohmann::json blocks{{"num_hidden_layers", 4},
                              {"quantization_config", {{"weight_block_size", {32, 32}}}}};
  for (auto [arch, quant] : std::vector<std::pair<std::string, std::string>>{
           {"llama", "fp8-block"}, {"deepseek_v3", "fp8-block"}, {"qwen2", "fp8-channel"}}) {
    SCOPED_TRACE(arch + " " + quant);
    const fs::path dir = testing::make_tiny(arch, DType::kBF16, 8, blocks, 0, quant);
    expect_tp2_and_pp2_match(generate_args(dir, 16, {5, 12, 19, 26}, 400));
    fs::remove_all(dir);
  }
}

// Integer checkpoints: column-parallel ranks take their outputs' words (AWQ packs 8 outputs a
// word), row-parallel ones their inputs' words, which may start inside a group (48 inputs a
// group: o_proj's 32-input shards and down_proj's 64-input ones do); act order is dequantized.
TEST(ParallelEquivalenceInt, IntCheckpointShardsMatchOneRank) {
  for (auto [arch, quant, q] : std::vector<std::tuple<std::string, std::string, nlohmann::json>>{
           {"llama", "gptq", {{"group_size", 48}}},
           {"qwen2", "awq", {{"group_size", 32}}},
           {"mistral", "gptq", {{"group_size", 16}, {"desc_act", true}, {"sym", false}}},
           {"deepseek_v3",
            "w4a16",
            {{"config_groups",
              {{"group_0", {{"weights", {{"group_size", 16}, {"symmetric", false}}}}}}}}}}) {
    SCOPED_TRACE(arch + " " + quant);
    const fs::path dir = testing::make_tiny(
        arch, DType::kBF16, 8, {{"num_hidden_layers", 4}, {"quantization_config", q}}, 0, quant);
    expect_tp2_and_pp2_match(generate_args(dir, 16, {5, 12, 19, 26}, 400));
    fs::remove_all(dir);
  }
}

// Chunked prefill (8 tokens a step): micro-batches without logit rows pass through the stages.
TEST(ParallelEquivalenceChunked, ChunkedPrefillMatchesOneRank) {
  const fs::path dir = testing::make_tiny("llama", DType::kF32, 4);
  std::string ids;
  for (int32_t id : testing::test_ids(40, 4000, 7))
    ids += (ids.empty() ? "" : ",") + std::to_string(id);
  const std::string args = "generate --model " + dir.string() + " --prompt-ids " + ids +
                           " --prompt-ids 5,6,7 --max-tokens 8 --temperature 0 --ignore-eos --json "
                           "--max-num-batched-tokens 8";
  const CliRun base = run(args);
  ASSERT_EQ(base.status, 0) << base.err;
  const std::vector<nlohmann::json> want = lines(base.out);
  ASSERT_EQ(want.size(), 2u);
  for (const char* layout : {"-pp 2", "-tp 2 -pp 2"}) {
    const CliRun r = run(args + " " + layout);
    ASSERT_EQ(r.status, 0) << r.err;
    const std::vector<nlohmann::json> got = lines(r.out);
    ASSERT_EQ(got.size(), 2u) << r.out;
    for (size_t p = 0; p < 2; ++p) EXPECT_EQ(got[p]["output_ids"], want[p]["output_ids"]) << layout;
  }
  fs::remove_all(dir);
}

// Groups of sequences, one step in flight each (TESSERA_PP_GROUPS). As many as stages is what
// stages with cores of their own run (other nodes; here --threads 1 on 2 cores, or the
// variable); with more groups than stages a stage starts a newer step before the driver has
// taken an older one's logits. Same tokens and log-probs as one rank, no deadlock, with chunked
// prefill in one of the runs and long prompts whose chunks run in several groups' steps at once.
TEST(ParallelEquivalenceGroups, StepsInFlightMatchOneRank) {
  const fs::path dir =
      testing::make_tiny("llama", DType::kF32, 5, nlohmann::json{{"num_hidden_layers", 4}});
  // Two long prompts: the groups share their prefill (chunks in consecutive steps at once).
  const std::string args = generate_args(dir, 16, {90, 97, 10, 13, 16, 19, 22, 25}, 200);
  const CliRun base = run(args);
  ASSERT_EQ(base.status, 0) << base.err;
  const std::vector<nlohmann::json> want = lines(base.out);
  ASSERT_EQ(want.size(), 8u) << base.out;
  const std::string bin = TESSERA_BINARY_DIR "/tessera ";
  for (const char* layout :
       {"TESSERA_PP_GROUPS=2 | -pp 2", "TESSERA_PP_GROUPS=3 | -pp 3", "TESSERA_PP_GROUPS=3 | -pp 2",
        "TESSERA_PP_GROUPS=4 | -pp 3", "TESSERA_PP_GROUPS=3 | -tp 2 -pp 2",
        "TESSERA_PP_GROUPS=3 | -pp 2 --max-num-batched-tokens 8",
        // One step at a time, cut into micro-batches that the stages pipeline.
        "TESSERA_PP_OVERLAP=0 | -pp 2", "TESSERA_PP_OVERLAP=0 | -pp 3"}) {
    SCOPED_TRACE(layout);
    const std::string l = layout;
    const size_t bar = l.find(" | ");
    const CliRun r =
        testing::run_shell(l.substr(0, bar) + " " + bin + args + " " + l.substr(bar + 3));
    ASSERT_EQ(r.status, 0) << r.err;
    const std::vector<nlohmann::json> got = lines(r.out);
    ASSERT_EQ(got.size(), 8u) << r.out << r.err;
    expect_matches(got, want, 16);
  }
  // Where the stages run decides by default (distributed/placement.h): sharing these cores,
  // they take turns; given one thread each and a core each to spare, both steps stay in flight.
  auto expect_layout = [&](const std::string& flags, const std::string& log_line) {
    const CliRun r = testing::run_shell(bin + args + flags);
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.err.find(log_line), std::string::npos) << r.err;
    expect_matches(lines(r.out), want, 16);
  };
  expect_layout(" -pp 2", "pipeline: 1 step in flight (stages share cores: they take turns");
  if (physical_core_count() >= 2)
    expect_layout(" -pp 2 --threads 1",
                  "pipeline: 2 steps in flight (stages share cores: each has threads");
  const CliRun bad = testing::run_shell("TESSERA_PP_GROUPS=0 " + bin + args + " -pp 2");
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.err.find("TESSERA_PP_GROUPS must be a whole number from 1 to 8"), std::string::npos)
      << bad.err;
  fs::remove_all(dir);
}

// Bytes each rank reads: with TP=2 every sharded weight is read half by each rank and the small
// replicated ones (norms) by both, so each rank reads (total - replicated) / 2 + replicated.
TEST(ParallelLoading, EachRankReadsItsShare) {
  const fs::path dir = testing::make_tiny("llama", DType::kF32, 3);
  const ModelConfig c = load_model_config(dir);
  uint64_t total = 0, replicated = 0;
  for (const WeightSpec& s : weight_specs(c)) {
    uint64_t bytes = 4;
    for (int64_t d : s.shape) bytes *= d;
    total += bytes;
    if (s.role == WeightRole::kNorm) replicated += bytes;
  }
  const uint64_t expect = (total - replicated) / 2 + replicated;
  const CliRun r =
      run("generate --model " + dir.string() + " --prompt-ids 1,2,3 --max-tokens 2 --json -tp 2");
  ASSERT_EQ(r.status, 0) << r.err;
  const std::regex line(R"(rank (\d)/2 .*\(([0-9.]+) MB read\))");
  int seen = 0;
  for (auto it = std::sregex_iterator(r.err.begin(), r.err.end(), line);
       it != std::sregex_iterator(); ++it) {
    const double mb = std::stod((*it)[2]);
    EXPECT_NEAR(mb, expect / 1e6, 0.051) << (*it)[0];
    EXPECT_LT(mb, 0.6 * total / 1e6);
    ++seen;
  }
  EXPECT_EQ(seen, 2) << r.err;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tessera

namespace tessera {
namespace {

// Configurations that cannot work fail at start with a message naming the problem.
TEST(ParallelErrors, MismatchedConfigurationsFailAtStart) {
  const fs::path dir = testing::make_tiny("llama", DType::kF32, 3);  // 4 heads, 2 KV, 3 layers
  const std::string gen = "generate --model " + dir.string() + " --prompt-ids 1,2 --json ";
  CliRun r = run(gen + "-tp 3");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("tensor-parallel size 3 does not divide the 4 attention heads"),
            std::string::npos)
      << r.err;
  r = run(gen + "-pp 4");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("--pipeline-parallel-size 4 is more than the model's 3 layers"),
            std::string::npos)
      << r.err;
  r = run(gen + "-pp 2 --pp-layer-partition 1,1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("adds up to 2 layers, but the model has 3"), std::string::npos) << r.err;
  r = run(gen + "-tp 2 --distributed-executor-backend ray");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("ray is not supported"), std::string::npos) << r.err;
  // tp 4 > 2 KV heads: each rank holds one KV head, replicated twice, as vLLM does.
  r = run(gen + "-tp 4 --max-tokens 4");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("rank 3/4 (tp rank 3/4, pp stage 0/1) on"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("1 KV heads"), std::string::npos) << r.err;
  fs::remove_all(dir);
}

// The model folder missing on one rank (launched by hand with mpirun, one folder per rank):
// every rank stops at start and the message names the rank.
TEST(ParallelErrors, ModelMissingOnOneRank) {
  const fs::path dir = testing::make_tiny("llama", DType::kF32, 3);
  const std::string exe = TESSERA_BINARY_DIR "/tessera";
  const CliRun r =
      run_shell(std::string(TESSERA_MPIEXEC) + " --allow-run-as-root --oversubscribe -np 1 " + exe +
                " generate --model " + dir.string() + " -tp 2 --prompt-ids 1,2 --json : -np 1 " +
                exe + " generate --model /nonexistent/model -tp 2 --prompt-ids 1,2 --json");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("error: rank 1 (host "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("/nonexistent/model does not exist"), std::string::npos) << r.err;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tessera
