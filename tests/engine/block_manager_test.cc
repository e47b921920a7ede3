// The block pool, prefix caching and the scheduler's policies, on ids and counts only.
#include <gtest/gtest.h>

#include <algorithm>

#include "engine/block_manager.h"
#include "engine/scheduler.h"

namespace tessera {
namespace {

std::vector<int32_t> iota_tokens(int n, int start = 0) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = start + i;
  return t;
}

TEST(BlockManager, GrowAndReleaseCountBlocks) {
  BlockManager bm(10, 4, true);
  std::vector<int32_t> table;
  std::vector<uint64_t> hashes;
  EXPECT_TRUE(bm.can_grow(table, 40));
  EXPECT_FALSE(bm.can_grow(table, 41));
  bm.grow(table, 9);  // 3 blocks
  EXPECT_EQ(table.size(), 3u);
  EXPECT_EQ(bm.num_free_blocks(), 7);
  EXPECT_DOUBLE_EQ(bm.usage(), 0.3);
  bm.release(table, hashes);
  EXPECT_EQ(bm.num_free_blocks(), 10);
  EXPECT_TRUE(table.empty());
}

TEST(BlockManager, FullBlocksOfAPrefixAreReused) {
  BlockManager bm(16, 4, true);
  const auto tokens = iota_tokens(10);  // two full blocks and a partial one
  std::vector<int32_t> a;
  std::vector<uint64_t> ha;
  bm.grow(a, 10);
  bm.cache_full_blocks(tokens, 10, a, ha);
  EXPECT_EQ(ha.size(), 2u);

  // A second sequence with the same first 9 tokens then different ones.
  auto other = iota_tokens(9);
  other.push_back(99);
  other.push_back(100);
  std::vector<int32_t> b;
  std::vector<uint64_t> hb;
  EXPECT_EQ(bm.match_prefix(other, 10, b, hb), 8);
  EXPECT_EQ(b, std::vector<int32_t>(a.begin(), a.begin() + 2));  // shared physical blocks
  EXPECT_EQ(bm.prefix_queries(), 11);
  EXPECT_EQ(bm.prefix_hits(), 8);
  // At most max_tokens are reused: one block when only 7 tokens may come from the cache.
  std::vector<int32_t> c;
  std::vector<uint64_t> hc;
  EXPECT_EQ(bm.match_prefix(tokens, 7, c, hc), 4);

  // After everyone leaves, cached blocks survive until reused by fresh allocations.
  bm.release(a, ha);
  bm.release(b, hb);
  bm.release(c, hc);
  EXPECT_EQ(bm.num_free_blocks(), 16);
  std::vector<int32_t> d;
  std::vector<uint64_t> hd;
  EXPECT_EQ(bm.match_prefix(tokens, 100, d, hd), 8);
  bm.release(d, hd);
  // Take every block: the cached ones are evicted last, then gone.
  std::vector<int32_t> all;
  std::vector<uint64_t> hall;
  bm.grow(all, 64);
  bm.release(all, hall);
  std::vector<int32_t> e;
  std::vector<uint64_t> he;
  EXPECT_EQ(bm.match_prefix(tokens, 100, e, he), 0);
}

TEST(BlockManager, DifferentTokensNeverMatchAndPrefixCachingCanBeOff) {
  BlockManager bm(8, 4, true);
  std::vector<int32_t> a;
  std::vector<uint64_t> ha;
  bm.grow(a, 8);
  bm.cache_full_blocks(iota_tokens(8), 8, a, ha);
  std::vector<int32_t> b;
  std::vector<uint64_t> hb;
  // Same second block, different first block: the chain hash differs, nothing matches.
  auto t = iota_tokens(8);
  t[0] = 77;
  EXPECT_EQ(bm.match_prefix(t, 8, b, hb), 0);
  BlockManager off(8, 4, false);
  std::vector<int32_t> x;
  std::vector<uint64_t> hx;
  off.grow(x, 8);
  off.cache_full_blocks(iota_tokens(8), 8, x, hx);
  std::vector<int32_t> y;
  std::vector<uint64_t> hy;
  EXPECT_EQ(off.match_prefix(iota_tokens(8), 8, y, hy), 0);
}

// cache_salt: blocks are shared only between sequences with the same salt (none is a salt too).
TEST(BlockManager, SaltedPrefixesMatchOnlyTheSameSalt) {
  BlockManager bm(16, 4, true);
  const auto tokens = iota_tokens(8);
  std::vector<int32_t> a, s1;
  std::vector<uint64_t> ha, hs1;
  bm.grow(a, 8);
  bm.cache_full_blocks(tokens, 8, a, ha);  // unsalted
  bm.grow(s1, 8);
  bm.cache_full_blocks(tokens, 8, s1, hs1, /*salt=*/1234);
  const auto match = [&](uint64_t salt) {
    std::vector<int32_t> t;
    std::vector<uint64_t> h;
    const int64_t hit = bm.match_prefix(tokens, 8, t, h, salt);
    std::vector<int32_t> blocks = t;
    bm.release(t, h);
    return std::make_pair(hit, blocks);
  };
  EXPECT_EQ(match(0), std::make_pair(int64_t{8}, a));
  EXPECT_EQ(match(1234), std::make_pair(int64_t{8}, s1));
  EXPECT_EQ(match(99).first, 0);
  EXPECT_NE(a, s1);  // two copies, one per salt
}

TEST(BlockManager, ResetForgetsFreeCachedBlocksAndReusesThemFirst) {
  BlockManager bm(8, 4, true);
  std::vector<int32_t> a, b;
  std::vector<uint64_t> ha, hb;
  bm.grow(a, 8);  // blocks 0, 1: cached, then freed
  bm.cache_full_blocks(iota_tokens(8), 8, a, ha);
  const std::vector<int32_t> first = a;
  bm.grow(b, 4);  // block 2: cached and still in use
  bm.cache_full_blocks(iota_tokens(4, 50), 4, b, hb);
  bm.release(a, ha);
  bm.reset_prefix_cache();
  EXPECT_EQ(bm.num_free_blocks(), 7);
  // The freed prefix is gone; the block in use still matches.
  std::vector<int32_t> c, d;
  std::vector<uint64_t> hc, hd;
  EXPECT_EQ(bm.match_prefix(iota_tokens(8), 8, c, hc), 0);
  EXPECT_EQ(bm.match_prefix(iota_tokens(4, 50), 4, d, hd), 4);
  EXPECT_EQ(d, b);
  // Without the reset, new tables would take the never-used blocks 3.. first; now they take
  // the forgotten ones.
  std::vector<int32_t> e;
  bm.grow(e, 8);
  std::sort(e.begin(), e.end());
  EXPECT_EQ(e, first);
}

Sequence* new_seq(std::vector<std::unique_ptr<Sequence>>& store, int prompt, int64_t arrival) {
  auto s = std::make_unique<Sequence>();
  s->tokens = iota_tokens(prompt, static_cast<int>(arrival * 1000));
  s->num_prompt_tokens = prompt;
  s->arrival_index = arrival;
  store.push_back(std::move(s));
  return store.back().get();
}

TEST(Scheduler, BudgetChunksLongPromptsAndCapsSequences) {
  BlockManager bm(100, 4, false);
  SchedulerConfig cfg;
  cfg.max_num_batched_tokens = 10;
  cfg.max_num_seqs = 2;
  Scheduler sched(cfg, bm);
  std::vector<std::unique_ptr<Sequence>> store;
  Sequence* a = new_seq(store, 25, 0);
  Sequence* b = new_seq(store, 3, 1);
  Sequence* c = new_seq(store, 3, 2);
  sched.add(a);
  sched.add(b);
  sched.add(c);
  SchedulerOutput o = sched.schedule();
  ASSERT_EQ(o.scheduled.size(), 1u);  // the long prompt takes the whole budget
  EXPECT_EQ(o.scheduled[0].num_new_tokens, 10);
  sched.on_step_done(o);
  o = sched.schedule();
  ASSERT_EQ(o.scheduled.size(), 1u);
  EXPECT_EQ(o.scheduled[0].num_new_tokens, 10);
  sched.on_step_done(o);
  o = sched.schedule();  // 5 left for a, then b gets 3 of the remaining 5; c waits (max 2 seqs)
  ASSERT_EQ(o.scheduled.size(), 2u);
  EXPECT_EQ(o.scheduled[0].seq, a);
  EXPECT_EQ(o.scheduled[0].num_new_tokens, 5);
  EXPECT_EQ(o.scheduled[1].seq, b);
  EXPECT_EQ(sched.num_waiting(), 1u);
}

TEST(Scheduler, PreemptsTheNewestWhenBlocksRunOut) {
  BlockManager bm(4, 4, false);  // 16 tokens in all
  SchedulerConfig cfg;
  cfg.max_num_batched_tokens = 64;
  Scheduler sched(cfg, bm);
  std::vector<std::unique_ptr<Sequence>> store;
  Sequence* a = new_seq(store, 8, 0);
  Sequence* b = new_seq(store, 8, 1);
  sched.add(a);
  sched.add(b);
  SchedulerOutput o = sched.schedule();
  ASSERT_EQ(o.scheduled.size(), 2u);
  sched.on_step_done(o);
  a->tokens.push_back(1);  // both sampled a token: each needs a new block, none is free
  b->tokens.push_back(1);
  o = sched.schedule();
  ASSERT_EQ(o.preempted.size(), 1u);
  EXPECT_EQ(o.preempted[0], b);
  EXPECT_EQ(b->num_computed_tokens, 0);
  EXPECT_EQ(sched.num_preemptions(), 1);
  ASSERT_EQ(o.scheduled.size(), 1u);
  EXPECT_EQ(o.scheduled[0].seq, a);
  sched.on_step_done(o);
  sched.remove(a);  // a finishes; b comes back and recomputes prompt + its output token
  o = sched.schedule();
  ASSERT_EQ(o.scheduled.size(), 1u);
  EXPECT_EQ(o.scheduled[0].seq, b);
  EXPECT_EQ(o.scheduled[0].num_new_tokens, 9);
}

// --scheduling-policy priority: waiting sequences are admitted by (priority, arrival), and the
// victim of a preemption is the last by that order, not the newest.
TEST(Scheduler, PriorityPolicyAdmitsAndPreemptsByPriority) {
  BlockManager bm(4, 4, false);  // 16 tokens in all
  SchedulerConfig cfg;
  cfg.max_num_batched_tokens = 64;
  cfg.max_num_seqs = 2;
  cfg.priority_policy = true;
  Scheduler sched(cfg, bm);
  std::vector<std::unique_ptr<Sequence>> store;
  Sequence* low = new_seq(store, 8, 0);
  Sequence* high = new_seq(store, 8, 1);
  Sequence* mid = new_seq(store, 4, 2);
  Sequence* mid_later = new_seq(store, 4, 3);
  low->params.priority = 5;
  high->params.priority = -1;
  mid->params.priority = 2;
  mid_later->params.priority = 2;
  for (Sequence* s : {low, high, mid, mid_later}) sched.add(s);
  SchedulerOutput o = sched.schedule();  // two at most: high, then mid (8 + 4 tokens)
  ASSERT_EQ(o.scheduled.size(), 2u);
  EXPECT_EQ(o.scheduled[0].seq, high);
  EXPECT_EQ(o.scheduled[1].seq, mid);
  sched.on_step_done(o);
  // high's next token takes the one free block; mid's four new tokens need another: mid, last
  // in service order, is preempted and goes back in line ahead of mid_later (same priority,
  // later arrival) and low.
  high->tokens.push_back(1);
  for (int i = 0; i < 4; ++i) mid->tokens.push_back(1);
  o = sched.schedule();
  ASSERT_EQ(o.preempted.size(), 1u);
  EXPECT_EQ(o.preempted[0], mid);
  ASSERT_EQ(o.scheduled.size(), 1u);
  EXPECT_EQ(o.scheduled[0].seq, high);
  sched.on_step_done(o);
  sched.remove(high);
  o = sched.schedule();  // mid (priority 2, arrival 2) before mid_later, then low waits (2 max)
  ASSERT_EQ(o.scheduled.size(), 2u);
  EXPECT_EQ(o.scheduled[0].seq, mid);
  EXPECT_EQ(o.scheduled[1].seq, mid_later);
  EXPECT_EQ(sched.num_waiting(), 1u);
}

// Under the priority policy a running sequence of lower priority is preempted for one of higher
// priority that arrived later (fcfs would preempt the newer one).
TEST(Scheduler, PriorityPolicyPreemptsTheLowestPriorityNotTheNewest) {
  for (bool priority : {false, true}) {
    BlockManager bm(4, 4, false);
    SchedulerConfig cfg;
    cfg.max_num_batched_tokens = 64;
    cfg.priority_policy = priority;
    Scheduler sched(cfg, bm);
    std::vector<std::unique_ptr<Sequence>> store;
    Sequence* old_low = new_seq(store, 8, 0);
    Sequence* new_high = new_seq(store, 8, 1);
    old_low->params.priority = 1;
    new_high->params.priority = 0;
    sched.add(old_low);
    sched.add(new_high);
    SchedulerOutput o = sched.schedule();
    ASSERT_EQ(o.scheduled.size(), 2u);
    sched.on_step_done(o);
    old_low->tokens.push_back(1);
    new_high->tokens.push_back(1);
    o = sched.schedule();
    ASSERT_EQ(o.preempted.size(), 1u);
    EXPECT_EQ(o.preempted[0], priority ? old_low : new_high);
    ASSERT_EQ(o.scheduled.size(), 1u);
    EXPECT_EQ(o.scheduled[0].seq, priority ? new_high : old_low);
  }
}

// The ngram proposer: the longest suffix n-gram (within the bounds) that occurred before, and
// what followed its latest occurrence.
TEST(Scheduler, NgramDraftsFollowTheLatestLongestMatch) {
  using V = std::vector<int32_t>;
  //                 0  1  2  3  4  5  6  7  8  9
  const V tokens = {1, 2, 3, 9, 1, 2, 3, 7, 8, 1, 2, 3};
  // "1 2 3" last occurred at 4: what followed is 7 8 1 2.
  EXPECT_EQ(propose_ngram_draft(tokens, 1, 3, 4), (V{7, 8, 1, 2}));
  EXPECT_EQ(propose_ngram_draft(tokens, 1, 3, 2), (V{7, 8}));
  // Lookups of 4 or more find nothing longer; shorter bounds still match "3", "2 3".
  EXPECT_EQ(propose_ngram_draft(tokens, 4, 5, 3), V{});
  EXPECT_EQ(propose_ngram_draft(tokens, 1, 1, 3), (V{7, 8, 1}));
  // A draft stops at the end of the known text.
  EXPECT_EQ(propose_ngram_draft(V{5, 6, 5}, 1, 2, 4), (V{6, 5}));
  EXPECT_EQ(propose_ngram_draft(V{5, 6, 7}, 1, 2, 4), V{});
  EXPECT_EQ(propose_ngram_draft(V{5}, 1, 2, 4), V{});
}

// Drafts are scheduled with their decode, dropped when the budget or the blocks leave no room
// for them, and never cached or kept through a preemption.
TEST(Scheduler, DraftsRideWithTheirDecodeOrAreDropped) {
  BlockManager bm(8, 4, true);
  SchedulerConfig cfg;
  cfg.max_num_batched_tokens = 64;
  cfg.num_speculative_tokens = 3;
  cfg.ngram_min = 1;
  cfg.ngram_max = 2;
  Scheduler sched(cfg, bm);
  std::vector<std::unique_ptr<Sequence>> store;
  Sequence* a = new_seq(store, 6, 0);
  a->tokens = {1, 2, 3, 1, 2, 3};
  a->params.max_tokens = 100;
  sched.add(a);
  SchedulerOutput o = sched.schedule();  // the prompt: no drafts yet
  ASSERT_EQ(o.scheduled.size(), 1u);
  EXPECT_EQ(a->num_draft_tokens, 0);
  sched.on_step_done(o);
  a->tokens.push_back(1);  // sampled: "... 3 1" -> drafts "2 3 1"
  o = sched.schedule();
  ASSERT_EQ(o.scheduled.size(), 1u);
  EXPECT_EQ(o.scheduled[0].num_new_tokens, 4);
  EXPECT_EQ(a->num_draft_tokens, 3);
  EXPECT_EQ(a->tokens, (std::vector<int32_t>{1, 2, 3, 1, 2, 3, 1, 2, 3, 1}));
  sched.on_step_done(o);
  // Only the verified 7 tokens' full block is cached (one block of 4), not the drafts'.
  EXPECT_EQ(a->block_hashes.size(), 1u);
  // As the engine does when all three are rejected: drafts off, 7 tokens verified, one new.
  // max_tokens then leaves room for the bonus token only: no drafts.
  a->tokens.resize(7);
  a->num_draft_tokens = 0;
  a->num_computed_tokens = 7;
  a->tokens.push_back(2);
  a->params.max_tokens = a->num_output_tokens() + 1;
  o = sched.schedule();
  ASSERT_EQ(o.scheduled.size(), 1u);
  EXPECT_EQ(o.scheduled[0].num_new_tokens, 1);
  EXPECT_EQ(a->num_draft_tokens, 0);
}

// The prompt-token cap (what pipeline groups set): prompt chunks stop at it, decodes do not count
// against it, and the token budget still bounds the whole step.
TEST(Scheduler, PrefillCapLeavesDecodesAlone) {
  BlockManager bm(200, 4, false);
  SchedulerConfig cfg;
  cfg.max_num_batched_tokens = 64;
  cfg.max_prefill_tokens = 12;
  Scheduler sched(cfg, bm);
  std::vector<std::unique_ptr<Sequence>> store;
  std::vector<Sequence*> decoding;
  for (int i = 0; i < 20; ++i) {
    Sequence* s = new_seq(store, 1, i);  // one prompt token each: decode-sized steps
    decoding.push_back(s);
    sched.add(s);
  }
  Sequence* a = new_seq(store, 30, 20);
  Sequence* b = new_seq(store, 5, 21);
  sched.add(a);
  sched.add(b);
  SchedulerOutput o = sched.schedule();
  // 20 one-token sequences, then 12 of a's 30 prompt tokens; b waits for prompt room.
  ASSERT_EQ(o.scheduled.size(), 21u);
  EXPECT_EQ(o.scheduled[20].seq, a);
  EXPECT_EQ(o.scheduled[20].num_new_tokens, 12);
  EXPECT_EQ(o.num_batched_tokens, 32);
  EXPECT_EQ(sched.num_waiting(), 1u);
  sched.on_step_done(o);
  for (Sequence* s : decoding) s->tokens.push_back(7);  // each sampled a token
  o = sched.schedule();
  ASSERT_EQ(o.scheduled.size(), 21u);  // 20 decodes and a's next 12; b still waits
  EXPECT_EQ(o.scheduled[20].num_new_tokens, 12);
  sched.on_step_done(o);
  for (Sequence* s : decoding) sched.remove(s);
  o = sched.schedule();  // a's last 6 and all 5 of b's (11 prompt tokens)
  ASSERT_EQ(o.scheduled.size(), 2u);
  EXPECT_EQ(o.scheduled[0].num_new_tokens, 6);
  EXPECT_EQ(o.scheduled[1].seq, b);
  EXPECT_EQ(o.scheduled[1].num_new_tokens, 5);
}

}  // namespace
}  // namespace tessera
