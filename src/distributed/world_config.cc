#include "distributed/world_config.h"

#include <fmt/format.h>

#include <cstdlib>
#include <vector>

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

Range kv_heads_of_rank(int64_t kv_heads, int tp, int rank) {
  TESSERA_CHECK(tp > 0 && rank >= 0 && rank < tp && kv_heads > 0);
  if (tp <= kv_heads) {
    const int64_t per = kv_heads / tp;
    return Range{rank * per, (rank + 1) * per};
  }
  const int64_t head = rank / (tp / kv_heads);
  return Range{head, head + 1};
}

std::string tp_head_split_problem(int64_t heads, int64_t kv_heads, int tp) {
  if (heads % tp != 0) return fmt::format("{} does not divide the {} attention heads", tp, heads);
  if (tp > kv_heads ? tp % kv_heads != 0 : kv_heads % tp != 0)
    return fmt::format("{} and the {} key/value heads do not divide one another", tp, kv_heads);
  return "";
}

Range split_evenly(int64_t total, int parts, int index) {
  TESSERA_CHECK(parts > 0 && index >= 0 && index < parts);
  int64_t base = total / parts, extra = total % parts;
  Range r;
  r.begin = index * base + std::min<int64_t>(index, extra);
  r.end = r.begin + base + (index < extra ? 1 : 0);
  return r;
}

Range pipeline_layers(int64_t num_layers, int pp, int stage, const std::string& partition) {
  TESSERA_CHECK(pp > 0 && stage >= 0 && stage < pp);
  std::vector<int64_t> parts;
  if (!partition.empty()) {
    size_t at = 0;
    while (at <= partition.size()) {
      size_t comma = partition.find(',', at);
      if (comma == std::string::npos) comma = partition.size();
      const std::string item = partition.substr(at, comma - at);
      char* end = nullptr;
      const long long v = std::strtoll(item.c_str(), &end, 10);
      if (item.empty() || *end != '\0' || v < 1)
        fail("pipeline layer partition \"{}\": \"{}\" is not a positive layer count", partition,
             item);
      parts.push_back(v);
      at = comma + 1;
    }
    if (static_cast<int>(parts.size()) != pp)
      fail("pipeline layer partition \"{}\" has {} entries for {} pipeline stages", partition,
           parts.size(), pp);
    int64_t sum = 0;
    for (int64_t v : parts) sum += v;
    if (sum != num_layers)
      fail("pipeline layer partition \"{}\" adds up to {} layers, but the model has {}", partition,
           sum, num_layers);
  } else {
    if (pp > num_layers)
      fail("--pipeline-parallel-size {} is more than the model's {} layers", pp, num_layers);
    parts.assign(pp, num_layers / pp);
    for (int64_t i = 2; i < num_layers % pp + 2; ++i) parts[pp - i] += 1;
  }
  Range r;
  for (int s = 0; s < stage; ++s) r.begin += parts[s];
  r.end = r.begin + parts[stage];
  return r;
}

}  // namespace tessera
