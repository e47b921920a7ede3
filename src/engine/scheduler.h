// Continuous batching: each step keeps the running sequences going (decodes and unfinished
// prefill chunks, oldest first) and admits waiting ones in arrival order, within a cap on
// sequences and a budget of tokens per step; prompts longer than what is left of the budget are
// split into chunks (chunked prefill). When the KV cache has no room, the newest running
// sequence is preempted: its blocks are freed and it is recomputed later. Under the priority
// policy "oldest" and "newest" read as "first and last by (priority, arrival)". Works on ids and
// counts; never on tensors.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <vector>

#include "engine/block_manager.h"
#include "engine/sequence.h"

namespace tessera {

struct SchedulerConfig {
  int64_t max_num_seqs = 256;
  int64_t max_num_batched_tokens = 2048;
  int64_t max_model_len = 4096;
  // Longest prefill chunk of one sequence per step (0 = the token budget).
  int64_t long_prefill_token_threshold = 0;
  // Pipeline groups (virtual engines) sharing one prompt's prefill: with n > 1 a group takes at
  // most 1/n of a prompt's remaining tokens and leaves the rest to the groups that schedule
  // next (schedule's `shared`), so that concurrent steps are of similar size.
  int prefill_shares = 1;
  // Most prompt tokens (prefill and recompute) one step takes, 0 = the token budget. Decodes do
  // not count against it. Pipeline groups set it so that a burst of prompts runs as several
  // small steps instead of a few large ones: a pipeline fills and drains once per burst, so the
  // stages idle for one step's length at each end.
  int64_t max_prefill_tokens = 0;
  // --scheduling-policy priority: sequences are served, and kept on preemption, by
  // (params.priority, arrival) instead of arrival alone.
  bool priority_policy = false;
  // --speculative-config ngram: up to this many tokens proposed per decode from earlier text
  // (0: off), by the longest n-gram in [ngram_min, ngram_max] that ends the sequence and
  // occurred before.
  int64_t num_speculative_tokens = 0;
  int64_t ngram_min = 1, ngram_max = 5;
};

// The tokens that followed the latest earlier occurrence of the longest suffix n-gram of
// `tokens` (n in [n_min, n_max]), at most `k` (empty: no match). vLLM's ngram proposer's role.
std::vector<int32_t> propose_ngram_draft(std::span<const int32_t> tokens, int64_t n_min,
                                         int64_t n_max, int64_t k);

struct ScheduledSequence {
  Sequence* seq;
  int64_t num_new_tokens;  // tokens [start, start + num_new_tokens) run this step
  int64_t start = 0;
};

struct SchedulerOutput {
  std::vector<ScheduledSequence> scheduled;
  std::vector<Sequence*> preempted;
  int64_t num_batched_tokens = 0;
  bool empty() const { return scheduled.empty(); }
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& config, BlockManager& blocks);

  void add(Sequence* seq);
  // Removes a waiting or running sequence and frees its blocks.
  void remove(Sequence* seq);
  // `shared`: other groups' prompts with a chunk in flight and tokens left, which this step may
  // continue with what is left of its budget (their chunks then run in consecutive steps).
  SchedulerOutput schedule(const std::vector<Sequence*>& shared = {});
  // Own running prompts that other groups may continue (a chunk in flight, tokens left).
  void shareable(std::vector<Sequence*>& out) const;
  // After the model ran: advances num_computed_tokens and records full blocks in the prefix cache
  // (steps complete in the order they were scheduled).
  void on_step_done(const SchedulerOutput& output);

  // Tokens its sequences still have to run before each samples again: the uncomputed part of a
  // prompt, 1 for a decode. What a group's next steps cost, for balancing pipeline groups.
  int64_t pending_tokens() const;
  size_t num_waiting() const { return waiting_.size(); }
  size_t num_running() const { return running_.size(); }
  int64_t num_preemptions() const { return num_preemptions_; }
  const SchedulerConfig& config() const { return config_; }

 private:
  void preempt(Sequence* seq, SchedulerOutput& out);
  // Speculative decoding: appends draft tokens to a decode sequence; drop_drafts takes back
  // the last `n` of them.
  void propose_drafts(Sequence* seq) const;
  static void drop_drafts(Sequence* seq, int64_t n);
  // The service order: arrival (fcfs), or priority then arrival.
  bool before(const Sequence* a, const Sequence* b) const;
  void insert_waiting(Sequence* seq);
  // The most of `seq`'s remaining prompt this group takes in one step (prefill_shares).
  int64_t share_cap(const Sequence& seq) const;
  // Schedules tokens [scheduled, + num_new) of `seq` (its blocks must fit).
  void take(Sequence* seq, int64_t num_new, SchedulerOutput& out);
  static constexpr int64_t kMinSharedChunk = 32;

  SchedulerConfig config_;
  BlockManager& blocks_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;  // in service order (before())
  int64_t num_preemptions_ = 0;
};

}  // namespace tessera
