#include "distributed/placement.h"

#include <sched.h>

#include <algorithm>

#include "core/status.h"
#include "core/tensor.h"
#include "core/thread_pool.h"

namespace tessera {

RankCpus local_rank_cpus(const std::string& host) {
  RankCpus r;
  r.host = host;
  r.cpu_mask.assign(RankCpus::kMaskWords, 0);
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int c = 0; c < std::min(CPU_SETSIZE, 64 * RankCpus::kMaskWords); ++c)
      if (CPU_ISSET(c, &set)) r.cpu_mask[c / 64] |= uint64_t{1} << (c % 64);
  } else {
    r.cpu_mask.assign(RankCpus::kMaskWords, ~uint64_t{0});  // unknown: assume all
  }
  r.cores = physical_core_count();
  return r;
}

std::vector<RankCpus> gather_rank_cpus(DistributedWorld& world) {
  const WorldConfig& wc = world.config();
  const int words = RankCpus::kMaskWords + 1;  // the mask, then the core count
  const RankCpus me = local_rank_cpus(world.host(wc.rank));
  Tensor mine = Tensor::empty({words}, DType::kI64);
  for (int w = 0; w < RankCpus::kMaskWords; ++w)
    mine.data<int64_t>()[w] = static_cast<int64_t>(me.cpu_mask[w]);
  mine.data<int64_t>()[RankCpus::kMaskWords] = me.cores;
  Tensor all = Tensor::empty({int64_t{wc.world_size} * words}, DType::kI64);
  world.world().all_gather(mine, all);
  std::vector<RankCpus> ranks(wc.world_size);
  for (int r = 0; r < wc.world_size; ++r) {
    const int64_t* v = all.data<int64_t>() + int64_t{r} * words;
    ranks[r].host = world.host(r);
    ranks[r].cpu_mask.assign(v, v + RankCpus::kMaskWords);
    ranks[r].cores = static_cast<int>(v[RankCpus::kMaskWords]);
  }
  return ranks;
}

namespace {

bool share(const RankCpus& a, const RankCpus& b) {
  if (a.host != b.host) return false;
  for (size_t w = 0; w < a.cpu_mask.size() && w < b.cpu_mask.size(); ++w)
    if (a.cpu_mask[w] & b.cpu_mask[w]) return true;
  return false;
}

}  // namespace

RankPlacement place_rank(const WorldConfig& wc, const std::vector<RankCpus>& ranks,
                         int threads_flag, bool stages_can_take_turns) {
  TESSERA_CHECK_EQ(static_cast<int>(ranks.size()), wc.world_size);
  const int n = wc.world_size;
  RankPlacement p;
  for (int i = 0; i < n && !p.stages_share_cores; ++i)
    for (int j = i + 1; j < n; ++j)
      if (i / wc.tp != j / wc.tp && share(ranks[i], ranks[j])) {  // rank / tp: its stage
        p.stages_share_cores = true;
        break;
      }
  const bool turns = stages_can_take_turns && p.stages_share_cores;
  // Ranks on rank r's cores (r included); with same_stage, only those of r's stage.
  auto on_cores_of = [&](int r, bool same_stage) {
    int count = 0;
    for (int j = 0; j < n; ++j)
      count += j == r || (share(ranks[r], ranks[j]) && (!same_stage || j / wc.tp == r / wc.tp));
    return count;
  };
  // Those that compute at the same time as r: of r's stage only when stages take turns.
  p.threads = threads_flag > 0 ? threads_flag
                               : std::max(1, ranks[wc.rank].cores / on_cores_of(wc.rank, turns));
  p.steps_in_flight = wc.pp;
  if (wc.pp > 1 && turns) {
    // Given threads, stages still run at once where every rank's cores hold all the threads
    // placed on them (e.g. --threads 1 for two stages on two cores).
    bool oversubscribed = threads_flag == 0;
    for (int r = 0; r < n && !oversubscribed; ++r)
      oversubscribed = threads_flag * on_cores_of(r, false) > ranks[r].cores;
    if (oversubscribed) p.steps_in_flight = 1;
  }
  return p;
}

}  // namespace tessera
