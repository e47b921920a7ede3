#include "engine/scheduler.h"

#include <algorithm>

#include "core/status.h"

namespace tessera {

Scheduler::Scheduler(const SchedulerConfig& config, BlockManager& blocks)
    : config_(config), blocks_(blocks) {}

bool Scheduler::before(const Sequence* a, const Sequence* b) const {
  if (config_.priority_policy && a->params.priority != b->params.priority)
    return a->params.priority < b->params.priority;
  return a->arrival_index < b->arrival_index;
}

void Scheduler::insert_waiting(Sequence* seq) {
  waiting_.insert(std::upper_bound(waiting_.begin(), waiting_.end(), seq,
                                   [this](Sequence* a, Sequence* b) { return before(a, b); }),
                  seq);
}

void Scheduler::add(Sequence* seq) {
  seq->status = SequenceStatus::kWaiting;
  if (config_.priority_policy)
    insert_waiting(seq);
  else
    waiting_.push_back(seq);
}

void Scheduler::remove(Sequence* seq) {
  auto w = std::find(waiting_.begin(), waiting_.end(), seq);
  if (w != waiting_.end()) waiting_.erase(w);
  auto r = std::find(running_.begin(), running_.end(), seq);
  if (r != running_.end()) running_.erase(r);
  blocks_.release(seq->block_table, seq->block_hashes);
}

std::vector<int32_t> propose_ngram_draft(std::span<const int32_t> tokens, int64_t n_min,
                                         int64_t n_max, int64_t k) {
  const auto size = static_cast<int64_t>(tokens.size());
  for (int64_t n = std::min(n_max, size - 1); n >= std::max<int64_t>(n_min, 1); --n) {
    const auto suffix = tokens.subspan(static_cast<size_t>(size - n));
    // Latest earlier start, so the draft follows the most recent repetition.
    for (int64_t start = size - n - 1; start >= 0; --start) {
      if (!std::equal(suffix.begin(), suffix.end(), tokens.begin() + start)) continue;
      const int64_t from = start + n, to = std::min(size, from + k);
      return std::vector<int32_t>(tokens.begin() + from, tokens.begin() + to);
    }
  }
  return {};
}

void Scheduler::propose_drafts(Sequence* seq) const {
  // Only a plain decode: one token to run, nothing in flight, no prompt logprobs to produce.
  if (seq->num_draft_tokens != 0 || seq->num_inflight_tokens != 0 ||
      seq->num_tokens() - seq->num_computed_tokens != 1 || seq->params.prompt_logprobs)
    return;
  // Never past max_tokens (the bonus token counts) or the context.
  const int64_t room = std::min(seq->params.max_tokens - seq->num_output_tokens() - 1,
                                config_.max_model_len - seq->num_tokens() - 1);
  const int64_t k = std::min(config_.num_speculative_tokens, room);
  if (k <= 0) return;
  const std::vector<int32_t> draft =
      propose_ngram_draft(seq->tokens, config_.ngram_min, config_.ngram_max, k);
  seq->tokens.insert(seq->tokens.end(), draft.begin(), draft.end());
  seq->num_draft_tokens = static_cast<int64_t>(draft.size());
}

void Scheduler::drop_drafts(Sequence* seq, int64_t n) {
  n = std::min(n, seq->num_draft_tokens);
  seq->tokens.resize(seq->tokens.size() - static_cast<size_t>(n));
  seq->num_draft_tokens -= n;
}

void Scheduler::preempt(Sequence* seq, SchedulerOutput& out) {
  drop_drafts(seq, seq->num_draft_tokens);  // unverified: they must not become prompt tokens
  blocks_.release(seq->block_table, seq->block_hashes);
  seq->num_computed_tokens = 0;
  seq->status = SequenceStatus::kWaiting;
  ++seq->num_preemptions;
  running_.erase(std::find(running_.begin(), running_.end(), seq));
  // First in line again (under priority: among the waiting ones of its priority).
  if (config_.priority_policy)
    insert_waiting(seq);
  else
    waiting_.push_front(seq);
  out.preempted.push_back(seq);
  ++num_preemptions_;
}

SchedulerOutput Scheduler::schedule(const std::vector<Sequence*>& shared) {
  SchedulerOutput out;
  int64_t budget = config_.max_num_batched_tokens;
  // Prompt tokens left for this step; a sequence with one token to run is a decode.
  int64_t prefill_budget =
      config_.max_prefill_tokens > 0 ? config_.max_prefill_tokens : config_.max_num_batched_tokens;
  // What the prompt-token cap allows a sequence with `left` tokens to run, and its spending.
  const auto prompt_room = [&](int64_t left) { return left > 1 ? prefill_budget : left; };
  const auto spend = [&](int64_t left, int64_t num_new) {
    budget -= num_new;
    if (left > 1) prefill_budget -= num_new;
  };
  const int64_t chunk_cap =
      config_.long_prefill_token_threshold > 0 ? config_.long_prefill_token_threshold : budget;

  // Running sequences first, oldest first; make room by preempting the newest (never one with
  // tokens in flight: its step would write to freed blocks and count tokens it no longer has).
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* seq = running_[i];
    if (seq->awaiting_sample()) {  // its last chunk is in another group's step
      ++i;
      continue;
    }
    if (config_.num_speculative_tokens > 0) propose_drafts(seq);
    // Draft tokens are a decode's: the prompt-token cap does not apply to them.
    const int64_t left = seq->num_tokens() - seq->num_scheduled_tokens();
    const int64_t plain_left = left - seq->num_draft_tokens;
    if (prompt_room(plain_left) <= 0) {  // a prompt chunk, and this step has its share
      ++i;
      continue;
    }
    int64_t num_new = std::min({left, budget, chunk_cap, share_cap(*seq),
                                seq->num_draft_tokens > 0 ? left : prompt_room(left)});
    // Drafts the budget leaves out are dropped, not kept for later.
    if (seq->num_draft_tokens > 0 && num_new < left) {
      drop_drafts(seq, left - num_new);
      num_new = seq->num_tokens() - seq->num_scheduled_tokens();
    }
    // Nor do drafts take blocks another sequence would have to give up.
    if (seq->num_draft_tokens > 0 &&
        !blocks_.can_grow(seq->block_table, seq->num_scheduled_tokens() + num_new)) {
      drop_drafts(seq, seq->num_draft_tokens);
      num_new = 1;
    }
    TESSERA_CHECK_GT(num_new, 0);
    bool stop = false;
    while (!blocks_.can_grow(seq->block_table, seq->num_scheduled_tokens() + num_new)) {
      // Never one before seq: those are scheduled in this step or wait for a sample, so they
      // have tokens in flight.
      auto victim = std::find_if(running_.rbegin(), running_.rend(),
                                 [](const Sequence* s) { return s->num_inflight_tokens == 0; });
      if (victim == running_.rend() || *victim == seq) {
        if (victim != running_.rend()) preempt(seq, out);
        stop = true;
        break;
      }
      preempt(*victim, out);
    }
    if (stop) break;
    take(seq, num_new, out);
    spend(plain_left, num_new);
    ++i;
  }

  // Then waiting sequences in arrival order, unless this step had to preempt.
  while (out.preempted.empty() && !waiting_.empty() && budget > 0 &&
         static_cast<int64_t>(running_.size()) < config_.max_num_seqs) {
    Sequence* seq = waiting_.front();
    if (seq->num_computed_tokens == 0 && seq->block_table.empty() && !seq->params.prompt_logprobs) {
      // Reuse cached blocks of an identical prefix; at least one token is computed so that the
      // step yields logits. Requests for prompt logprobs compute every prompt token.
      const int64_t hit = blocks_.match_prefix(seq->tokens, seq->num_tokens() - 1, seq->block_table,
                                               seq->block_hashes, seq->params.cache_salt);
      seq->num_computed_tokens = hit;
      if (seq->num_preemptions == 0)
        seq->num_cached_prompt_tokens = std::min(hit, seq->num_prompt_tokens);
    }
    const int64_t left = seq->num_tokens() - seq->num_scheduled_tokens();
    const int64_t num_new = std::min({left, budget, chunk_cap, share_cap(*seq), prompt_room(left)});
    if (num_new <= 0 ||
        !blocks_.can_grow(seq->block_table, seq->num_scheduled_tokens() + num_new)) {
      // Do not hold cached blocks while waiting for room (or for the prompt-token cap).
      blocks_.release(seq->block_table, seq->block_hashes);
      seq->num_computed_tokens = 0;
      break;
    }
    blocks_.grow(seq->block_table, seq->num_computed_tokens + num_new);
    waiting_.pop_front();
    seq->status = SequenceStatus::kRunning;
    auto pos = std::upper_bound(running_.begin(), running_.end(), seq,
                                [this](Sequence* a, Sequence* b) { return before(a, b); });
    running_.insert(pos, seq);
    take(seq, num_new, out);
    spend(left, num_new);
  }

  // Then the rest of other groups' prompts whose earlier chunk is in flight.
  for (Sequence* seq : shared) {
    if (budget <= 0 || prefill_budget <= 0) break;
    TESSERA_CHECK(seq->num_inflight_tokens > 0 && !seq->awaiting_sample()) << "not shareable";
    const int64_t num_new = std::min(
        {seq->num_tokens() - seq->num_scheduled_tokens(), budget, chunk_cap, prefill_budget});
    if (!blocks_.can_grow(seq->block_table, seq->num_scheduled_tokens() + num_new)) break;
    take(seq, num_new, out);
    budget -= num_new;
    prefill_budget -= num_new;
  }
  out.num_batched_tokens = config_.max_num_batched_tokens - budget;
  return out;
}

int64_t Scheduler::share_cap(const Sequence& seq) const {
  const int64_t left = seq.num_tokens() - seq.num_scheduled_tokens();
  // Prompt logprobs are collected in order by one group; short remainders are not worth it.
  if (config_.prefill_shares <= 1 || seq.params.prompt_logprobs ||
      seq.num_scheduled_tokens() >= seq.num_prompt_tokens || left < kMinSharedChunk)
    return left;
  return (left + config_.prefill_shares - 1) / config_.prefill_shares;
}

void Scheduler::take(Sequence* seq, int64_t num_new, SchedulerOutput& out) {
  blocks_.grow(seq->block_table, seq->num_scheduled_tokens() + num_new);
  out.scheduled.push_back({seq, num_new, seq->num_scheduled_tokens()});
  seq->num_inflight_tokens += num_new;
}

void Scheduler::shareable(std::vector<Sequence*>& out) const {
  if (config_.prefill_shares <= 1) return;
  for (Sequence* seq : running_)
    if (seq->num_inflight_tokens > 0 && !seq->awaiting_sample() && !seq->params.prompt_logprobs)
      out.push_back(seq);
}

void Scheduler::on_step_done(const SchedulerOutput& output) {
  for (const ScheduledSequence& s : output.scheduled) {
    Sequence* seq = s.seq;
    TESSERA_CHECK_EQ(s.start, seq->num_computed_tokens) << "steps complete in order";
    seq->num_computed_tokens += s.num_new_tokens;
    seq->num_inflight_tokens -= s.num_new_tokens;
    // Blocks holding unverified drafts are not cached: rejected ones are overwritten later.
    blocks_.cache_full_blocks(seq->tokens, seq->num_computed_tokens - seq->num_draft_tokens,
                              seq->block_table, seq->block_hashes, seq->params.cache_salt);
  }
}

int64_t Scheduler::pending_tokens() const {
  int64_t n = 0;
  for (const Sequence* seq : waiting_) n += seq->num_tokens() - seq->num_computed_tokens;
  for (const Sequence* seq : running_) n += seq->num_tokens() - seq->num_computed_tokens;
  return n;
}

}  // namespace tessera
