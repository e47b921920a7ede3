// A causal language model as the engine sees it: one forward pass over a batch of sequences'
// new tokens, reading and writing a paged KV cache, returning logits for the rows asked for.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <vector>

#include "config/model_config.h"
#include "core/thread_pool.h"
#include "kernels/backend.h"
#include "loader/weight_source.h"
#include "model/layers/context.h"

namespace tessera {

// The KV cache of the layers this rank runs: k[l], v[l] are
// [num_blocks, block_size, kv_heads_local, head_dim].
struct KVCache {
  int64_t num_blocks = 0;
  int block_size = 16;
  DType dtype = DType::kF32;
  std::vector<Tensor> k, v;
};

struct ForwardBatch {
  Tensor token_ids;  // [T] int32
  Tensor positions;  // [T] int32
  AttentionMetadata attention;
  Tensor logit_rows;  // [R] int32: rows of the batch whose logits are returned
  // Pipeline stages after the first: the residual stream [T, hidden] f32 that the previous stage
  // returned (its hidden states after its last layer).
  Tensor hidden_in;
};

// What every decoder's forward does at its pipeline edges.
// A later stage's residual stream [T, hidden]: the hidden states the previous stage returned.
void take_hidden_in(Backend& backend, const ForwardBatch& batch, const Tensor& residual);
// The rows of the residual stream whose logits were asked for, [R, hidden] f32.
Tensor gather_logit_rows(Backend& backend, const ForwardBatch& batch, const Tensor& residual);

class CausalLM {
 public:
  virtual ~CausalLM() = default;
  virtual const ModelConfig& config() const = 0;
  // Logits [R, vocab] f32 on the backend's device for the rows in batch.logit_rows; on a
  // pipeline stage before the last, the hidden states [T, hidden] f32 for the next stage (a view
  // of a buffer the next forward reuses).
  virtual Tensor forward(const ForwardBatch& batch, KVCache& cache) = 0;
  // Key/value heads and layers held by this rank (sizes the KV cache).
  virtual int64_t kv_heads_local() const = 0;
  virtual int64_t num_layers_local() const = 0;
  // Bytes of weights this rank holds.
  virtual uint64_t weight_bytes() const = 0;
  // Bytes of activation buffers a forward pass over `tokens` tokens needs on this rank.
  virtual int64_t activation_bytes(int64_t tokens) const = 0;
  // Whether forward() runs on the device alone (no copy to or from the host, no host decision
  // between ops), so that a backend may record it once and replay it (CUDA graphs).
  virtual bool graph_capturable() const { return false; }
};

struct LoadOptions {
  std::optional<DType> dtype;  // convert weights to this dtype (default: as stored)
  LoadFormat format = LoadFormat::kAuto;
  ThreadPool* pool = nullptr;  // parallel reads
};

// What loading did, for the start-up log.
struct LoadReport {
  double seconds = 0;
  uint64_t bytes_read = 0;  // from files (0 for mmap and dummy)
  double read_seconds = 0;  // of `seconds`, the time spent reading files
};

// How an integer checkpoint (config.int_checkpoint()) stores its Linear weights.
IntWeights int_weights_of(const ModelConfig& config);

// Builds the model of `model_dir` (config.json + safetensors) on ctx's device and rank.
// Throws tessera::Error for an unsupported or malformed folder.
std::unique_ptr<CausalLM> load_model(const std::filesystem::path& model_dir, ModelContext& ctx,
                                     const LoadOptions& options = {}, LoadReport* report = nullptr);

// Allocates a cache for `model` with `num_blocks` blocks (contents undefined until written).
KVCache allocate_kv_cache(Backend& backend, const CausalLM& model, int64_t num_blocks,
                          int block_size, DType dtype);
// Bytes one block takes across all of this rank's layers (keys and values).
int64_t kv_cache_block_bytes(const CausalLM& model, int block_size, DType dtype);

}  // namespace tessera
