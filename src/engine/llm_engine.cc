#include "engine/llm_engine.h"

#include <algorithm>

#include "core/logging.h"
#include "core/status.h"
#include "core/sys.h"

namespace tessera {

namespace {

// Largest prefix of `text` that ends on a UTF-8 character boundary and is at most `limit` bytes.
size_t utf8_floor(const std::string& text, size_t limit) {
  limit = std::min(limit, text.size());
  while (limit > 0 && limit < text.size() &&
         (static_cast<unsigned char>(text[limit]) & 0xc0) == 0x80)
    --limit;
  return limit;
}

// The smallest prompt-token cap per step that pipeline groups use.
constexpr int64_t kMinPipelinePrefill = 128;

}  // namespace

LLMEngine::LLMEngine(const EngineConfig& config, ModelExecutor& executor,
                     TextDecoderFactory text_decoders, ThreadPool* pool)
    : config_(config),
      executor_(executor),
      text_decoders_(std::move(text_decoders)),
      pool_(pool),
      blocks_(config.num_blocks, config.block_size, config.enable_prefix_caching),
      sampler_(config.eos_token_ids),
      seed_rng_(std::random_device{}()) {
  const int groups = std::max(1, config.virtual_engines);
  SchedulerConfig sc = config.scheduler;
  sc.prefill_shares = groups;
  // With pipeline groups a step takes at most a quarter of the budget per group (not under
  // kMinPipelinePrefill tokens), so that a burst of prompts as large as one budget runs as at
  // least 4 x groups steps: the pipeline fills and drains once per burst (pp - 1 steps idle at
  // each stage), and a large GEMM is already at full speed at this size.
  if (groups > 1 && sc.max_prefill_tokens == 0)
    sc.max_prefill_tokens =
        std::min(sc.max_num_batched_tokens,
                 std::max<int64_t>(kMinPipelinePrefill, sc.max_num_batched_tokens / (4 * groups)));
  for (int g = 0; g < groups; ++g) schedulers_.push_back(std::make_unique<Scheduler>(sc, blocks_));
  const int64_t capacity = config.num_blocks * config.block_size;
  if (capacity < config.scheduler.max_model_len)
    fail(ErrorKind::kResourceExhausted,
         "the KV cache holds {} tokens ({} blocks of {}), fewer than max_model_len = {}: give it "
         "more "
         "memory or lower --max-model-len",
         capacity, config.num_blocks, config.block_size, config.scheduler.max_model_len);
}

LLMEngine::~LLMEngine() {
  try {
    for (; !in_flight_.empty(); in_flight_.pop_front()) executor_.complete();
  } catch (const std::exception& e) {
    spdlog::error("completing the steps in flight at shutdown: {}", e.what());
  }
}

void LLMEngine::add_request(const std::string& request_id, std::vector<int32_t> prompt,
                            const SamplingParams& params) {
  if (sequences_.count(request_id)) fail("request id \"{}\" is already in use", request_id);
  if (prompt.empty()) fail("the prompt is empty");
  for (int32_t id : prompt)
    if (id < 0 || id >= config_.vocab_size)
      fail("prompt token id {} is outside the vocabulary (0..{})", id, config_.vocab_size - 1);
  const int64_t max_len = config_.scheduler.max_model_len;
  if (static_cast<int64_t>(prompt.size()) >= max_len)
    fail(
        "This model's maximum context length is {} tokens. However, your prompt has {} tokens. "
        "Please reduce the length of the prompt.",
        max_len, prompt.size());
  params.validate(config_.vocab_size);
  for (const std::optional<int>& n : {params.logprobs, params.prompt_logprobs})
    if (n && *n > config_.max_logprobs)
      fail("Requested {} logprobs, which is greater than max allowed: {} (--max-logprobs)", *n,
           config_.max_logprobs);
  if (params.priority != 0 && !config_.scheduler.priority_policy)
    fail("Got priority {} but Priority scheduling is not enabled (--scheduling-policy priority)",
         params.priority);
  auto seq = std::make_unique<Sequence>();
  seq->request_id = request_id;
  seq->arrival_index = next_arrival_++;
  seq->num_prompt_tokens = static_cast<int64_t>(prompt.size());
  seq->tokens = std::move(prompt);
  seq->params = params;
  if (params.grammar)
    seq->grammar = std::make_unique<GrammarMatcher>(params.grammar, params.grammar_vocab);
  seq->rng.seed(params.seed ? *params.seed : seed_rng_());
  seq->arrival_time = now_seconds();
  if (text_decoders_) seq->decoder = text_decoders_(params.skip_special_tokens);
  for (const auto& s : params.stop) max_stop_len_ = std::max(max_stop_len_, s.size());
  // The group with the least work queued (then the fewest sequences): the pipeline's stages
  // work on different groups' steps at once, and a step much longer than the others' (a
  // group's prefills while the others decode) leaves the other stages idle.
  int best = 0;
  std::pair<int64_t, size_t> best_load{INT64_MAX, SIZE_MAX};
  for (size_t g = 0; g < schedulers_.size(); ++g) {
    const std::pair<int64_t, size_t> load{
        schedulers_[g]->pending_tokens(),
        schedulers_[g]->num_waiting() + schedulers_[g]->num_running()};
    if (load < best_load) {
      best_load = load;
      best = static_cast<int>(g);
    }
  }
  seq->group = best;
  schedulers_[best]->add(seq.get());
  sequences_.emplace(request_id, std::move(seq));
}

void LLMEngine::abort_request(const std::string& request_id) {
  auto it = sequences_.find(request_id);
  if (it == sequences_.end()) return;
  Sequence& seq = *it->second;
  schedulers_[seq.group]->remove(&seq);
  seq.status = SequenceStatus::kFinished;
  seq.finish_reason = FinishReason::kAbort;
  seq.finished_time = now_seconds();
  aborted_.push_back(std::move(it->second));
  sequences_.erase(it);
}

void LLMEngine::check_stop(Sequence& seq, int32_t token) {
  const SamplingParams& p = seq.params;
  std::string chunk = seq.decoder ? seq.decoder->step(token) : std::string();
  // Structured output: the text is complete (nothing may follow), or no allowed token was left
  // (a grammar the vocabulary cannot continue): stop rather than write outside the grammar.
  const bool grammar_ends = seq.grammar && (!seq.grammar->accept(token) || seq.grammar->must_end());
  const bool eos = !p.ignore_eos &&
                   std::find(config_.eos_token_ids.begin(), config_.eos_token_ids.end(), token) !=
                       config_.eos_token_ids.end();
  const bool stop_id =
      std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), token) != p.stop_token_ids.end();
  if (eos) {
    seq.finish_reason = FinishReason::kStop;
  } else if (grammar_ends) {
    seq.finish_reason = FinishReason::kStop;
  } else if (stop_id) {
    seq.finish_reason = FinishReason::kStop;
    seq.stop_reason = std::to_string(token);
  }
  // A stop token (EOS or stop_token_ids) is not part of the text unless asked for, as in
  // vLLM: with skip_special_tokens false its text ("<|im_end|>") would otherwise end the output.
  if ((eos || stop_id) && !p.include_stop_str_in_output) chunk.clear();
  if (seq.decoder) {
    const size_t old_size = seq.text.size();
    seq.text += chunk;
    if (seq.finish_reason == FinishReason::kNone && !p.stop.empty() && !chunk.empty()) {
      // A stop string can only end inside the new text: search from where it could start.
      size_t from = old_size > max_stop_len_ ? old_size - max_stop_len_ + 1 : 0;
      size_t best = std::string::npos;
      const std::string* which = nullptr;
      for (const auto& s : p.stop) {
        size_t at = seq.text.find(s, from);
        if (at != std::string::npos && at < best) {
          best = at;
          which = &s;
        }
      }
      if (which) {
        seq.text.resize(p.include_stop_str_in_output ? best + which->size() : best);
        seq.finish_reason = FinishReason::kStop;
        seq.stop_reason = *which;
      }
    }
  }
  if (seq.finish_reason == FinishReason::kNone &&
      (seq.num_output_tokens() >= p.max_tokens ||
       seq.num_tokens() >= config_.scheduler.max_model_len)) {
    seq.finish_reason = FinishReason::kLength;
  }
  if (seq.finish_reason != FinishReason::kNone) {
    seq.status = SequenceStatus::kFinished;
    if (seq.decoder && seq.stop_reason.empty() && seq.finish_reason != FinishReason::kAbort)
      seq.text += seq.decoder->finish();
  }
}

RequestOutput LLMEngine::make_output(Sequence& seq, bool with_prompt_logprobs) {
  RequestOutput out;
  out.request_id = seq.request_id;
  const size_t produced = static_cast<size_t>(seq.num_output_tokens());
  for (size_t i = seq.tokens_emitted; i < produced; ++i)
    out.new_token_ids.push_back(seq.tokens[seq.num_prompt_tokens + i]);
  seq.tokens_emitted = produced;
  for (size_t i = seq.logprobs_emitted; i < seq.logprobs.size(); ++i)
    out.new_logprobs.push_back(seq.logprobs[i]);
  seq.logprobs_emitted = seq.logprobs.size();
  if (seq.decoder) {
    size_t limit = seq.text.size();
    // Hold back text that could be the start of a stop string.
    if (!seq.finished() && !seq.params.stop.empty() && max_stop_len_ > 1)
      limit = utf8_floor(seq.text, seq.text.size() > max_stop_len_ - 1
                                       ? seq.text.size() - (max_stop_len_ - 1)
                                       : 0);
    if (limit > seq.text_emitted) {
      out.new_text = seq.text.substr(seq.text_emitted, limit - seq.text_emitted);
      seq.text_emitted = limit;
    }
  }
  if (with_prompt_logprobs) out.prompt_logprobs = seq.prompt_logprobs;
  out.finished = seq.finished();
  out.finish_reason = seq.finish_reason;
  out.stop_reason = seq.stop_reason;
  out.num_prompt_tokens = seq.num_prompt_tokens;
  out.num_output_tokens = seq.num_output_tokens();
  out.num_cached_tokens = seq.num_cached_prompt_tokens;
  out.arrival_time = seq.arrival_time;
  out.first_scheduled_time = seq.first_scheduled_time;
  out.first_token_time = seq.first_token_time;
  out.finished_time = seq.finished_time;
  return out;
}

std::vector<RequestOutput> LLMEngine::step() {
  std::vector<RequestOutput> outputs;
  for (auto& seq : aborted_) {
    outputs.push_back(make_output(*seq, false));
    if (!in_flight_.empty()) graveyard_.push_back(std::move(seq));
  }
  aborted_.clear();

  // Every group without a step in flight schedules one and submits it; then the oldest step
  // in flight completes. With one group this is schedule, execute, process.
  double now = now_seconds();
  for (size_t g = 0; g < schedulers_.size(); ++g) {
    const bool busy = std::any_of(in_flight_.begin(), in_flight_.end(), [&](const InFlightStep& f) {
      return f.group == static_cast<int>(g);
    });
    if (busy) continue;
    // Other groups' prompts with a chunk in flight: this step may continue them.
    std::vector<Sequence*> shared;
    for (size_t h = 0; h < schedulers_.size(); ++h)
      if (h != g) schedulers_[h]->shareable(shared);
    SchedulerOutput sched = schedulers_[g]->schedule(shared);
    if (sched.empty()) continue;
    for (const auto& s : sched.scheduled)
      if (s.seq->first_scheduled_time == 0) s.seq->first_scheduled_time = now;
    LogitPlan plan;
    StepInputs inputs = build_step_inputs(sched, config_.block_size, &plan);
    // Only argmax ids come back when every row is a plain greedy sample (no logprobs, nothing
    // to edit): a GPU then copies 4 bytes per row instead of the vocabulary's logits.
    bool greedy_only = !inputs.logit_rows.empty();
    for (size_t i = 0; i < sched.scheduled.size() && greedy_only; ++i)
      greedy_only = plan.prompt_row_count[i] == 0 && plan.draft_row_count[i] == 0 &&
                    (plan.sample_row[i] < 0 || sampler_.plain_greedy(*sched.scheduled[i].seq));
    inputs.greedy_only = greedy_only;
    executor_.submit(inputs);
    in_flight_.push_back({static_cast<int>(g), std::move(sched), std::move(plan), greedy_only});
  }
  if (in_flight_.empty()) {
    graveyard_.clear();
    return outputs;
  }
  InFlightStep step = std::move(in_flight_.front());
  in_flight_.pop_front();
  Tensor logits = executor_.complete();
  SchedulerOutput& sched = step.sched;
  const LogitPlan& plan = step.plan;
  // Sequences aborted while their step was in flight are already reported and freed.
  auto aborted = [](const Sequence& seq) { return seq.finish_reason == FinishReason::kAbort; };
  {
    SchedulerOutput live;
    for (const auto& s : sched.scheduled)
      if (!aborted(*s.seq)) live.scheduled.push_back(s);
    schedulers_[step.group]->on_step_done(live);
  }
  const int64_t vocab = step.greedy_only ? 0 : logits.size(1);
  auto row = [&](int32_t r) {
    return std::span<const float>(logits.data<float>() + static_cast<int64_t>(r) * vocab, vocab);
  };

  // Prompt logprobs: row p of a chunk predicts prompt token p + 1.
  for (size_t i = 0; i < sched.scheduled.size(); ++i) {
    Sequence& seq = *sched.scheduled[i].seq;
    if (aborted(seq)) continue;
    const int64_t begin = seq.num_computed_tokens - sched.scheduled[i].num_new_tokens;
    for (int32_t k = 0; k < plan.prompt_row_count[i]; ++k) {
      const int64_t pos = begin + k;
      if (pos != static_cast<int64_t>(seq.prompt_logprobs.size())) continue;  // recomputed
      seq.prompt_logprobs.push_back(compute_logprobs(
          row(plan.prompt_row_begin[i] + k), seq.tokens[pos + 1], *seq.params.prompt_logprobs));
    }
  }

  // Sample every sequence whose known tokens are all computed; rows are independent.
  // Sequences with drafts are verified one token at a time below.
  std::vector<size_t> to_sample;
  for (size_t i = 0; i < sched.scheduled.size(); ++i)
    if (plan.sample_row[i] >= 0 && !aborted(*sched.scheduled[i].seq) &&
        plan.draft_row_count[i] == 0)
      to_sample.push_back(i);
  std::vector<int32_t> tokens(to_sample.size());
  std::vector<TokenLogprobs> lps(to_sample.size());
  auto sample_range = [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      const size_t i = to_sample[j];
      Sequence& seq = *sched.scheduled[i].seq;
      if (step.greedy_only) {  // the executor's argmax, what sample() would have chosen
        tokens[j] = logits.data<int32_t>()[plan.sample_row[i]];
        continue;
      }
      auto r = row(plan.sample_row[i]);
      tokens[j] = sampler_.sample(r, seq);
      if (seq.params.logprobs) lps[j] = compute_logprobs(r, tokens[j], *seq.params.logprobs);
    }
  };
  if (pool_ && to_sample.size() > 1) {
    pool_->parallel_for(static_cast<int64_t>(to_sample.size()), sample_range);
  } else {
    sample_range(0, static_cast<int64_t>(to_sample.size()));
  }

  now = now_seconds();
  // Appends one sampled token to `seq` and checks whether it ends the sequence.
  const auto add_token = [&](Sequence& seq, int32_t token, TokenLogprobs* lp) {
    const bool first = seq.num_output_tokens() == 0;
    seq.tokens.push_back(token);
    if (seq.params.logprobs) seq.logprobs.push_back(std::move(*lp));
    if (first) {
      seq.first_token_time = now;
    } else {
      seq.inter_token_latencies.push_back(now - seq.last_token_time);
    }
    seq.last_token_time = now;
    ++generation_tokens_total_;
    if (first) prompt_tokens_total_ += seq.num_prompt_tokens;
    check_stop(seq, token);
  };
  const auto finish_output = [&](Sequence& seq, bool first) {
    if (seq.finished()) seq.finished_time = now;
    outputs.push_back(make_output(seq, first && seq.params.prompt_logprobs.has_value()));
    if (seq.finished()) {
      schedulers_[seq.group]->remove(&seq);
      sequences_.erase(seq.request_id);
    }
  };
  // Speculative decoding: row j's sample is the next token; while it equals draft j the draft
  // is accepted and the next row (computed with it in context) is sampled, else it replaces the
  // draft and the rest are dropped. Sampling and comparing is exact rejection sampling for a
  // draft proposed with certainty (ngram): a draft is kept with the model's probability of it.
  for (size_t i = 0; i < sched.scheduled.size(); ++i) {
    if (plan.draft_row_count[i] == 0 || aborted(*sched.scheduled[i].seq)) continue;
    Sequence& seq = *sched.scheduled[i].seq;
    const bool first = seq.num_output_tokens() == 0;
    const int64_t k = seq.num_draft_tokens;
    const std::vector<int32_t> draft(seq.tokens.end() - k, seq.tokens.end());
    seq.tokens.resize(seq.tokens.size() - static_cast<size_t>(k));
    seq.num_draft_tokens = 0;
    const int64_t known = seq.num_tokens();  // the context before this step's tokens
    int64_t accepted = 0;
    for (int64_t j = 0; j <= k && !seq.finished(); ++j) {
      auto r = row(j < k ? plan.draft_row_begin[i] + static_cast<int32_t>(j) : plan.sample_row[i]);
      const int32_t t = sampler_.sample(r, seq);
      TokenLogprobs lp;
      if (seq.params.logprobs) lp = compute_logprobs(r, t, *seq.params.logprobs);
      add_token(seq, t, &lp);
      if (j == k || t != draft[j]) break;
      ++accepted;
    }
    // K/V is right for the context and the accepted drafts; the token sampled last is new.
    seq.num_computed_tokens = known + accepted;
    ++spec_drafts_total_;
    spec_draft_tokens_total_ += k;
    spec_accepted_tokens_total_ += accepted;
    if (spec_accepted_per_pos_.size() < static_cast<size_t>(k))
      spec_accepted_per_pos_.resize(static_cast<size_t>(k), 0);
    for (int64_t j = 0; j < accepted; ++j) ++spec_accepted_per_pos_[j];
    finish_output(seq, first);
  }
  for (size_t j = 0; j < to_sample.size(); ++j) {
    Sequence& seq = *sched.scheduled[to_sample[j]].seq;
    const bool first = seq.num_output_tokens() == 0;
    add_token(seq, tokens[j], &lps[j]);
    finish_output(seq, first);
  }
  if (in_flight_.empty()) graveyard_.clear();
  return outputs;
}

EngineStats LLMEngine::stats() const {
  EngineStats s;
  for (const auto& scheduler : schedulers_) {
    s.num_running += static_cast<int64_t>(scheduler->num_running());
    s.num_waiting += static_cast<int64_t>(scheduler->num_waiting());
    s.num_preemptions += scheduler->num_preemptions();
  }
  s.kv_cache_usage = blocks_.usage();
  s.prefix_cache_queries = blocks_.prefix_queries();
  s.prefix_cache_hits = blocks_.prefix_hits();
  s.prompt_tokens = prompt_tokens_total_;
  s.generation_tokens = generation_tokens_total_;
  s.spec_drafts = spec_drafts_total_;
  s.spec_draft_tokens = spec_draft_tokens_total_;
  s.spec_accepted_tokens = spec_accepted_tokens_total_;
  s.spec_accepted_per_pos = spec_accepted_per_pos_;
  return s;
}

}  // namespace tessera
