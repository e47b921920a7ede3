// What every layer needs: the device to run on, the tensor-parallel group it belongs to and the
// pipeline stage it runs. Models ask only which layers they own and whether they hold the
// embedding (first stage) or the final norm and LM head (last stage); ranks stay out of them.
#pragma once

#include <string>

#include "distributed/communicator.h"
#include "distributed/world_config.h"
#include "kernels/backend.h"

namespace tessera {

struct PipelineStage {
  int index = 0;  // pp_rank
  int count = 1;  // pp
  // Comma-separated layers per stage (VLLM_PP_LAYER_PARTITION / --pp-layer-partition), or empty
  // for vLLM's default split.
  std::string partition;
};

struct ModelContext {
  Backend& backend;
  Communicator& tp;  // tensor-parallel group of this rank (a group of one without TP)
  PipelineStage stage = {};
  int tp_rank() const { return tp.rank(); }
  int tp_size() const { return tp.size(); }
  // The decoder layers [begin, end) this rank runs, of `num_layers`.
  Range owned_layers(int64_t num_layers) const {
    return pipeline_layers(num_layers, stage.count, stage.index, stage.partition);
  }
  bool owns_embedding() const { return stage.index == 0; }
  bool owns_lm_head() const { return stage.index == stage.count - 1; }
};

}  // namespace tessera
