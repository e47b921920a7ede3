// The engine flags shared by generate, bench, serve and run-batch, spelled as `vllm serve` spells
// them, and the built-in default model.
#pragma once

#include <CLI/CLI.hpp>
#include <filesystem>
#include <memory>
#include <string>

#include "engine/engine_builder.h"

namespace tessera::cli {

// Flags as typed; resolved into EngineArgs by to_engine_args().
struct EngineFlags {
  std::string model = "default";
  std::string tokenizer;  // --tokenizer (empty: the model folder)
  std::string generation_config = "auto";
  std::string override_generation_config;
  int64_t max_logprobs = 20;
  std::string scheduling_policy = "fcfs";
  std::string speculative_config;
  int64_t long_prefill_token_threshold = 0;
  std::string prefix_caching_hash_algo = "builtin";
  std::string dtype = "auto";
  std::string kv_cache_dtype = "auto";
  int threads = 0;
  int64_t max_model_len = 0;
  int block_size = 16;
  std::string kv_cache_memory;
  double gpu_memory_utilization = 0;
  int64_t num_gpu_blocks_override = 0;
  int64_t max_num_seqs = 256;
  int64_t max_num_batched_tokens = 2048;
  bool enable_prefix_caching = true;
  uint64_t seed = 0;
  std::string load_format = "auto";
  std::string matmul_precision = "exact";
  std::string quantization;
  std::string device = "auto";
  bool enforce_eager = false;
  int tensor_parallel_size = 1;
  int pipeline_parallel_size = 1;
  std::string distributed_executor_backend;
  std::string pp_layer_partition;
  double distributed_timeout = 60;
};

void add_engine_flags(CLI::App* cmd, EngineFlags& flags, bool model_positional = false);
// Resolves the flags. With tp x pp > 1 and no launcher around (not started by mpirun/srun), it
// does not return: it re-executes this command line under mpirun with tp x pp ranks on this node.
EngineArgs to_engine_args(const EngineFlags& flags);

// "4GiB", "512MiB", "2G", "1e9", "123" -> bytes. Throws tessera::Error.
int64_t parse_bytes(const std::string& text, const std::string& flag);

// "default" means tessera's built-in model: a random-weight Llama ("small" preset) generated
// once into the user's cache folder. Other values are model folders.
std::filesystem::path resolve_model(const std::string& model);

}  // namespace tessera::cli
