// Where a job's ranks run, and what follows for their threads and for pipeline parallelism.
// Pipeline stages whose ranks share a host's cores gain nothing from running their steps at the
// same time: each would get a share of the cores, and each stage would read its weights once
// per smaller step. There one step is in flight and each stage's ranks take all the cores while
// it computes. Stages with cores of their own (other nodes, or ranks bound to disjoint cores)
// keep pp steps in flight, so that none waits for another in steady state.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "distributed/world.h"
#include "distributed/world_config.h"

namespace tessera {

// One rank's host and CPUs.
struct RankCpus {
  static constexpr int kMaskWords = 16;  // 1024 logical CPUs
  std::string host;
  std::vector<uint64_t> cpu_mask;  // [kMaskWords]: bit c set = logical CPU c may be used
  int cores = 1;                   // physical cores it may use (physical_core_count())
};

// This process's CPUs (its affinity mask and physical_core_count()), on `host`.
RankCpus local_rank_cpus(const std::string& host);

// Every world rank's RankCpus, gathered over the world (a collective: all ranks call it).
std::vector<RankCpus> gather_rank_cpus(DistributedWorld& world);

struct RankPlacement {
  int threads = 1;          // compute threads of the rank asked about
  int steps_in_flight = 1;  // 1, or pp
  bool stages_share_cores = false;
};

// `ranks` has one entry per world rank (the same on every rank, so every rank decides alike);
// threads_flag is --threads (0 = choose: the rank's cores over the ranks that compute at once on
// them). Without stages_can_take_turns (micro-batches pipelined within each step), stages on
// shared cores compute at once and split them.
RankPlacement place_rank(const WorldConfig& wc, const std::vector<RankCpus>& ranks,
                         int threads_flag, bool stages_can_take_turns = true);

}  // namespace tessera
