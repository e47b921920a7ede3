// Everything one process needs to run the engine on a model folder: the thread pool, backend,
// model, KV cache (sized from a memory budget as vLLM sizes it), model runner and engine. Shared
// by `tessera generate`, `bench`, `serve` and `run-batch`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "config/model_config.h"
#include "core/thread_pool.h"
#include "distributed/communicator.h"
#include "distributed/host_staged_communicator.h"
#include "distributed/world.h"
#include "engine/distributed_executor.h"
#include "engine/llm_engine.h"
#include "engine/model_runner.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/model.h"

namespace tessera {

// The engine flags of `vllm serve` that tessera honours (see docs/serving.md).
// --kv-cache-dtype as vLLM spells it: auto (nullopt), fp8 or fp8_e4m3 (E4M3, scale 1),
// bfloat16, float16, float32 (or another torch spelling of those). Throws tessera::Error naming
// the flag.
std::optional<DType> parse_kv_cache_dtype(const std::string& name);
// The vLLM spelling of a cache dtype: fp8, bfloat16, float16, float32.
std::string kv_cache_dtype_label(DType dtype);

struct EngineArgs;
// The generation defaults --generation-config and --override-generation-config select.
GenerationConfig resolve_generation_config(const EngineArgs& args);
// vLLM's --speculative-config JSON for the ngram method (num_speculative_tokens,
// prompt_lookup_max, prompt_lookup_min) into `args`. Throws tessera::Error naming the problem
// (other methods need a draft model, which tessera does not run).
void apply_speculative_config(const std::string& json, EngineArgs& args);
// vLLM's override_max_tokens: max_new_tokens of a --generation-config folder, else of
// --override-generation-config; a cap on every request's max_tokens.
std::optional<int64_t> generation_max_tokens_cap(const EngineArgs& args);

struct EngineArgs {
  std::filesystem::path model;
  std::filesystem::path tokenizer;  // --tokenizer: its own folder (empty: the model's); the
                                    // engine never reads it, the text layer does
  // --generation-config: "auto" (the model's generation_config.json), "vllm" (no sampling
  // defaults from it; its eos ids still stop), or a folder holding a generation_config.json.
  std::string generation_config = "auto";
  std::string override_generation_config;  // JSON object merged on top (or empty)
  int64_t max_logprobs = 20;  // --max-logprobs: most logprobs a request may ask for (-1: all)
  bool priority_scheduling = false;          // --scheduling-policy priority (else fcfs)
  int64_t long_prefill_token_threshold = 0;  // most prompt tokens of one request per step (0: all)
  // --speculative-config '{"method": "ngram", ...}' (0 tokens: off).
  int64_t num_speculative_tokens = 0;
  int64_t ngram_min = 5, ngram_max = 5;
  std::optional<DType> dtype;                      // --dtype (auto: as stored)
  std::optional<DType> kv_cache_dtype;             // --kv-cache-dtype (auto: the backend's choice)
  int threads = 0;                                 // --threads (0: physical cores)
  int64_t max_model_len = 0;                       // --max-model-len (0: from config.json)
  int block_size = 16;                             // --block-size
  std::optional<int64_t> kv_cache_memory;          // --kv-cache-memory (bytes)
  std::optional<double> gpu_memory_utilization;    // --gpu-memory-utilization
  std::optional<int64_t> num_gpu_blocks_override;  // --num-gpu-blocks-override
  int64_t max_num_seqs = 256;
  int64_t max_num_batched_tokens = 2048;
  bool enable_prefix_caching = true;
  uint64_t seed = 0;
  LoadFormat load_format = LoadFormat::kAuto;  // --load-format
  // --device: auto (a GPU when this build has CUDA and one is usable, else the CPU), cpu, cuda.
  std::string device = "auto";
  bool enforce_eager = false;  // --enforce-eager: no CUDA graphs, decode steps run op by op
  // --cpu-matmul-precision: exact (activations split into two bf16 halves) or bf16 (rounded).
  MatmulPrecision matmul_precision = MatmulPrecision::kExact;
  // --quantization fp8: decoder layers' Linear weights in FP8 E4M3 (CPU backend).
  bool fp8_weights = false;
  // Parallelism (docs/distributed.md): ranks = tp x pp, launched by mpirun/srun.
  int tensor_parallel_size = 1;       // --tensor-parallel-size / -tp
  int pipeline_parallel_size = 1;     // --pipeline-parallel-size / -pp
  std::string pp_layer_partition;     // --pp-layer-partition or VLLM_PP_LAYER_PARTITION
  double distributed_timeout_s = 60;  // a peer silent this long inside a step is declared dead

  // Where the tokenizer files are: --tokenizer, else the model folder.
  const std::filesystem::path& tokenizer_dir() const {
    return tokenizer.empty() ? model : tokenizer;
  }
  // Throws tessera::Error naming the flag when a value is out of range.
  void validate() const;
};

// CPU KV cache budget when neither --kv-cache-memory nor --gpu-memory-utilization is given
// (vLLM's CPU backend default, VLLM_CPU_KVCACHE_SPACE).
inline constexpr int64_t kDefaultCpuKvCacheBytes = 4ll << 30;

struct KvCachePlan {
  int64_t num_blocks = 0;
  int64_t block_bytes = 0;
  int64_t budget_bytes = 0;
  std::string rule;  // how the budget was chosen, for the log
};

// Blocks that fit: override, else budget / bytes per block where budget is --kv-cache-memory, or
// utilization x device memory - weights - activations, or the CPU default (the smaller of 4 GiB
// and that, and of what max_num_seqs sequences of max_model_len tokens could use twice over).
// On a GPU the default is vLLM's: 0.9 x device memory - weights - activations.
KvCachePlan plan_kv_cache(const EngineArgs& args, int64_t device_memory, int64_t weight_bytes,
                          int64_t activation_bytes, int64_t block_bytes, int64_t max_model_len,
                          bool gpu = false);

// Thrown by EngineInstance::create on ranks other than the driver once the driver has told them
// to stop: they have served the whole job inside create(). Not an std::exception, so that only
// the program's entry point (which returns 0) catches it.
struct WorkerRankFinished {};

class EngineInstance {
 public:
  // On the driver (and without parallelism) returns the instance. On other ranks, runs the
  // worker loop until the driver stops and then throws WorkerRankFinished.
  static std::unique_ptr<EngineInstance> create(const EngineArgs& args,
                                                TextDecoderFactory text_decoders = {});
  ~EngineInstance();

  LLMEngine& engine() { return *engine_; }
  const ModelConfig& model_config() const { return model_->config(); }
  const GenerationConfig& generation_config() const { return generation_; }
  const EngineArgs& args() const { return args_; }
  ThreadPool& pool() { return *pool_; }
  const KvCachePlan& kv_plan() const { return kv_plan_; }
  double load_seconds() const { return load_seconds_; }
  uint64_t weight_bytes() const { return model_->weight_bytes(); }
  // The weights as this rank holds them: after --quantization, fewer bytes than were read.
  uint64_t resident_weight_bytes() const {
    return model_->weight_bytes() - static_cast<uint64_t>(backend_->quantization_saved_bytes());
  }
  std::string backend_name() const { return backend_->name(); }
  const WorldConfig& world_config() const { return world_->config(); }

 private:
  EngineInstance() = default;
  EngineArgs args_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<DistributedWorld> world_;
  // With a GPU backend: the world's communicators, staging device tensors through the host.
  std::unique_ptr<HostStagedCommunicator> staged_world_, staged_tp_, staged_pp_;
  std::unique_ptr<Communicator> nccl_tp_, nccl_pp_;  // where every rank has a GPU of its own
  std::unique_ptr<ModelContext> ctx_;
  std::unique_ptr<CausalLM> model_;
  KVCache cache_;
  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<DistributedExecutor> executor_;  // multi-rank runs
  std::unique_ptr<LLMEngine> engine_;
  GenerationConfig generation_;
  KvCachePlan kv_plan_;
  double load_seconds_ = 0;
};

// EOS ids: config.json's and generation_config.json's, deduplicated.
std::vector<int32_t> eos_token_ids(const ModelConfig& config, const GenerationConfig& generation);

}  // namespace tessera
