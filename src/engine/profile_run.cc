#include "engine/profile_run.h"

#include <algorithm>
#include <chrono>

#include "core/status.h"
#include "engine/model_runner.h"

namespace tessera {

StepInputs dummy_step(int64_t tokens, int64_t seqs, int block_size, int64_t vocab_size) {
  TESSERA_CHECK(tokens >= seqs && seqs >= 1) << tokens << " tokens in " << seqs << " sequences";
  StepInputs in;
  in.query_start.push_back(0);
  std::vector<std::vector<int32_t>> tables;
  int32_t next_block = 0;
  for (int64_t s = 0; s < seqs; ++s) {
    const int64_t len = tokens / seqs + (s < tokens % seqs ? 1 : 0);
    std::vector<int32_t> table;
    for (int64_t p = 0; p < len; ++p) {
      if (p % block_size == 0) table.push_back(next_block++);
      // Varied ids, so that a mixture of experts routes tokens to many experts.
      in.token_ids.push_back(static_cast<int32_t>((in.token_ids.size() * 7919 + 1) % vocab_size));
      in.positions.push_back(static_cast<int32_t>(p));
      in.slot_mapping.push_back(static_cast<int32_t>(table.back() * block_size + p % block_size));
    }
    in.query_start.push_back(static_cast<int32_t>(in.token_ids.size()));
    in.seq_lens.push_back(static_cast<int32_t>(len));
    in.logit_rows.push_back(static_cast<int32_t>(in.token_ids.size() - 1));
    in.max_blocks = std::max(in.max_blocks, static_cast<int32_t>(table.size()));
    tables.push_back(std::move(table));
  }
  for (auto& t : tables) {
    t.resize(in.max_blocks, 0);
    in.block_tables.insert(in.block_tables.end(), t.begin(), t.end());
  }
  return in;
}

ActivationProfile profile_activations(Backend& backend, CausalLM& model, const WorldConfig& world,
                                      const ProfileShape& shape) {
  const auto t0 = std::chrono::steady_clock::now();
  ActivationProfile p;
  const int64_t vocab = model.config().vocab_size;
  const int64_t tokens = std::max<int64_t>(shape.max_num_batched_tokens, 1);
  p.tokens = tokens;
  p.seqs = std::clamp<int64_t>(shape.max_num_seqs, 1, tokens);
  const StepInputs many = dummy_step(tokens, p.seqs, shape.block_size, vocab);
  const StepInputs one = dummy_step(std::min(tokens, std::max<int64_t>(shape.max_model_len, 1)), 1,
                                    shape.block_size, vocab);
  int64_t blocks = 0;
  for (const StepInputs* in : {&many, &one})
    for (int32_t b : in->block_tables) blocks = std::max<int64_t>(blocks, b + 1);
  {
    KVCache cache = allocate_kv_cache(backend, model, blocks, shape.block_size, shape.kv_dtype);
    p.cache_bytes = blocks * kv_cache_block_bytes(model, shape.block_size, shape.kv_dtype);
    PipelineLinks links;
    links.world_config = world;
    ModelRunner runner(backend, model, cache, links);
    // What is alive now (weights, this cache) is not activation memory.
    const int64_t base = backend.allocated_bytes();
    backend.reset_peak_allocated();
    runner.forward_local(many);
    runner.forward_local(one);
    backend.synchronize();
    if (base >= 0) p.peak_bytes = backend.peak_allocated_bytes() - base;
  }
  backend.release_cached_memory();  // the profile's cache
  p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return p;
}

}  // namespace tessera
