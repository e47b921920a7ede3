// The tessera command line as a user meets it: results on stdout, one clear error line on
// stderr and a non-zero exit for bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <tuple>
#include <vector>

#include "cli_run.h"
#include "model/model_test_util.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

using testing::CliRun;

CliRun run(const std::string& args) {
  return testing::run_tessera(args);
}

// The last line of stderr (earlier lines are the log).
std::string last_line(const std::string& s) {
  std::string t = s;
  while (!t.empty() && t.back() == '\n') t.pop_back();
  const size_t nl = t.rfind('\n');
  return nl == std::string::npos ? t : t.substr(nl + 1);
}

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(testing::make_tiny("llama", DType::kBF16, 9));
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }
  static fs::path* dir_;
};
fs::path* CliTest::dir_ = nullptr;

TEST_F(CliTest, GenerateJsonIsDeterministicWithLogprobs) {
  const std::string args =
      "generate --model " + dir_->string() +
      " --prompt-ids 5,6,7,8 --max-tokens 6 --temperature 0 --logprobs 3 --json";
  CliRun a = run(args), b = run(args);
  ASSERT_EQ(a.status, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  nlohmann::json j = nlohmann::json::parse(a.out);
  EXPECT_EQ(j["prompt_ids"], nlohmann::json({5, 6, 7, 8}));
  ASSERT_EQ(j["output_ids"].size(), 6u);
  EXPECT_EQ(j["finish_reason"], "length");
  ASSERT_EQ(j["logprobs"].size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    ASSERT_EQ(j["logprobs"][i].size(), 3u);
    // Greedy: the chosen token is the most likely one.
    EXPECT_EQ(j["logprobs"][i][0][0], j["output_ids"][i]);
    EXPECT_LT(j["logprobs"][i][0][1].get<double>(), 0.0);
  }
  // Sampling with a seed is reproducible, and the seed matters.
  CliRun s1 = run("generate --model " + dir_->string() +
                  " --prompt-ids 5,6 --max-tokens 8 --seed 3 --json");
  CliRun s2 = run("generate --model " + dir_->string() +
                  " --prompt-ids 5,6 --max-tokens 8 --seed 3 --json");
  CliRun s3 = run("generate --model " + dir_->string() +
                  " --prompt-ids 5,6 --max-tokens 8 --seed 4 --json");
  EXPECT_EQ(s1.out, s2.out);
  EXPECT_NE(s1.out, s3.out);
}

// bench latency's JSON has the figures of vllm bench latency's kind, and --stream-baseline
// adds the same-run memory read rate and decode's share of it.
TEST_F(CliTest, BenchLatencyJsonWithStreamBaseline) {
  CliRun r = run("bench latency --model " + dir_->string() +
                 " --input-len 16 --output-len 4 --num-iters 1 --num-iters-warmup 0 --threads 1 "
                 "--stream-baseline --json");
  ASSERT_EQ(r.status, 0) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  for (const char* key : {"prefill_tokens_per_s", "decode_tokens_per_s", "peak_rss_bytes",
                          "decode_weight_gb_per_s", "stream_read_gb_per_s"})
    EXPECT_GT(j[key].get<double>(), 0.0) << key;
  EXPECT_NEAR(j["decode_bandwidth_utilisation"].get<double>(),
              j["decode_weight_gb_per_s"].get<double>() / j["stream_read_gb_per_s"].get<double>(),
              1e-9);
}

TEST_F(CliTest, BadInputGivesOneLineAndNonZeroExit) {
  struct Case {
    std::string args, expect;
  };
  const std::string m = " --model " + dir_->string();
  const Case cases[] = {
      {"generate --model /no/such/folder --prompt-ids 1,2", "does not exist"},
      {"generate" + m + " --prompt-ids 1,2 --no-such-flag", "--no-such-flag"},
      {"generate" + m + " --prompt-ids 1,x", "not a token id"},
      {"generate" + m + " --prompt-ids 1,99999", "outside the vocabulary"},
      {"generate" + m + " --max-model-len 8 --prompt-ids 1,2,3,4,5,6,7,8,9,10",
       "maximum context length is 8 tokens"},
      {"generate" + m + " --prompt-ids 1,2 --temperature -1", "temperature"},
      {"generate" + m, "exactly one of --prompt, --chat or --prompt-ids"},
      {"generate" + m + " --prompt-ids 1 --load-format pt", "--load-format pt is not supported"},
      {"make-model --arch mamba --out /tmp/never", "unknown architecture \"mamba\""},
      {"bench latency" + m + " --output-len 1", "--output-len >= 2"},
      {"no-such-command", "no-such-command"},
      {"serve" + m + " --port 0 --enable-auto-tool-choice",
       "--enable-auto-tool-choice requires --tool-call-parser"},
      {"serve" + m + " --port 0 --enable-auto-tool-choice --tool-call-parser nope",
       "invalid tool call parser: nope (choose from deepseek_v3, deepseek_v31, hermes, "
       "llama3_json, llama4_json, llama4_pythonic, mistral, pythonic)"},
      {"generate" + m + " --prompt-ids 1 --device tpu", "--device"},
      {"serve" + m + " --port 0 --reasoning-parser nope",
       "invalid reasoning parser: nope (choose from deepseek_r1, deepseek_v3, qwen3)"},
      {"generate" + m + " --prompt-ids 1 --quantization awq",
       "--quantization awq is not supported (supported: fp8, none)"},
      {"serve" + m + " --port 0 -q gptq", "--quantization gptq is not supported"},
  };
  for (const Case& c : cases) {
    CliRun r = run(c.args);
    EXPECT_NE(r.status, 0) << c.args;
    const std::string line = last_line(r.err);
    EXPECT_NE(line.find(c.expect), std::string::npos) << c.args << "\nstderr: " << r.err;
    EXPECT_EQ(line.rfind("error: ", 0), 0u) << "one line starting with 'error: ': " << line;
  }
}

// vLLM's parser takes flags with underscores (LeaderWorkerSet's recipe passes
// --pipeline_parallel_size); so does tessera, for the name only, not the value.
TEST_F(CliTest, UnderscoreFlagSpellingsAreAccepted) {
  const std::string m = "generate --model " + dir_->string() + " --prompt-ids 5,6,7 --json ";
  CliRun dashed = run(m + "--max-tokens 4 --max-model-len=64 --tensor-parallel-size 1");
  CliRun underscored = run(m + "--max_tokens 4 --max_model_len=64 --tensor_parallel_size 1");
  ASSERT_EQ(dashed.status, 0) << dashed.err;
  ASSERT_EQ(underscored.status, 0) << underscored.err;
  EXPECT_EQ(underscored.out, dashed.out);
  // A value is left as it is: this folder does not exist, and the message names it unchanged.
  CliRun value = run("generate --model=/no/such_folder --prompt-ids 1");
  EXPECT_NE(last_line(value.err).find("/no/such_folder"), std::string::npos) << value.err;
}

// The number in a start-up log line "<prefix>N..." (-1 when absent).
int64_t logged_number(const std::string& log, const std::string& prefix) {
  const size_t at = log.find(prefix);
  return at == std::string::npos ? -1 : std::stoll(log.substr(at + prefix.size()));
}

// --kv-cache-dtype fp8 (E4M3, as vLLM's): a quarter of the f32 cache's bytes per block, so four
// times the blocks in the same budget; the kernels are checked against a reference in
// kernels_test, this checks the flag through to the tokens.
TEST_F(CliTest, Fp8KvCacheHoldsFourTimesTheBlocks) {
  const std::string base = "generate --model " + dir_->string() +
                           " --prompt-ids 5,6,7,8,9 --max-tokens 1 --temperature 0 --logprobs 1 "
                           "--json --kv-cache-memory 8MiB --kv-cache-dtype ";
  CliRun f32 = run(base + "float32"), fp8 = run(base + "fp8"), e4m3 = run(base + "fp8_e4m3");
  ASSERT_EQ(f32.status, 0) << f32.err;
  ASSERT_EQ(fp8.status, 0) << fp8.err;
  ASSERT_EQ(e4m3.status, 0) << e4m3.err;
  const int64_t blocks32 = logged_number(f32.err, "# CPU blocks: ");
  ASSERT_GT(blocks32, 0) << f32.err;
  // floor(budget / (block bytes / 4)) lies in [4 floor(budget / block bytes), 4 (that + 1)).
  const int64_t blocks8 = logged_number(fp8.err, "# CPU blocks: ");
  EXPECT_GE(blocks8, 4 * blocks32) << fp8.err;
  EXPECT_LT(blocks8, 4 * (blocks32 + 1)) << fp8.err;
  EXPECT_EQ(e4m3.out, fp8.out);
  // The first token's log-probability moves by E4M3's rounding of keys and values only.
  const auto a = nlohmann::json::parse(f32.out), b = nlohmann::json::parse(fp8.out);
  const double la = a["logprobs"][0][0][1].get<double>(), lb = b["logprobs"][0][0][1].get<double>();
  EXPECT_NE(la, lb);
  EXPECT_NEAR(la, lb, 0.2);
  CliRun e5m2 = run(base + "fp8_e5m2");
  EXPECT_NE(e5m2.status, 0);
  EXPECT_EQ(last_line(e5m2.err),
            "error: --kv-cache-dtype fp8_e5m2 is not supported (supported: auto, fp8, fp8_e4m3, "
            "bfloat16, float16, float32)");
}

// --quantization fp8: the same command runs, says so, and holds fewer bytes of weights.
TEST_F(CliTest, Fp8QuantizationRunsAndReportsItsWeights) {
  const std::string base = "bench latency --model " + dir_->string() +
                           " --input-len 16 --output-len 4 --num-iters 1 --num-iters-warmup 0 "
                           "--threads 1 --json";
  CliRun plain = run(base), fp8 = run(base + " --quantization fp8");
  ASSERT_EQ(plain.status, 0) << plain.err;
  ASSERT_EQ(fp8.status, 0) << fp8.err;
  const nlohmann::json b = nlohmann::json::parse(fp8.out);
  EXPECT_NE(b["backend"].get<std::string>().find("fp8 weights"), std::string::npos) << b;
  EXPECT_GT(b["decode_tokens_per_s"].get<double>(), 0.0);
  EXPECT_NE(fp8.err.find("with FP8 layers"), std::string::npos) << fp8.err;
  CliRun gen = run("generate --model " + dir_->string() +
                   " --prompt-ids 5,6,7 --max-tokens 4 --temperature 0 --quantization fp8 --json");
  ASSERT_EQ(gen.status, 0) << gen.err;
  EXPECT_EQ(nlohmann::json::parse(gen.out)["output_ids"].size(), 4u);
}

// A chat file through the model folder's template (make-model writes a Llama-3-style one).
TEST_F(CliTest, TokenizeAndGenerateAChat) {
  const fs::path chat = testing::temp_dir("chat") / "chat.json";
  std::ofstream(chat) << R"({"messages": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": " Hi! "}]})";
  const std::string m = " --model " + dir_->string();
  CliRun t = run("tokenize" + m + " --chat " + chat.string());
  ASSERT_EQ(t.status, 0) << t.err;
  const nlohmann::json j = nlohmann::json::parse(t.out);
  const std::string expected =
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n";
  EXPECT_EQ(j["prompt"], expected);
  ASSERT_EQ(j["tokens"].size(), j["ids"].size());
  EXPECT_EQ(j["tokens"][0], "<|begin_of_text|>");
  CliRun nogen = run("tokenize" + m + " --no-generation-prompt --chat " + chat.string());
  ASSERT_EQ(nogen.status, 0) << nogen.err;
  EXPECT_EQ(nlohmann::json::parse(nogen.out)["prompt"],
            expected.substr(
                0, expected.size() -
                       std::string("<|start_header_id|>assistant<|end_header_id|>\n\n").size()));

  CliRun g = run("generate" + m + " --chat " + chat.string() +
                 " --max-tokens 3 --temperature 0 --ignore-eos --json");
  ASSERT_EQ(g.status, 0) << g.err;
  const nlohmann::json out = nlohmann::json::parse(g.out);
  EXPECT_EQ(out["prompt_ids"], j["ids"]);
  EXPECT_EQ(out["output_ids"].size(), 3u);
  // The same ids as a token prompt generate the same tokens.
  std::string ids;
  for (const auto& id : j["ids"]) ids += (ids.empty() ? "" : ",") + std::to_string(id.get<int>());
  CliRun same = run("generate" + m + " --prompt-ids " + ids +
                    " --max-tokens 3 --temperature 0 --ignore-eos --json");
  ASSERT_EQ(same.status, 0) << same.err;
  EXPECT_EQ(nlohmann::json::parse(same.out)["output_ids"], out["output_ids"]);

  // A template's error is one clear line and a non-zero exit.
  const fs::path tmpl = chat.parent_path() / "strict.jinja";
  std::ofstream(tmpl) << "{% if messages[0].role == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{% endif %}";
  for (const std::string cmd : {"tokenize", "generate"}) {
    CliRun bad = run(cmd + m + " --chat " + chat.string() + " --chat-template " + tmpl.string());
    EXPECT_NE(bad.status, 0) << cmd;
    EXPECT_EQ(last_line(bad.err), "error: System role not supported") << cmd;
  }
  fs::remove_all(chat.parent_path());
}

// --tokenizer: the weights in one folder, the tokenizer files in another (as vLLM's flag).
TEST_F(CliTest, TokenizerFlagReadsTheTokenizerFromItsOwnFolder) {
  const fs::path base = testing::temp_dir("split_tokenizer");
  const fs::path weights = base / "weights", tok = base / "tokenizer";
  fs::create_directories(weights);
  fs::create_directories(tok);
  for (const auto& entry : fs::directory_iterator(*dir_)) {
    const std::string name = entry.path().filename().string();
    const bool tokenizer_file = name.rfind("tokenizer", 0) == 0;
    fs::copy_file(entry.path(), (tokenizer_file ? tok : weights) / name);
  }
  const std::string gen = " --prompt Hello --max-tokens 4 --temperature 0 --ignore-eos --json";
  CliRun whole = run("generate --model " + dir_->string() + gen);
  ASSERT_EQ(whole.status, 0) << whole.err;
  CliRun split = run("generate --model " + weights.string() + " --tokenizer " + tok.string() + gen);
  ASSERT_EQ(split.status, 0) << split.err;
  EXPECT_EQ(nlohmann::json::parse(split.out)["prompt_ids"],
            nlohmann::json::parse(whole.out)["prompt_ids"]);
  EXPECT_EQ(nlohmann::json::parse(split.out)["output_ids"],
            nlohmann::json::parse(whole.out)["output_ids"]);
  CliRun none = run("generate --model " + weights.string() + gen);
  EXPECT_NE(none.status, 0);
  EXPECT_NE(last_line(none.err).find("has no tokenizer.json"), std::string::npos) << none.err;
  CliRun wrong =
      run("generate --model " + weights.string() + " --tokenizer " + weights.string() + gen);
  EXPECT_NE(wrong.status, 0);
  EXPECT_EQ(last_line(wrong.err), "error: --tokenizer: " + weights.string() +
                                      " has no tokenizer.json, vocab.json + merges.txt or "
                                      "tokenizer.model");
  CliRun missing = run("generate --model " + weights.string() + " --tokenizer /nonexistent" + gen);
  EXPECT_EQ(last_line(missing.err), "error: --tokenizer: /nonexistent is not a folder");
  fs::remove_all(base);
}

TEST_F(CliTest, MakeModelIsBitForBitDeterministic) {
  const fs::path a = testing::temp_dir("mm_a"), b = testing::temp_dir("mm_b"),
                 c = testing::temp_dir("mm_c");
  for (const auto& [dir, seed] : {std::make_pair(a, 1), std::make_pair(b, 1), std::make_pair(c, 2)})
    ASSERT_EQ(run("make-model --arch gemma2 --preset tiny --seed " + std::to_string(seed) +
                  " --out " + dir.string())
                  .status,
              0);
  auto bytes = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_EQ(bytes(a / "model.safetensors"), bytes(b / "model.safetensors"));
  EXPECT_NE(bytes(a / "model.safetensors"), bytes(c / "model.safetensors"));
  EXPECT_EQ(bytes(a / "config.json"), bytes(b / "config.json"));
  for (const auto& d : {a, b, c}) fs::remove_all(d);
}

// GPT-2 and OPT from make-model to text, and a --max-model-len past the learned position table
// refused with the reason (rotary models only warn).
TEST_F(CliTest, Gpt2AndOptGenerateAndRefuseLengthsPastTheirPositionTables) {
  const fs::path dir = testing::temp_dir("gpt2_cli");
  ASSERT_EQ(run("make-model --arch gpt2 --preset tiny --out " + dir.string()).status, 0);
  const std::string m = " --model " + dir.string();
  CliRun ok = run("generate" + m + " --prompt hello --max-tokens 5 --temperature 0");
  ASSERT_EQ(ok.status, 0) << ok.err;
  EXPECT_NE(ok.err.find("loaded GPT2LMHeadModel"), std::string::npos) << ok.err;
  EXPECT_FALSE(ok.out.empty());
  CliRun longer = run("generate" + m + " --prompt hello --max-tokens 5 --max-model-len 513");
  EXPECT_NE(longer.status, 0);
  EXPECT_EQ(last_line(longer.err),
            "error: --max-model-len 513 exceeds the 512 positions of GPT2LMHeadModel's learned "
            "position table (n_positions in config.json)");
  fs::remove_all(dir);
  // OPT: the same decoder with its own names; its table has 2 more rows than positions.
  ASSERT_EQ(run("make-model --arch opt --preset tiny --out " + dir.string()).status, 0);
  CliRun opt = run("generate" + m + " --prompt hello --max-tokens 5 --max-model-len 512");
  ASSERT_EQ(opt.status, 0) << opt.err;
  EXPECT_NE(opt.err.find("loaded OPTForCausalLM"), std::string::npos) << opt.err;
  CliRun opt_long = run("generate" + m + " --prompt hello --max-tokens 5 --max-model-len 513");
  EXPECT_NE(opt_long.status, 0);
  EXPECT_NE(last_line(opt_long.err).find("(max_position_embeddings in config.json)"),
            std::string::npos)
      << opt_long.err;
  fs::remove_all(dir);
}

// Falcon from make-model to text (its 7B layout and the new decoder), and a falcon-rw folder
// (ALiBi) refused at start with the reason.
TEST_F(CliTest, FalconGeneratesAndAlibiFolderIsRefused) {
  const fs::path dir = testing::temp_dir("falcon_cli");
  const std::string m = " --model " + dir.string();
  for (const char* override : {"{}", R"({"new_decoder_architecture": true, "num_kv_heads": 2})"}) {
    SCOPED_TRACE(override);
    ASSERT_EQ(run("make-model --arch falcon --preset tiny --out " + dir.string() +
                  " --config-override '" + override + "'")
                  .status,
              0);
    CliRun ok = run("generate" + m + " --prompt hello --max-tokens 5 --temperature 0");
    ASSERT_EQ(ok.status, 0) << ok.err;
    EXPECT_NE(ok.err.find("loaded FalconForCausalLM"), std::string::npos) << ok.err;
    EXPECT_FALSE(ok.out.empty());
  }
  ASSERT_EQ(run("make-model --arch falcon --preset tiny --out " + dir.string() +
                " --config-override '{\"alibi\": true}'")
                .status,
            1);
  nlohmann::json config = nlohmann::json::parse(std::ifstream(dir / "config.json"));
  config["alibi"] = true;
  std::ofstream(dir / "config.json") << config.dump();
  CliRun alibi = run("generate" + m + " --prompt hello --max-tokens 5");
  EXPECT_EQ(alibi.status, 1);
  EXPECT_NE(last_line(alibi.err).find("ALiBi"), std::string::npos) << alibi.err;
  fs::remove_all(dir);
}

// A pre-quantized checkpoint (quantization_config) is refused at start with the reason, not
// with the tensors it does not know; --load-format dummy still runs its shape.
TEST_F(CliTest, PreQuantizedCheckpointIsRefusedWithTheReason) {
  const fs::path dir = testing::temp_dir("prequantized_cli");
  ASSERT_EQ(run("make-model --arch llama --preset tiny --out " + dir.string()).status, 0);
  nlohmann::json config = nlohmann::json::parse(std::ifstream(dir / "config.json"));
  config["quantization_config"] = {{"quant_method", "bitsandbytes"}, {"load_in_4bit", true}};
  std::ofstream(dir / "config.json") << config.dump();
  const std::string m = " --model " + dir.string() + " --prompt hello --max-tokens 3";
  CliRun refused = run("generate" + m);
  EXPECT_EQ(refused.status, 1);
  EXPECT_NE(last_line(refused.err)
                .find("pre-quantized checkpoint (quantization_config.quant_method "
                      "\"bitsandbytes\") is not supported"),
            std::string::npos)
      << refused.err;
  // A config that says AWQ over unquantized weights.
  config["quantization_config"] = {{"quant_method", "awq"}, {"bits", 4}};
  std::ofstream(dir / "config.json") << config.dump();
  CliRun mismatch = run("generate" + m);
  EXPECT_EQ(mismatch.status, 1);
  EXPECT_NE(last_line(mismatch.err).find("quantization_config says awq, 4-bit, but no weight"),
            std::string::npos)
      << mismatch.err;
  CliRun dummy = run("generate" + m + " --load-format dummy");
  EXPECT_EQ(dummy.status, 0) << dummy.err;
  fs::remove_all(dir);
}

// FP8 and integer checkpoints load through the CLI (make-model writes each layout); the log says
// which; quantizations that do not load are refused naming what they hold.
TEST_F(CliTest, QuantizedCheckpointsLoadAndOtherQuantizationsAreNamed) {
  const fs::path dir = testing::temp_dir("fp8_cli");
  const std::vector<std::pair<std::string, std::string>> kinds = {
      {"fp8", "FP8 checkpoint,"},
      {"fp8-channel", "FP8 checkpoint,"},
      {"fp8-block", "FP8 checkpoint in 128 x 128 blocks"},
      {"gptq", "4-bit integer checkpoint (gptq) in groups of 128"},
      {"awq", "4-bit integer checkpoint (awq) in groups of 128"},
      {"w4a16", "4-bit integer checkpoint (pack-quantized) in groups of 128"},
      {"w8a8", "8-bit integer checkpoint (int-quantized) with a scale per row"}};
  for (const auto& [kind, log] : kinds) {
    SCOPED_TRACE(kind);
    fs::remove_all(dir);
    ASSERT_EQ(run("make-model --arch qwen2 --preset tiny --checkpoint-quantization " + kind +
                  " --out " + dir.string())
                  .status,
              0);
    CliRun r = run("generate --model " + dir.string() + " --prompt hello --max-tokens 4");
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.err.find(log), std::string::npos) << r.err;
  }
  nlohmann::json config = nlohmann::json::parse(std::ifstream(dir / "config.json"));
  const std::vector<std::pair<nlohmann::json, std::string>> refusals = {
      {{{"quant_method", "compressed-tensors"},
        {"format", "pack-quantized"},
        {"config_groups",
         {{"group_0", {{"weights", {{"num_bits", 4}, {"type", "int"}, {"strategy", "tensor"}}}}}}}},
       "\"compressed-tensors\": compressed-tensors pack-quantized, 4-bit int weights (tensor "
       "strategy)) is not supported"},
      {{{"quant_method", "gptq"}, {"bits", 3}, {"group_size", 128}},
       "\"gptq\": gptq with 3-bit weights) is not supported"},
      {{{"quant_method", "awq"}, {"bits", 4}, {"version", "gemv"}},
       "\"awq\": awq version \"gemv\" (the GEMM layout loads)) is not supported"}};
  for (const auto& [q, message] : refusals) {
    config["quantization_config"] = q;
    std::ofstream(dir / "config.json") << config.dump();
    CliRun refused = run("generate --model " + dir.string() + " --prompt hello --max-tokens 3");
    EXPECT_EQ(refused.status, 1);
    EXPECT_NE(last_line(refused.err).find(message), std::string::npos) << refused.err;
  }
  // An integer checkpoint whose tensors do not fit its config: a message, not a crash.
  config["quantization_config"] = {{"quant_method", "awq"}, {"bits", 4}, {"group_size", 16}};
  std::ofstream(dir / "config.json") << config.dump();
  CliRun bad = run("generate --model " + dir.string() + " --prompt hello --max-tokens 3");
  EXPECT_EQ(bad.status, 1);
  EXPECT_NE(last_line(bad.err).find("has dtype I8, expected F32, BF16 or F16"), std::string::npos)
      << bad.err;
  fs::remove_all(dir);
}

// run-batch: every input line gets exactly one output line, in order, keyed by custom_id; good
// lines answer what `generate` answers for the same prompt, bad lines get an error line.
TEST_F(CliTest, RunBatchAnswersGoodLinesAndReportsBadOnes) {
  const fs::path dir = testing::temp_dir("run_batch");
  const std::string model = dir_->string();
  auto completion = [&](const std::string& id, const std::string& prompt, int max_tokens) {
    return nlohmann::json{{"custom_id", id},
                          {"method", "POST"},
                          {"url", "/v1/completions"},
                          {"body",
                           {{"model", model},
                            {"prompt", nlohmann::json::parse(prompt)},
                            {"max_tokens", max_tokens},
                            {"temperature", 0},
                            {"logprobs", 1}}}}
        .dump();
  };
  const std::vector<std::pair<std::string, int>> expected = {
      {"good-1", 200},    {"not-json", 400}, {"negative", 400}, {"good-2", 200},
      {"wrong-url", 400}, {"no-model", 404}, {"no-id", 400},    {"good-3", 200},
  };
  {
    std::ofstream in(dir / "in.jsonl");
    in << completion("good-1", "[5,6,7,8]", 6) << "\n";
    in << "{this is not json\n";
    in << completion("negative", "[1,2]", -1) << "\n";
    in << completion("good-2", "[9,10,11]", 4) << "\n";
    in << R"({"custom_id":"wrong-url","method":"POST","url":"/v1/embeddings","body":{}})"
       << "\n";
    in << R"({"custom_id":"no-model","method":"POST","url":"/v1/completions",)"
       << R"("body":{"model":"nope","prompt":[1],"max_tokens":2}})"
       << "\n";
    in << "\n";  // blank lines are skipped, as vLLM does
    in << R"({"method":"POST","url":"/v1/completions","body":{"prompt":[1],"max_tokens":2}})"
       << "\n";
    in << completion("good-3", "[5,6,7,8]", 6) << "\n";
  }
  CliRun r = run("run-batch -i " + (dir / "in.jsonl").string() + " -o " +
                 (dir / "out.jsonl").string() + " --model " + model);
  ASSERT_EQ(r.status, 0) << r.err;
  std::ifstream out(dir / "out.jsonl");
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(out, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), expected.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    const auto& [id, status] = expected[i];
    const nlohmann::json& l = lines[i];
    if (id == "not-json" || id == "no-id") {
      EXPECT_TRUE(l["custom_id"].is_null()) << l;
    } else {
      EXPECT_EQ(l["custom_id"], id);
    }
    EXPECT_EQ(l["response"]["status_code"], status) << l;
    if (status == 200) {
      EXPECT_TRUE(l["error"].is_null()) << l;
    } else {
      EXPECT_TRUE(l["error"].is_object()) << l;
      EXPECT_TRUE(l["response"]["body"]["error"]["message"].is_string()) << l;
    }
  }
  // Good lines are answered as `generate` answers the same prompt alone.
  auto generated = [&](const std::string& ids, int n) {
    CliRun g = run("generate --model " + model + " --prompt-ids " + ids + " --max-tokens " +
                   std::to_string(n) + " --temperature 0 --logprobs 1 --json");
    EXPECT_EQ(g.status, 0) << g.err;
    return nlohmann::json::parse(g.out);
  };
  for (const auto& [line, ids, n] :
       {std::make_tuple(0, "5,6,7,8", 6), std::make_tuple(3, "9,10,11", 4),
        std::make_tuple(7, "5,6,7,8", 6)}) {
    const nlohmann::json g = generated(ids, n);
    const nlohmann::json& choice = lines[line]["response"]["body"]["choices"][0];
    EXPECT_EQ(choice["text"], g["text"]);
    EXPECT_EQ(lines[line]["response"]["body"]["usage"]["completion_tokens"], n);
    ASSERT_EQ(choice["logprobs"]["token_logprobs"].size(), static_cast<size_t>(n));
    for (int i = 0; i < n; ++i)
      EXPECT_DOUBLE_EQ(choice["logprobs"]["token_logprobs"][i].get<double>(),
                       g["logprobs"][i][0][1].get<double>());
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tessera
