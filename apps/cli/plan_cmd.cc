// tessera plan: memory arithmetic and the recommended tensor x pipeline layout for a model on
// given devices, with the `tessera serve` command for it (docs/deploy.md).
#include <cstdio>
#include <memory>

#include <nlohmann/json.hpp>

#include "apps/cli/commands.h"
#include "apps/cli/engine_flags.h"
#include "core/status.h"
#include "engine/planner.h"

namespace tessera::cli {

namespace {

struct PlanOptions {
  std::string model;
  std::string device_memory;
  int devices_per_node = 8;
  int nodes = 0;
  std::string dtype = "auto";
  std::string kv_cache_dtype = "auto";
  int64_t max_model_len = 0;
  double gpu_memory_utilization = 0.9;
  std::string kv_cache_memory;
  int64_t max_num_seqs = 256;
  int64_t max_num_batched_tokens = 2048;
  int block_size = 16;
  bool json = false;
};

int64_t kv_element_bytes(const std::string& name) {
  if (name == "auto") return 0;
  if (name == "fp8" || name == "fp8_e4m3" || name == "fp8_e5m2") return 1;
  if (name == "bfloat16" || name == "float16" || name == "bf16" || name == "f16") return 2;
  if (name == "float32" || name == "f32") return 4;
  fail(
      "--kv-cache-dtype must be auto, fp8, fp8_e4m3, fp8_e5m2, bfloat16, float16 or float32; got "
      "\"{}\"",
      name);
}

void run_plan(const PlanOptions& o) {
  PlanRequest r;
  r.device_memory = parse_bytes(o.device_memory, "--device-memory");
  r.devices_per_node = o.devices_per_node;
  r.max_nodes = o.nodes;
  if (o.dtype != "auto") r.dtype = parse_weight_format(o.dtype);
  r.kv_element_bytes = kv_element_bytes(o.kv_cache_dtype);
  r.kv_cache_dtype = o.kv_cache_dtype;
  r.max_model_len = o.max_model_len;
  r.gpu_memory_utilization = o.gpu_memory_utilization;
  if (!o.kv_cache_memory.empty())
    r.kv_cache_memory = parse_bytes(o.kv_cache_memory, "--kv-cache-memory");
  r.max_num_seqs = o.max_num_seqs;
  r.max_num_batched_tokens = o.max_num_batched_tokens;
  r.block_size = o.block_size;
  if (r.block_size < 1 || r.block_size > 256 || (r.block_size & (r.block_size - 1)) != 0)
    fail("--block-size must be a power of two between 1 and 256, got {}", r.block_size);
  if (r.max_num_batched_tokens < 1) fail("--max-num-batched-tokens must be at least 1");
  const Plan plan = make_plan(load_model_shape(o.model), r);
  if (o.json)
    std::printf("%s\n", plan_to_json(plan).dump(2).c_str());
  else
    std::printf("%s", format_plan(plan).c_str());
  if (!plan.found) fail(ErrorKind::kResourceExhausted, "{}", plan.why);
}

}  // namespace

void add_plan_command(CLI::App& app) {
  auto o = std::make_shared<PlanOptions>();
  CLI::App* cmd = app.add_subcommand(
      "plan", "Memory per rank and the recommended TP/PP layout for a model on given devices");
  std::string known;
  for (const std::string& n : builtin_model_names()) known += (known.empty() ? "" : ", ") + n;
  cmd->add_option("model", o->model, "Model folder, config.json, or a known model: " + known)
      ->required();
  cmd->add_option("--device-memory", o->device_memory, "Memory per device, e.g. 80GiB")->required();
  cmd->add_option("--devices-per-node", o->devices_per_node, "Devices (GPUs) per node")
      ->capture_default_str();
  cmd->add_option("--nodes", o->nodes, "Nodes available (default: as many as needed)");
  cmd->add_option("--dtype", o->dtype, "auto (as stored), bf16, f16, f32, fp8, int8, int4")
      ->capture_default_str();
  cmd->add_option("--kv-cache-dtype", o->kv_cache_dtype,
                  "auto (the weights' 16-bit dtype), fp8, bfloat16, float16, float32")
      ->capture_default_str();
  cmd->add_option("--max-model-len", o->max_model_len,
                  "Longest prompt + output (default: config.json)");
  cmd->add_option("--gpu-memory-utilization", o->gpu_memory_utilization,
                  "Share of each device for weights, activations and KV cache")
      ->capture_default_str();
  cmd->add_option("--kv-cache-memory", o->kv_cache_memory,
                  "Fixed KV cache budget per rank instead of the share");
  cmd->add_option("--max-num-seqs", o->max_num_seqs, "Sequences per step")->capture_default_str();
  cmd->add_option("--max-num-batched-tokens", o->max_num_batched_tokens, "Tokens per step")
      ->capture_default_str();
  cmd->add_option("--block-size", o->block_size, "Tokens per KV block")->capture_default_str();
  cmd->add_flag("--json", o->json, "Print the plan as JSON");
  cmd->callback([o] { run_plan(*o); });
}

}  // namespace tessera::cli
