#include "distributed/world_config.h"

#include <fmt/format.h>

#include "core/status.h"

namespace tessera {

WorldConfig WorldConfig::make(int world_size, int rank, int tp, int pp) {
  if (tp < 1) fail("--tensor-parallel-size must be at least 1, got {}", tp);
  if (pp < 1) fail("--pipeline-parallel-size must be at least 1, got {}", pp);
  if (tp * pp != world_size)
    fail("tensor-parallel size {} x pipeline-parallel size {} = {} ranks, but {} were launched", tp,
         pp, tp * pp, world_size);
  TESSERA_CHECK(rank >= 0 && rank < world_size);
  return WorldConfig{world_size, rank, tp, pp};
}

std::string WorldConfig::describe() const {
  return fmt::format("rank {}/{} (tp rank {}/{}, pp stage {}/{})", rank, world_size, tp_rank(), tp,
                     pp_rank(), pp);
}

Range split_evenly(int64_t total, int parts, int index) {
  TESSERA_CHECK(parts > 0 && index >= 0 && index < parts);
  int64_t base = total / parts, extra = total % parts;
  Range r;
  r.begin = index * base + std::min<int64_t>(index, extra);
  r.end = r.begin + base + (index < extra ? 1 : 0);
  return r;
}

}  // namespace tessera
