// The engine end to end on a tiny model: batch invariance (alone vs together, with chunked
// prefill, preemption and prefix-cache hits), stop conditions and aborts.
#include <gtest/gtest.h>

#include <unistd.h>

#include <fstream>
#include <map>

#include "engine/engine_builder.h"
#include "engine/llm_engine.h"
#include "model/model_test_util.h"

namespace tessera {
namespace {

struct Result {
  std::vector<int32_t> tokens;
  std::vector<TokenLogprobs> logprobs;
  std::string text;
  FinishReason reason = FinishReason::kNone;
  std::string stop_reason;
};

// Text for token t: a letter for ids < 26, else "<t>" (enough to test stop strings).
class LetterDecoder : public TextDecoder {
 public:
  std::string step(int32_t t) override {
    return t < 26 ? std::string(1, static_cast<char>('a' + t)) : "<" + std::to_string(t) + ">";
  }
  std::string finish() override { return ""; }
};

// Passes steps to the runner and notes their sizes.
class Recorder : public ModelExecutor {
 public:
  explicit Recorder(ModelExecutor& inner) : inner_(inner) {}
  const ModelConfig& config() const override { return inner_.config(); }
  Tensor execute(const StepInputs& in) override { return inner_.execute(in); }
  void submit(const StepInputs& in) override {
    tokens.push_back(in.num_tokens());
    if (!in.logit_rows.empty()) (in.greedy_only ? greedy_only_steps : logit_steps)++;
    ModelExecutor::submit(in);
  }
  std::vector<int64_t> tokens;
  // Steps with logit rows that asked for argmax ids only (StepInputs::greedy_only), and those
  // that asked for logits.
  int greedy_only_steps = 0, logit_steps = 0;

 private:
  ModelExecutor& inner_;
};

class EngineHarness {
 public:
  // groups: the engine's virtual engines (pipeline parallelism's steps in flight; here the
  // single-rank executor runs each submitted step at once, but completes it a step later).
  EngineHarness(const std::filesystem::path& dir, int64_t blocks, int64_t budget,
                bool prefix = true, bool letters = false, int groups = 1, int64_t spec_tokens = 0)
      : pool_(2), backend_(pool_), ctx_{backend_, comm_} {
    model_ = load_model(dir, ctx_);
    cache_ = allocate_kv_cache(backend_, *model_, blocks, 16, DType::kF32);
    runner_ = std::make_unique<ModelRunner>(backend_, *model_, cache_);
    recorder_ = std::make_unique<Recorder>(*runner_);
    EngineConfig c;
    c.scheduler.max_num_batched_tokens = budget;
    c.scheduler.max_model_len = 256;
    c.block_size = 16;
    c.num_blocks = blocks;
    c.enable_prefix_caching = prefix;
    c.vocab_size = model_->config().vocab_size;
    c.eos_token_ids = {2};
    c.virtual_engines = groups;
    c.scheduler.num_speculative_tokens = spec_tokens;
    c.scheduler.ngram_min = 1;
    c.scheduler.ngram_max = 3;
    TextDecoderFactory f;
    if (letters) f = [](bool) { return std::make_unique<LetterDecoder>(); };
    engine_ = std::make_unique<LLMEngine>(c, *recorder_, f, &pool_);
  }
  LLMEngine& engine() { return *engine_; }
  // Tokens of each step submitted so far, in order.
  const std::vector<int64_t>& submitted_tokens() const { return recorder_->tokens; }
  const Recorder& recorder() const { return *recorder_; }

  std::map<std::string, Result> run_all() {
    std::map<std::string, Result> results;
    while (engine_->has_unfinished()) {
      for (const RequestOutput& o : engine_->step()) {
        Result& r = results[o.request_id];
        r.tokens.insert(r.tokens.end(), o.new_token_ids.begin(), o.new_token_ids.end());
        r.logprobs.insert(r.logprobs.end(), o.new_logprobs.begin(), o.new_logprobs.end());
        r.text += o.new_text;
        if (o.finished) {
          r.reason = o.finish_reason;
          r.stop_reason = o.stop_reason;
        }
      }
    }
    return results;
  }

 private:
  ThreadPool pool_;
  CpuBackend backend_;
  SingleCommunicator comm_;
  ModelContext ctx_;
  std::unique_ptr<CausalLM> model_;
  KVCache cache_;
  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<Recorder> recorder_;
  std::unique_ptr<LLMEngine> engine_;
};

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::filesystem::path(testing::make_tiny("llama", DType::kBF16, 5));
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }
  static std::filesystem::path* dir_;
};
std::filesystem::path* EngineTest::dir_ = nullptr;

// Prompts of varied lengths; with `shared`, all start with the same 40 tokens.
std::vector<std::vector<int32_t>> prompts(int n, bool shared) {
  std::vector<std::vector<int32_t>> out;
  const auto prefix = testing::test_ids(40, 4096, 99);
  for (int i = 0; i < n; ++i) {
    auto p = testing::test_ids(3 + (i * 37) % 90, 4096, 1000 + i);
    if (shared) p.insert(p.begin(), prefix.begin(), prefix.end());
    out.push_back(p);
  }
  return out;
}

SamplingParams greedy(int max_tokens) {
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = max_tokens;
  p.logprobs = 3;
  p.ignore_eos = true;
  return p;
}

void expect_same(const Result& a, const Result& b, const std::string& what) {
  ASSERT_EQ(a.tokens, b.tokens) << what;
  ASSERT_EQ(a.logprobs.size(), b.logprobs.size()) << what;
  for (size_t i = 0; i < a.logprobs.size(); ++i) {
    // Bitwise: the same function of the same inputs.
    ASSERT_EQ(a.logprobs[i].logprob, b.logprobs[i].logprob) << what << " position " << i;
    ASSERT_EQ(a.logprobs[i].top, b.logprobs[i].top) << what << " position " << i;
  }
}

// Runs each prompt alone in a fresh engine, one after the other.
std::map<std::string, Result> alone(const std::filesystem::path& dir,
                                    const std::vector<std::vector<int32_t>>& ps,
                                    const SamplingParams& p) {
  std::map<std::string, Result> out;
  EngineHarness h(dir, 64, 2048);
  for (size_t i = 0; i < ps.size(); ++i) {
    h.engine().add_request("r" + std::to_string(i), ps[i], p);
    auto r = h.run_all();
    out.insert(r.begin(), r.end());
  }
  return out;
}

TEST_F(EngineTest, SixtyFourConcurrentRequestsMatchRunningAlone) {
  const auto ps = prompts(64, false);
  const auto solo = alone(*dir_, ps, greedy(12));
  // Together, with a small token budget so that prompts are chunked and mixed with decodes.
  EngineHarness h(*dir_, 512, 96);
  for (size_t i = 0; i < ps.size(); ++i)
    h.engine().add_request("r" + std::to_string(i), ps[i], greedy(12));
  const auto together = h.run_all();
  for (const auto& [id, r] : solo) expect_same(r, together.at(id), id);
}

// Plain greedy requests (no logprobs, nothing to edit) take steps that return argmax ids only;
// they choose the tokens that the sampler chooses from the logits. A step with any other request
// asks for logits.
TEST_F(EngineTest, PlainGreedyStepsReturnArgmaxIdsAndTheSameTokens) {
  const auto ps = prompts(12, false);
  const SamplingParams with_logprobs = greedy(10);
  SamplingParams plain = with_logprobs;
  plain.logprobs.reset();
  SamplingParams penalised = plain;
  penalised.repetition_penalty = 1.3;

  EngineHarness sampled(*dir_, 64, 2048);
  for (size_t i = 0; i < ps.size(); ++i)
    sampled.engine().add_request("r" + std::to_string(i), ps[i], with_logprobs);
  const auto want = sampled.run_all();
  EXPECT_EQ(sampled.recorder().greedy_only_steps, 0);

  EngineHarness argmax(*dir_, 64, 2048);
  for (size_t i = 0; i < ps.size(); ++i)
    argmax.engine().add_request("r" + std::to_string(i), ps[i], plain);
  const auto got = argmax.run_all();
  EXPECT_GT(argmax.recorder().greedy_only_steps, 0);
  EXPECT_EQ(argmax.recorder().logit_steps, 0);
  for (const auto& [id, r] : want) {
    EXPECT_EQ(got.at(id).tokens, r.tokens) << id;
    EXPECT_TRUE(got.at(id).logprobs.empty());
  }

  // One request with logprobs and one with a penalty among plain ones: every step holding either
  // asks for logits, and the plain requests' tokens do not change.
  EngineHarness mixed(*dir_, 64, 2048);
  for (size_t i = 0; i < ps.size(); ++i)
    mixed.engine().add_request("r" + std::to_string(i), ps[i],
                               i == 3   ? with_logprobs
                               : i == 7 ? penalised
                                        : plain);
  const auto mix = mixed.run_all();
  EXPECT_GT(mixed.recorder().logit_steps, 0);
  for (const auto& [id, r] : want)
    if (id != "r7") EXPECT_EQ(mix.at(id).tokens, r.tokens) << id;
  EXPECT_EQ(mix.at("r3").logprobs.size(), want.at("r3").logprobs.size());
}

TEST_F(EngineTest, PreemptionAndPrefixCachingChangeNothing) {
  const auto ps = prompts(24, true);
  const auto solo = alone(*dir_, ps, greedy(20));
  // 40 blocks of 16 tokens cannot hold 24 sequences of ~100 tokens: preemption must happen.
  EngineHarness h(*dir_, 40, 256);
  for (size_t i = 0; i < ps.size(); ++i)
    h.engine().add_request("r" + std::to_string(i), ps[i], greedy(20));
  const auto together = h.run_all();
  const EngineStats s = h.engine().stats();
  EXPECT_GT(s.num_preemptions, 0);
  EXPECT_GT(s.prefix_cache_hits, 0);
  EXPECT_EQ(s.kv_cache_usage, 0.0);
  for (const auto& [id, r] : solo) expect_same(r, together.at(id), id);
}

// Speculative decoding (ngram drafts) changes no greedy token or logprob: with prompts that
// repeat themselves (so drafts are proposed and some accepted), chunked prefill, preemption and
// prefix caching, every request matches running alone without it.
TEST_F(EngineTest, NgramSpeculationChangesNothingGreedy) {
  std::vector<std::vector<int32_t>> ps;
  for (int i = 0; i < 16; ++i) {
    const auto unit = testing::test_ids(3 + i % 5, 4096, 70 + i);
    std::vector<int32_t> p;
    for (int rep = 0; rep < 6 + i % 4; ++rep) p.insert(p.end(), unit.begin(), unit.end());
    ps.push_back(p);
  }
  const auto solo = alone(*dir_, ps, greedy(24));
  for (const int64_t blocks : {512, 30}) {  // 30 blocks: preemption
    EngineHarness h(*dir_, blocks, 128, true, false, 1, /*spec_tokens=*/4);
    for (size_t i = 0; i < ps.size(); ++i)
      h.engine().add_request("r" + std::to_string(i), ps[i], greedy(24));
    const auto together = h.run_all();
    for (const auto& [id, r] : solo) expect_same(r, together.at(id), id);
    const EngineStats s = h.engine().stats();
    EXPECT_GT(s.spec_drafts, 0);
    EXPECT_GT(s.spec_draft_tokens, 0);
    EXPECT_GT(s.spec_accepted_tokens, 0);  // the prompts repeat, and so does the model
    EXPECT_LE(s.spec_accepted_tokens, s.spec_draft_tokens);
    int64_t per_pos = 0;
    for (int64_t n : s.spec_accepted_per_pos) per_pos += n;
    EXPECT_EQ(per_pos, s.spec_accepted_tokens);
    EXPECT_EQ(s.kv_cache_usage, 0.0);
    if (blocks == 30) EXPECT_GT(s.num_preemptions, 0);
  }
}

// With sampling, a draft is kept with the model's probability of it: the seeded outputs are
// reproducible, as long as asked, and end where stop conditions say (max_tokens, stop tokens).
TEST_F(EngineTest, NgramSpeculationWithSamplingAndStops) {
  const auto unit = testing::test_ids(4, 4096, 5);
  std::vector<int32_t> prompt;
  for (int rep = 0; rep < 8; ++rep) prompt.insert(prompt.end(), unit.begin(), unit.end());
  const auto run = [&](int64_t spec, SamplingParams p) {
    EngineHarness h(*dir_, 128, 256, true, false, 1, spec);
    for (int i = 0; i < 4; ++i) {
      SamplingParams q = p;
      q.seed = 100 + i;
      h.engine().add_request("s" + std::to_string(i), prompt, q);
    }
    return h.run_all();
  };
  SamplingParams p;
  p.temperature = 0.7;
  p.max_tokens = 30;
  p.ignore_eos = true;
  p.logprobs = 1;
  const auto a = run(4, p), b = run(4, p);
  for (const auto& [id, r] : a) {
    EXPECT_EQ(r.tokens, b.at(id).tokens) << id;
    EXPECT_EQ(r.tokens.size(), 30u) << id;
    EXPECT_EQ(r.logprobs.size(), 30u) << id;
    EXPECT_EQ(r.reason, FinishReason::kLength);
  }
  // A stop token inside an accepted run of drafts ends the output there.
  SamplingParams g = greedy(30);
  const auto plain = run(0, g);
  const std::vector<int32_t>& out = plain.at("s0").tokens;
  g.stop_token_ids = {out[9]};
  const size_t first_stop = std::find(out.begin(), out.end(), out[9]) - out.begin();
  const auto stopped = run(4, g);
  EXPECT_EQ(stopped.at("s0").tokens,
            std::vector<int32_t>(out.begin(), out.begin() + first_stop + 1));
  EXPECT_EQ(stopped.at("s0").reason, FinishReason::kStop);
}

TEST_F(EngineTest, SeededSamplingIsBatchInvariant) {
  const auto ps = prompts(8, false);
  SamplingParams p;
  p.temperature = 0.9;
  p.top_p = 0.95;
  p.max_tokens = 10;
  p.ignore_eos = true;
  p.seed = 1234;
  const auto solo = alone(*dir_, ps, p);
  EngineHarness h(*dir_, 128, 64);
  for (size_t i = 0; i < ps.size(); ++i) h.engine().add_request("r" + std::to_string(i), ps[i], p);
  const auto together = h.run_all();
  for (const auto& [id, r] : solo) EXPECT_EQ(r.tokens, together.at(id).tokens) << id;
}

TEST_F(EngineTest, StopStringsTokensLengthAndEos) {
  EngineHarness h(*dir_, 64, 256, true, true);
  const auto prompt = testing::test_ids(10, 4096, 5);
  // First learn what greedy decoding produces, then stop on pieces of it.
  SamplingParams base = greedy(12);
  base.logprobs.reset();
  h.engine().add_request("probe", prompt, base);
  const Result probe = h.run_all().at("probe");
  ASSERT_EQ(probe.tokens.size(), 12u);
  EXPECT_EQ(probe.reason, FinishReason::kLength);
  LetterDecoder letters;
  std::string full;
  for (int32_t t : probe.tokens) full += letters.step(t);
  EXPECT_EQ(probe.text, full);

  // A stop string spanning the end of the 3rd token's text and the 4th token's.
  std::string t3 = letters.step(probe.tokens[2]), t4 = letters.step(probe.tokens[3]);
  SamplingParams p = base;
  p.stop = {t3.substr(t3.size() / 2) + t4};
  h.engine().add_request("stop", prompt, p);
  Result r = h.run_all().at("stop");
  EXPECT_EQ(r.reason, FinishReason::kStop);
  EXPECT_EQ(r.stop_reason, p.stop[0]);
  const size_t cut = full.find(p.stop[0]);
  // Generation ends with the token that completes the first occurrence.
  size_t needed = 0, len = 0;
  while (len < cut + p.stop[0].size()) len += letters.step(probe.tokens[needed++]).size();
  EXPECT_EQ(r.tokens.size(), needed);
  EXPECT_EQ(r.text, full.substr(0, cut));
  p.include_stop_str_in_output = true;
  h.engine().add_request("stop2", prompt, p);
  EXPECT_EQ(h.run_all().at("stop2").text, full.substr(0, cut + p.stop[0].size()));

  // A stop token id: generation ends on it.
  p = base;
  p.stop_token_ids = {probe.tokens[5]};
  h.engine().add_request("stopid", prompt, p);
  r = h.run_all().at("stopid");
  EXPECT_EQ(r.reason, FinishReason::kStop);
  EXPECT_EQ(r.stop_reason, std::to_string(probe.tokens[5]));
  EXPECT_LE(r.tokens.size(), 6u);
  EXPECT_EQ(r.tokens.back(), probe.tokens[5]);

  // EOS: bias token 2 up so that it is chosen at once; ignore_eos carries on.
  p = base;
  p.ignore_eos = false;
  p.logit_bias = {{2, 100.0}};
  h.engine().add_request("eos", prompt, p);
  r = h.run_all().at("eos");
  EXPECT_EQ(r.reason, FinishReason::kStop);
  EXPECT_EQ(r.tokens, std::vector<int32_t>{2});
  p.min_tokens = 3;
  h.engine().add_request("min", prompt, p);
  r = h.run_all().at("min");
  EXPECT_EQ(r.tokens.size(), 4u);
  EXPECT_NE(r.tokens[0], 2);
  p.ignore_eos = true;
  p.min_tokens = 0;
  h.engine().add_request("ignore", prompt, p);
  EXPECT_EQ(h.run_all().at("ignore").tokens.size(), 12u);
}

TEST_F(EngineTest, AbortFreesBlocksAndBadRequestsAreRejected) {
  EngineHarness h(*dir_, 64, 256);
  h.engine().add_request("a", testing::test_ids(100, 4096, 1), greedy(50));
  h.engine().add_request("b", testing::test_ids(30, 4096, 2), greedy(50));
  h.engine().step();
  h.engine().step();
  EXPECT_GT(h.engine().stats().kv_cache_usage, 0.0);
  h.engine().abort_request("a");
  h.engine().abort_request("b");
  h.engine().abort_request("unknown");
  EXPECT_EQ(h.engine().stats().kv_cache_usage, 0.0);
  auto out = h.engine().step();
  ASSERT_EQ(out.size(), 2u);
  for (const auto& o : out) EXPECT_EQ(o.finish_reason, FinishReason::kAbort);
  EXPECT_FALSE(h.engine().has_unfinished());

  EXPECT_THROW(h.engine().add_request("x", {}, greedy(5)), Error);
  EXPECT_THROW(h.engine().add_request("x", {1, 5000}, greedy(5)), Error);
  EXPECT_THROW(h.engine().add_request("x", std::vector<int32_t>(256, 1), greedy(5)), Error);
  SamplingParams bad = greedy(5);
  bad.top_p = 0;
  EXPECT_THROW(h.engine().add_request("x", {1, 2}, bad), Error);
  // More logprobs than --max-logprobs (20 by default), and a priority under fcfs.
  SamplingParams many = greedy(5);
  many.logprobs = 21;
  EXPECT_THROW(h.engine().add_request("x", {1, 2}, many), Error);
  many.logprobs = std::nullopt;
  many.prompt_logprobs = 21;
  EXPECT_THROW(h.engine().add_request("x", {1, 2}, many), Error);
  SamplingParams urgent = greedy(5);
  urgent.priority = -1;
  EXPECT_THROW(h.engine().add_request("x", {1, 2}, urgent), Error);
  h.engine().add_request("dup", {1, 2}, greedy(2));
  EXPECT_THROW(h.engine().add_request("dup", {1, 2}, greedy(2)), Error);
}

// Sequences split into 2 or 3 groups scheduled separately, each with a step in flight (how
// pipeline parallelism keeps its stages busy): the same tokens and logprobs as running alone,
// with chunked prefill, preemption and prefix-cache hits.
TEST_F(EngineTest, VirtualEnginesChangeNothing) {
  const auto ps = prompts(24, true);
  const auto solo = alone(*dir_, ps, greedy(20));
  for (int groups : {2, 3}) {
    EngineHarness h(*dir_, 40, 256, true, false, groups);
    for (size_t i = 0; i < ps.size(); ++i)
      h.engine().add_request("r" + std::to_string(i), ps[i], greedy(20));
    const auto together = h.run_all();
    const EngineStats s = h.engine().stats();
    EXPECT_GT(s.num_preemptions, 0) << groups;
    EXPECT_GT(s.prefix_cache_hits, 0) << groups;
    EXPECT_EQ(s.kv_cache_usage, 0.0) << groups;
    EXPECT_EQ(s.num_running + s.num_waiting, 0) << groups;
    for (const auto& [id, r] : solo) expect_same(r, together.at(id), id);
  }
}

// New requests go to the group with the least work queued, not in turn, and a group takes at
// most half of a prompt: the group that schedules next continues it in its own step, while the
// first half is still in flight (pipeline stages work on both steps at once; a long step beside
// a short one leaves a stage idle). The results are those of each request alone.
TEST_F(EngineTest, GroupsShareQueuedWork) {
  std::vector<std::vector<int32_t>> ps = {testing::test_ids(120, 4096, 1)};
  for (int i = 0; i < 4; ++i) ps.push_back(testing::test_ids(8, 4096, 10 + i));
  const auto solo = alone(*dir_, ps, greedy(6));
  EngineHarness h(*dir_, 64, 2048, true, false, 2);
  for (size_t i = 0; i < ps.size(); ++i)
    h.engine().add_request("r" + std::to_string(i), ps[i], greedy(6));
  h.engine().step();
  // Group 0: the first 60 tokens of r0. Group 1: r1-r4 (8 each, joined there because group 0
  // had more queued) and r0's other 60. In turn and unshared they would be 136 and 16.
  EXPECT_EQ(h.submitted_tokens(), (std::vector<int64_t>{60, 92}));
  const auto together = h.run_all();
  for (const auto& [id, r] : solo) expect_same(r, together.at(id), id);
}

// With groups, a burst of prompts runs as small steps: at most max(128, budget / (4 x groups))
// prompt tokens each (here 2048 / 8 = 256), where one group alone would take all 800 tokens at
// once. The results are those of each request alone.
TEST_F(EngineTest, GroupsTakeBurstsInSmallSteps) {
  std::vector<std::vector<int32_t>> burst;
  for (int i = 0; i < 8; ++i) burst.push_back(testing::test_ids(100, 4096, 40 + i));
  const auto solo = alone(*dir_, burst, greedy(4));
  EngineHarness h(*dir_, 128, 2048, true, false, 2);
  for (size_t i = 0; i < burst.size(); ++i)
    h.engine().add_request("r" + std::to_string(i), burst[i], greedy(4));
  const auto together = h.run_all();
  const std::vector<int64_t>& steps = h.submitted_tokens();
  ASSERT_GE(steps.size(), 4u);
  // Group 0 first takes half of each of its four prompts (the share rule: 200 tokens); then
  // each step stops at the cap, continuing the other group's halves as well as its own.
  EXPECT_EQ(std::vector<int64_t>(steps.begin(), steps.begin() + 3),
            (std::vector<int64_t>{200, 256, 256}));
  for (int64_t n : steps) EXPECT_LE(n, 256);
  for (const auto& [id, r] : solo) expect_same(r, together.at(id), id);
}

// A request aborted while its group's step is in flight: reported once as aborted, its blocks
// freed at once, the step's results for it dropped; the others finish as if alone.
TEST_F(EngineTest, AbortWhileItsStepIsInFlight) {
  const auto ps = prompts(6, false);
  const auto solo = alone(*dir_, ps, greedy(10));
  EngineHarness h(*dir_, 64, 2048, true, false, 2);
  for (size_t i = 0; i < ps.size(); ++i)
    h.engine().add_request("r" + std::to_string(i), ps[i], greedy(10));
  h.engine().step();  // both groups submitted, the first completed: group 1 is in flight
  // Each request went to the group with fewer prompt tokens queued (3, 40, 77, 24, 61, 8
  // tokens): group 0 has r0, r2, r5, group 1 r1, r3, r4.
  h.engine().abort_request("r1");  // group 1, in flight
  h.engine().abort_request("r2");  // group 0
  const auto rest = h.run_all();
  EXPECT_EQ(rest.at("r1").reason, FinishReason::kAbort);
  EXPECT_EQ(rest.at("r2").reason, FinishReason::kAbort);
  EXPECT_EQ(h.engine().stats().kv_cache_usage, 0.0);
  for (const std::string id : {"r0", "r3", "r4", "r5"}) {
    ASSERT_EQ(rest.at(id).reason, FinishReason::kLength) << id;
    // The first step's output (r0, r2, r5 of group 0 got their first token) was dropped by
    // run_all's caller above; compare what came after.
    const Result& want = solo.at(id);
    const Result& got = rest.at(id);
    ASSERT_LE(got.tokens.size(), want.tokens.size()) << id;
    const size_t skip = want.tokens.size() - got.tokens.size();
    EXPECT_TRUE(std::equal(got.tokens.begin(), got.tokens.end(), want.tokens.begin() + skip)) << id;
  }
}

// --generation-config and --override-generation-config, on folders written here.
// Engine args for the tiny model through the engine builder (EngineInstance::create).
EngineArgs builder_args(const std::filesystem::path& dir) {
  EngineArgs args;
  args.model = dir;
  args.threads = 2;
  args.max_model_len = 256;
  args.num_gpu_blocks_override = 64;
  return args;
}

// --scheduling-policy priority through the engine builder: with one sequence at a time, the
// waiting requests run by priority (lower first), then arrival; fcfs runs them by arrival.
TEST_F(EngineTest, PrioritySchedulingOrdersWaitingRequests) {
  for (const bool priority : {false, true}) {
    EngineArgs args = builder_args(*dir_);
    args.max_num_seqs = 1;
    args.priority_scheduling = priority;
    auto instance = EngineInstance::create(args);
    LLMEngine& engine = instance->engine();
    uint64_t seed = 100;
    const auto request = [&](const std::string& id, int64_t prio) {
      SamplingParams p = greedy(3);
      p.ignore_eos = true;
      p.priority = priority ? prio : 0;
      engine.add_request(id, testing::test_ids(5, 4096, ++seed), p);
    };
    request("first", 9);
    engine.step();  // "first" runs; the others wait behind it
    request("later_low", 5);
    request("later_high", -2);
    request("later_mid", 0);
    request("last_mid", 0);
    std::vector<std::string> order;
    while (engine.has_unfinished())
      for (const RequestOutput& o : engine.step())
        if (o.finished) order.push_back(o.request_id);
    const std::vector<std::string> by_priority = {"first", "later_high", "later_mid", "last_mid",
                                                  "later_low"};
    const std::vector<std::string> by_arrival = {"first", "later_low", "later_high", "later_mid",
                                                 "last_mid"};
    EXPECT_EQ(order, priority ? by_priority : by_arrival);
  }
}

// --long-prefill-token-threshold: one request's prompt runs in chunks of at most that many
// tokens per step (vLLM's cap), so a 40-token prompt takes 5 steps of 8 to its first token.
TEST_F(EngineTest, LongPrefillThresholdChunksOnePrompt) {
  for (const int64_t threshold : {0, 8}) {
    EngineArgs args = builder_args(*dir_);
    args.long_prefill_token_threshold = threshold;
    auto instance = EngineInstance::create(args);
    LLMEngine& engine = instance->engine();
    engine.add_request("long", testing::test_ids(40, 4096, 3), greedy(1));
    int steps = 0;
    while (engine.has_unfinished()) {
      engine.step();
      ++steps;
    }
    EXPECT_EQ(steps, threshold == 0 ? 1 : 5) << threshold;
  }
}

// --speculative-config as vLLM spells it for ngram; other methods and bad values are named.
TEST(SpeculativeConfigFlag, NgramAndItsErrors) {
  EngineArgs a;
  apply_speculative_config(
      R"({"method":"ngram","num_speculative_tokens":4,"prompt_lookup_max":3,"prompt_lookup_min":2})",
      a);
  EXPECT_EQ(a.num_speculative_tokens, 4);
  EXPECT_EQ(a.ngram_min, 2);
  EXPECT_EQ(a.ngram_max, 3);
  apply_speculative_config(R"({"method":"ngram","num_speculative_tokens":2,"prompt_lookup_max":4})",
                           a);
  EXPECT_EQ(a.ngram_min, 4);  // the one given stands for both
  apply_speculative_config(R"({"model":"[ngram]","num_speculative_tokens":1})", a);  // older
  EXPECT_EQ(a.ngram_max, 5);
  for (const auto& [json, says] : std::vector<std::pair<std::string, std::string>>{
           {R"({"method":"eagle","model":"x","num_speculative_tokens":3})", "'eagle'"},
           {R"({"method":"ngram"})", "num_speculative_tokens is required"},
           {R"({"method":"ngram","num_speculative_tokens":0})", "positive integer"},
           {R"({"method":"ngram","num_speculative_tokens":3,"prompt_lookup_min":4,
                "prompt_lookup_max":2})",
            "above prompt_lookup_max"},
           {"ngram", "JSON object"}}) {
    try {
      apply_speculative_config(json, a);
      ADD_FAILURE() << "accepted " << json;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
  }
}

TEST(GenerationConfigFlags, AutoVllmFolderAndOverride) {
  const auto base =
      std::filesystem::temp_directory_path() / ("tessera_genconfig_" + std::to_string(::getpid()));
  std::filesystem::create_directories(base / "model");
  std::filesystem::create_directories(base / "other");
  std::ofstream(base / "model/generation_config.json")
      << R"({"temperature": 0.6, "top_p": 0.9, "eos_token_id": [1, 2], "max_new_tokens": 64})";
  std::ofstream(base / "other/generation_config.json")
      << R"({"temperature": 0.3, "max_new_tokens": 12})";
  EngineArgs args;
  args.model = base / "model";
  GenerationConfig g = resolve_generation_config(args);
  EXPECT_EQ(g.temperature, 0.6);
  EXPECT_EQ(g.top_p, 0.9);
  EXPECT_EQ(g.eos_token_ids, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(generation_max_tokens_cap(args), std::nullopt);
  // vllm: no sampling defaults from the file; its eos ids still stop generation.
  args.generation_config = "vllm";
  g = resolve_generation_config(args);
  EXPECT_FALSE(g.temperature);
  EXPECT_FALSE(g.max_new_tokens);
  EXPECT_EQ(g.eos_token_ids, (std::vector<int32_t>{1, 2}));
  // A folder of its own: its file, whose max_new_tokens also caps requests.
  args.generation_config = (base / "other").string();
  g = resolve_generation_config(args);
  EXPECT_EQ(g.temperature, 0.3);
  EXPECT_FALSE(g.top_p);
  EXPECT_EQ(generation_max_tokens_cap(args), 12);
  // An override sets the keys it names on top.
  args.generation_config = "auto";
  args.override_generation_config = R"({"temperature": 0.5, "max_new_tokens": 7})";
  g = resolve_generation_config(args);
  EXPECT_EQ(g.temperature, 0.5);
  EXPECT_EQ(g.top_p, 0.9);
  EXPECT_EQ(g.max_new_tokens, 7);
  EXPECT_EQ(generation_max_tokens_cap(args), 7);
  // Bad values are errors that name the flag.
  const auto error_of = [&](const EngineArgs& a) {
    try {
      resolve_generation_config(a);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  args.override_generation_config = "{temperature";
  EXPECT_NE(error_of(args).find("--override-generation-config is not valid JSON"),
            std::string::npos);
  args.override_generation_config = "[1]";
  EXPECT_NE(error_of(args).find("--override-generation-config"), std::string::npos);
  args.override_generation_config.clear();
  args.generation_config = (base / "nowhere").string();
  EXPECT_NE(error_of(args).find("--generation-config must be auto, vllm or a folder"),
            std::string::npos);
  std::filesystem::remove_all(base);
}

}  // namespace
}  // namespace tessera
