// Threads and steps in flight from where the ranks run, case by case against the rule in
// distributed/placement.h.
#include "distributed/placement.h"

#include <gtest/gtest.h>

namespace tessera {
namespace {

RankCpus cpus(const std::string& host, std::initializer_list<int> cpu_list, int cores) {
  RankCpus r;
  r.host = host;
  r.cpu_mask.assign(RankCpus::kMaskWords, 0);
  for (int c : cpu_list) r.cpu_mask[c / 64] |= uint64_t{1} << (c % 64);
  r.cores = cores;
  return r;
}

RankPlacement place(int tp, int pp, int rank, const std::vector<RankCpus>& ranks, int threads) {
  return place_rank(WorldConfig::make(tp * pp, rank, tp, pp), ranks, threads);
}

TEST(Placement, StagesOnSharedCoresTakeTurnsWithAllTheirThreads) {
  const std::vector<RankCpus> one_host = {cpus("a", {0, 1}, 2), cpus("a", {0, 1}, 2)};
  for (int rank : {0, 1}) {
    const RankPlacement p = place(1, 2, rank, one_host, 0);
    EXPECT_TRUE(p.stages_share_cores);
    EXPECT_EQ(p.threads, 2);
    EXPECT_EQ(p.steps_in_flight, 1);
  }
  // --threads 1: the two stages fit the two cores side by side, so both steps stay in flight.
  RankPlacement p = place(1, 2, 0, one_host, 1);
  EXPECT_EQ(p.threads, 1);
  EXPECT_EQ(p.steps_in_flight, 2);
  // --threads 2: four threads on two cores, so the stages take turns.
  p = place(1, 2, 1, one_host, 2);
  EXPECT_EQ(p.threads, 2);
  EXPECT_EQ(p.steps_in_flight, 1);
  // Micro-batches pipelined within a step (TESSERA_PP_OVERLAP=0): the stages compute at once.
  p = place_rank(WorldConfig::make(2, 0, 1, 2), one_host, 0, /*stages_can_take_turns=*/false);
  EXPECT_TRUE(p.stages_share_cores);
  EXPECT_EQ(p.threads, 1);
  // Three stages on 2 cores; mpirun's core count may exceed the mask (SMT): cores decide.
  const std::vector<RankCpus> three(3, cpus("a", {0, 1, 2, 3}, 2));
  p = place(1, 3, 2, three, 0);
  EXPECT_EQ(p.threads, 2);
  EXPECT_EQ(p.steps_in_flight, 1);
}

TEST(Placement, StagesWithCoresOfTheirOwnKeepEveryStepInFlight) {
  // Two nodes, one stage each.
  RankPlacement p = place(1, 2, 1, {cpus("a", {0, 1, 2, 3}, 4), cpus("b", {0, 1, 2, 3}, 4)}, 0);
  EXPECT_FALSE(p.stages_share_cores);
  EXPECT_EQ(p.threads, 4);
  EXPECT_EQ(p.steps_in_flight, 2);
  // One node, ranks bound to disjoint cores (mpirun --bind-to core).
  p = place(1, 2, 0, {cpus("a", {0}, 1), cpus("a", {1}, 1)}, 0);
  EXPECT_FALSE(p.stages_share_cores);
  EXPECT_EQ(p.threads, 1);
  EXPECT_EQ(p.steps_in_flight, 2);
  // -tp 2 -pp 2 over two nodes (mpirun -H a:2,b:2): each stage's two ranks share their node.
  const std::vector<RankCpus> two_nodes = {
      cpus("a", {0, 1, 2, 3, 4, 5, 6, 7}, 8), cpus("a", {0, 1, 2, 3, 4, 5, 6, 7}, 8),
      cpus("b", {0, 1, 2, 3, 4, 5, 6, 7}, 8), cpus("b", {0, 1, 2, 3, 4, 5, 6, 7}, 8)};
  for (int rank = 0; rank < 4; ++rank) {
    p = place(2, 2, rank, two_nodes, 0);
    EXPECT_FALSE(p.stages_share_cores);
    EXPECT_EQ(p.threads, 4);
    EXPECT_EQ(p.steps_in_flight, 2);
  }
}

TEST(Placement, TensorParallelRanksSplitTheCoresTheyComputeOn) {
  // -tp 2 alone on 2 cores: one thread each.
  RankPlacement p = place(2, 1, 1, {cpus("a", {0, 1}, 2), cpus("a", {0, 1}, 2)}, 0);
  EXPECT_FALSE(p.stages_share_cores);
  EXPECT_EQ(p.threads, 1);
  EXPECT_EQ(p.steps_in_flight, 1);
  // -tp 2 -pp 2 on one 4-core node: a stage's two ranks compute at once, 2 threads each.
  const std::vector<RankCpus> node(4, cpus("a", {0, 1, 2, 3}, 4));
  for (int rank = 0; rank < 4; ++rank) {
    p = place(2, 2, rank, node, 0);
    EXPECT_TRUE(p.stages_share_cores);
    EXPECT_EQ(p.threads, 2);
    EXPECT_EQ(p.steps_in_flight, 1);
  }
  // More ranks than cores: at least one thread.
  EXPECT_EQ(place(4, 1, 3, std::vector<RankCpus>(4, cpus("a", {0}, 1)), 0).threads, 1);
}

TEST(Placement, LocalCpusHaveAMaskAndCores) {
  const RankCpus me = local_rank_cpus("here");
  EXPECT_EQ(me.host, "here");
  ASSERT_EQ(static_cast<int>(me.cpu_mask.size()), RankCpus::kMaskWords);
  int set = 0;
  for (uint64_t w : me.cpu_mask) set += __builtin_popcountll(w);
  EXPECT_GE(set, me.cores);  // at least one logical CPU per physical core
  EXPECT_GE(me.cores, 1);
}

}  // namespace
}  // namespace tessera
