// Rank arithmetic for tensor x pipeline parallelism. Ranks are laid out tensor-parallel first:
// rank = pp_rank * tp + tp_rank, so the tp ranks of a stage are consecutive (one node each in
// the usual deployment) and stages follow one another.
#pragma once

#include <cstdint>
#include <string>

namespace tessera {

struct WorldConfig {
  int world_size = 1;
  int rank = 0;
  int tp = 1;  // tensor-parallel ranks per stage
  int pp = 1;  // pipeline stages

  // Validates tp * pp == world_size and 0 <= rank < world_size; throws tessera::Error.
  static WorldConfig make(int world_size, int rank, int tp, int pp);

  int tp_rank() const { return rank % tp; }
  int pp_rank() const { return rank / tp; }
  bool is_first_stage() const { return pp_rank() == 0; }
  bool is_last_stage() const { return pp_rank() == pp - 1; }
  bool is_driver() const { return rank == 0; }
  // The rank holding tp_rank t of stage s.
  int rank_of(int pp_rank, int tp_rank) const { return pp_rank * tp + tp_rank; }
  std::string describe() const;
};

// [begin, end) of part `index` when `total` items are split into `parts` contiguous parts as
// evenly as possible, the first `total % parts` parts one larger.
struct Range {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
Range split_evenly(int64_t total, int parts, int index);

// Attention heads under tensor parallelism: each of `tp` ranks takes heads / tp query heads and
// kv_heads / tp key/value heads, or, with more ranks than key/value heads, one key/value head
// replicated on tp / kv_heads consecutive ranks.
// The key/value heads rank `rank` holds.
Range kv_heads_of_rank(int64_t kv_heads, int tp, int rank);
// Empty when tp splits the heads that way, else why not: "4 does not divide the 6 attention
// heads", "4 and the 6 key/value heads do not divide one another".
std::string tp_head_split_problem(int64_t heads, int64_t kv_heads, int tp);

// Layers [begin, end) of pipeline stage `stage` of `pp`, as vLLM splits them: num_layers / pp
// each, the remainder one extra to the stages just before the last (counting back from the
// second to last). `partition` ("4,5,3": layers per stage, as VLLM_PP_LAYER_PARTITION) overrides
// it. Throws tessera::Error when there are more stages than layers or the partition does not fit.
Range pipeline_layers(int64_t num_layers, int pp, int stage, const std::string& partition = "");

}  // namespace tessera
