#include "model/model.h"

#include "core/status.h"
#include "loader/checkpoint.h"
#include "model/arch/registry.h"

namespace tessera {

std::unique_ptr<CausalLM> load_model(const std::filesystem::path& model_dir, ModelContext& ctx,
                                     const LoadOptions& options) {
  ModelConfig config = load_model_config(model_dir);
  Checkpoint checkpoint = Checkpoint::open(model_dir);
  WeightSource weights(checkpoint);
  if (options.dtype) {
    weights.convert_to(*options.dtype);
    config.dtype = *options.dtype;
  }
  std::unique_ptr<CausalLM> model;
  switch (config.arch) {
    case Arch::kLlama:
    case Arch::kMistral:
    case Arch::kQwen2:
    case Arch::kQwen3:
    case Arch::kGemma2:
      model = build_llama_family(ctx, weights, config);
      break;
  }
  weights.check_all_used();
  return model;
}

KVCache allocate_kv_cache(Backend& backend, const CausalLM& model, int64_t num_blocks,
                          int block_size, DType dtype) {
  KVCache cache;
  cache.num_blocks = num_blocks;
  cache.block_size = block_size;
  cache.dtype = dtype;
  const int64_t heads = model.kv_heads_local(), d = model.config().head_dim;
  // Not zeroed: attention only reads slots written before, and untouched memory costs nothing
  // on CPU (pages are committed on first write).
  for (int64_t l = 0; l < model.num_layers_local(); ++l) {
    cache.k.push_back(backend.empty({num_blocks, block_size, heads, d}, dtype));
    cache.v.push_back(backend.empty({num_blocks, block_size, heads, d}, dtype));
  }
  return cache;
}

int64_t kv_cache_block_bytes(const CausalLM& model, int block_size, DType dtype) {
  return 2 * model.num_layers_local() * model.kv_heads_local() * model.config().head_dim *
         block_size * static_cast<int64_t>(dtype_size(dtype));
}

}  // namespace tessera
