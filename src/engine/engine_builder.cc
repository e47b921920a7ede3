#include "engine/engine_builder.h"

#include "kernels/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "core/logging.h"
#include "core/status.h"
#include "core/sys.h"
#include "distributed/nccl_communicator.h"
#include "distributed/placement.h"
#include "engine/planner.h"
#include "engine/profile_run.h"
#include "kernels/cpu/cpu_backend.h"

namespace tessera {

std::optional<DType> parse_kv_cache_dtype(const std::string& name) {
  if (name == "auto") return std::nullopt;
  if (name == "fp8" || name == "fp8_e4m3") return DType::kF8E4M3;
  DType d;
  if (!parse_torch_dtype(name, &d) || !is_float(d) || d == DType::kF64)
    fail(ErrorKind::kUnsupported,
         "--kv-cache-dtype {} is not supported (supported: auto, fp8, fp8_e4m3, bfloat16, "
         "float16, float32)",
         name);
  return d;
}

std::string kv_cache_dtype_label(DType dtype) {
  switch (dtype) {
    case DType::kF8E4M3:
      return "fp8";
    case DType::kBF16:
      return "bfloat16";
    case DType::kF16:
      return "float16";
    case DType::kF32:
      return "float32";
    default:
      return std::string(dtype_name(dtype));
  }
}

void apply_speculative_config(const std::string& text, EngineArgs& args) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object()) fail("--speculative-config must be a JSON object, got '{}'", text);
  const auto str = [&](const char* key) {
    return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
  };
  const std::string method = !str("method").empty() ? str("method") : str("model");
  if (method != "ngram" && method != "[ngram]")
    fail(ErrorKind::kUnsupported,
         "--speculative-config: method '{}' is not supported (supported: ngram; draft models, "
         "EAGLE and MTP need a second model tessera does not run)",
         method);
  const auto count = [&](const char* key) -> std::optional<int64_t> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    if (!j[key].is_number_integer() || j[key].get<int64_t>() < 1)
      fail("--speculative-config: {} must be a positive integer", key);
    return j[key].get<int64_t>();
  };
  const auto k = count("num_speculative_tokens");
  if (!k) fail("--speculative-config: num_speculative_tokens is required");
  if (*k > 32) fail("--speculative-config: num_speculative_tokens is at most 32, got {}", *k);
  auto n_max = count("prompt_lookup_max"), n_min = count("prompt_lookup_min");
  // vLLM's defaults: both 5, or the one given for both.
  if (!n_max) n_max = n_min.value_or(5);
  if (!n_min) n_min = *n_max;
  if (*n_min > *n_max)
    fail("--speculative-config: prompt_lookup_min {} is above prompt_lookup_max {}", *n_min,
         *n_max);
  args.num_speculative_tokens = *k;
  args.ngram_min = *n_min;
  args.ngram_max = *n_max;
}

GenerationConfig resolve_generation_config(const EngineArgs& args) {
  const bool own_folder = args.generation_config != "auto" && args.generation_config != "vllm";
  if (own_folder && !std::filesystem::is_regular_file(
                        std::filesystem::path(args.generation_config) / "generation_config.json"))
    fail(ErrorKind::kNotFound,
         "--generation-config must be auto, vllm or a folder with a generation_config.json; {} "
         "has none",
         args.generation_config);
  GenerationConfig g = load_generation_config(
      own_folder ? std::filesystem::path(args.generation_config) : args.model);
  if (args.generation_config == "vllm") {
    GenerationConfig ids;
    ids.eos_token_ids = g.eos_token_ids;
    ids.bos_token_id = g.bos_token_id;
    g = ids;
  }
  if (!args.override_generation_config.empty()) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(args.override_generation_config);
    } catch (const nlohmann::json::exception& e) {
      fail("--override-generation-config is not valid JSON: {}", e.what());
    }
    merge_generation_config(g, j, "--override-generation-config");
  }
  return g;
}

std::optional<int64_t> generation_max_tokens_cap(const EngineArgs& args) {
  if (args.generation_config != "auto" && args.generation_config != "vllm")
    return resolve_generation_config(args).max_new_tokens;
  if (args.override_generation_config.empty()) return std::nullopt;
  GenerationConfig only;
  merge_generation_config(only, nlohmann::json::parse(args.override_generation_config),
                          "--override-generation-config");
  return only.max_new_tokens;
}

void EngineArgs::validate() const {
  if (block_size < 1 || block_size > 256 || (block_size & (block_size - 1)) != 0)
    fail("--block-size must be a power of two between 1 and 256, got {}", block_size);
  if (max_num_seqs < 1) fail("--max-num-seqs must be at least 1, got {}", max_num_seqs);
  if (max_num_batched_tokens < 1)
    fail("--max-num-batched-tokens must be at least 1, got {}", max_num_batched_tokens);
  if (gpu_memory_utilization && !(*gpu_memory_utilization > 0 && *gpu_memory_utilization <= 1))
    fail("--gpu-memory-utilization must be in (0, 1], got {}", *gpu_memory_utilization);
  if (kv_cache_memory && *kv_cache_memory <= 0) fail("--kv-cache-memory must be positive");
  if (num_gpu_blocks_override && *num_gpu_blocks_override <= 0)
    fail("--num-gpu-blocks-override must be positive, got {}", *num_gpu_blocks_override);
  if (max_model_len < 0) fail("--max-model-len must be positive, got {}", max_model_len);
  if (threads < 0) fail("--threads must be positive, got {}", threads);
  if (device != "auto" && device != "cpu" && device != "cuda")
    fail("--device must be auto, cpu or cuda, got \"{}\"", device);
  if (tensor_parallel_size < 1)
    fail("--tensor-parallel-size must be at least 1, got {}", tensor_parallel_size);
  if (pipeline_parallel_size < 1)
    fail("--pipeline-parallel-size must be at least 1, got {}", pipeline_parallel_size);
}

KvCachePlan plan_kv_cache(const EngineArgs& args, int64_t device_memory, int64_t weight_bytes,
                          int64_t activation_bytes, int64_t block_bytes, int64_t max_model_len,
                          bool gpu) {
  KvCachePlan plan;
  plan.block_bytes = block_bytes;
  if (args.num_gpu_blocks_override) {
    plan.num_blocks = *args.num_gpu_blocks_override;
    plan.budget_bytes = plan.num_blocks * block_bytes;
    plan.rule = "--num-gpu-blocks-override";
    return plan;
  }
  const double util = args.gpu_memory_utilization.value_or(0.9);
  const int64_t available =
      static_cast<int64_t>(std::floor(util * static_cast<double>(device_memory))) - weight_bytes -
      activation_bytes;
  if (args.kv_cache_memory) {
    plan.budget_bytes = *args.kv_cache_memory;
    plan.rule = "--kv-cache-memory";
  } else if (args.gpu_memory_utilization || gpu) {
    plan.budget_bytes = available;
    plan.rule = fmt::format("--gpu-memory-utilization {} x {:.1f} GiB - weights - activations",
                            util, device_memory / 1073741824.0);
  } else {
    plan.budget_bytes = std::min(kDefaultCpuKvCacheBytes, available);
    plan.rule = "default: min of 4 GiB and 0.9 x memory - weights - activations";
    // A small model would get millions of blocks: keep enough for every sequence at full length,
    // twice over for the prefix cache.
    const int64_t useful =
        2 * args.max_num_seqs * ((max_model_len + args.block_size - 1) / args.block_size);
    if (plan.budget_bytes / block_bytes > useful) {
      plan.budget_bytes = useful * block_bytes;
      plan.rule += fmt::format(", capped at 2 x max-num-seqs x max-model-len");
    }
  }
  if (plan.budget_bytes < block_bytes)
    fail(ErrorKind::kResourceExhausted,
         "no memory left for the KV cache ({} bytes after weights and activations; {} per block)",
         plan.budget_bytes, block_bytes);
  plan.num_blocks = plan.budget_bytes / block_bytes;
  return plan;
}

std::vector<int32_t> eos_token_ids(const ModelConfig& config, const GenerationConfig& generation) {
  std::vector<int32_t> ids = config.eos_token_ids;
  for (int32_t id : generation.eos_token_ids)
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  return ids;
}

EngineInstance::~EngineInstance() = default;

namespace {

// Runs `body` on every rank and makes all of them agree on the outcome: when any rank fails
// (a model folder missing on one node, a configuration that does not divide), every rank throws
// the same error naming the first failing rank, instead of the others waiting for it forever.
template <typename F>
void on_all_ranks(DistributedWorld& world, const char* what, F&& body) {
  std::string error;
  ErrorKind kind = ErrorKind::kInternal;
  try {
    body();
  } catch (const Error& e) {
    error = e.what();
    kind = e.kind();
  }
  Communicator& c = world.world();
  if (c.size() == 1) {
    if (!error.empty()) throw Error(error, kind);
    return;
  }
  constexpr int64_t kLen = 1024;
  Tensor mine = Tensor::zeros({kLen}, DType::kI8);
  char* text = static_cast<char*>(mine.raw());
  if (!error.empty()) {
    text[0] = 1;
    text[1] = static_cast<char>(kind);
    std::snprintf(text + 2, kLen - 2, "%s", error.c_str());
  }
  Tensor all = Tensor::empty({c.size() * kLen}, DType::kI8);
  c.all_gather(mine, all);
  for (int r = 0; r < c.size(); ++r) {
    const char* t = static_cast<const char*>(all.raw()) + r * kLen;
    if (t[0] == 1) {
      spdlog::debug("{} failed on {}", what, world.describe_rank(r));
      fail(static_cast<ErrorKind>(t[1]), "{}{}", c.size() > 1 ? world.describe_rank(r) + ": " : "",
           t + 2);
    }
  }
}

// This process's rank among the ranks of its node (the GPU it takes), from the launcher.
int local_rank() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
    if (const char* v = std::getenv(name); v && *v) return std::max(0, std::atoi(v));
  return 0;
}

// TESSERA_NCCL: 0 never, 1 always (an error where NCCL cannot connect the ranks), unset where
// every rank has a GPU of its own. The same answer on every rank (a collective).
bool use_nccl(DistributedWorld& world, Backend& backend) {
  const char* env = std::getenv("TESSERA_NCCL");
  const std::string mode = env ? env : "";
  if (!mode.empty() && mode != "0" && mode != "1")
    fail("TESSERA_NCCL must be 0 or 1, got \"{}\"", mode);
  if (mode == "0" || !nccl_built()) return false;
  const bool own = ranks_have_own_gpus(world.world(), backend);
  if (mode == "1" && !own)
    fail(ErrorKind::kUnavailable,
         "TESSERA_NCCL=1, but some ranks share a GPU, which NCCL refuses (one rank per GPU, or "
         "unset TESSERA_NCCL to pass tensors through host memory)");
  return own;
}

bool uses_cuda(const EngineArgs& args) {
  return args.device == "cuda" || (args.device == "auto" && cuda_device_count() > 0);
}

std::unique_ptr<Backend> make_backend(const EngineArgs& args, bool cuda, ThreadPool& pool) {
  if (!cuda)
    return std::make_unique<CpuBackend>(pool, cpu::detect_isa(), args.matmul_precision,
                                        args.fp8_weights);
  if (args.fp8_weights)
    fail(ErrorKind::kUnsupported,
         "--quantization fp8 runs on the CPU backend only for now (use --device cpu)");
  CudaBackendOptions options;
  const int devices = cuda_device_count();
  // Ranks of one node take one GPU each, in turn (several share a GPU when there are fewer).
  options.device = devices > 0 ? local_rank() % devices : 0;
  return make_cuda_backend(options);
}

}  // namespace

std::unique_ptr<EngineInstance> EngineInstance::create(const EngineArgs& args,
                                                       TextDecoderFactory text_decoders) {
  args.validate();
  std::unique_ptr<EngineInstance> e(new EngineInstance());
  e->args_ = args;
  DistributedOptions dist;
  dist.tp = args.tensor_parallel_size;
  dist.pp = args.pipeline_parallel_size;
  dist.timeout_s = args.distributed_timeout_s;
  e->world_ = DistributedWorld::create(dist);
  DistributedWorld& world = *e->world_;
  const WorldConfig& wc = world.config();
  const bool multi = wc.world_size > 1;
  // Threads and steps in flight follow from where the ranks run (distributed/placement.h): -pp 2
  // on 2 cores runs one step at a time on 2 threads per stage, 0.93-0.98x of one rank with 2
  // threads serving the small preset at 16 concurrent, where two steps in flight on one thread
  // each ran at 0.78-0.88x (docs/performance.md).
  // Pipeline parallelism keeps steps in flight, each a single micro-batch (below);
  // TESSERA_PP_OVERLAP=0 falls back to pp micro-batches per step, one step at a time, which the
  // stages compute at once.
  const bool gpu = uses_cuda(args);
  const char* overlap_env = std::getenv("TESSERA_PP_OVERLAP");
  const bool pp_overlap = wc.pp > 1 && !(overlap_env && std::string(overlap_env) == "0");
  RankPlacement placement;
  if (multi) {
    // GPU stages compute on their devices, not on the shared cores: they keep pp steps in flight.
    placement = place_rank(wc, gather_rank_cpus(world), args.threads,
                           /*stages_can_take_turns=*/pp_overlap && !gpu);
  } else {
    placement.threads = args.threads > 0 ? args.threads : physical_core_count();
  }
  const int threads = placement.threads;
  e->pool_ = std::make_unique<ThreadPool>(threads);
  e->backend_ = make_backend(args, gpu, *e->pool_);
  Communicator* tp_comm = &world.tp();
  Communicator* pp_comm = &world.pp();
  Communicator* world_comm = &world.world();
  if (gpu) {
    e->staged_world_ = std::make_unique<HostStagedCommunicator>(world.world(), *e->backend_);
    e->staged_tp_ = std::make_unique<HostStagedCommunicator>(world.tp(), *e->backend_);
    e->staged_pp_ = std::make_unique<HostStagedCommunicator>(world.pp(), *e->backend_);
    world_comm = e->staged_world_.get();
    tp_comm = e->staged_tp_.get();
    pp_comm = e->staged_pp_.get();
    // The tensor- and pipeline-parallel groups go GPU to GPU through NCCL where every rank has a
    // GPU of its own. The world group (control bytes, logits to the driver's host) stays on MPI,
    // whose sends do not hold up the stream.
    if (multi && use_nccl(world, *e->backend_)) {
      if (wc.tp > 1) {
        e->nccl_tp_ = make_nccl_communicator(world.tp(), *e->backend_);
        tp_comm = e->nccl_tp_.get();
      }
      if (wc.pp > 1) {
        e->nccl_pp_ = make_nccl_communicator(world.pp(), *e->backend_);
        pp_comm = e->nccl_pp_.get();
      }
      if (wc.is_driver())
        spdlog::info("GPU to GPU: NCCL {} for the tensor- and pipeline-parallel groups",
                     nccl_version());
    } else if (multi && wc.is_driver()) {
      spdlog::info("GPU to GPU: through host memory and MPI ({})",
                   std::getenv("TESSERA_NCCL") ? "TESSERA_NCCL=0"
                                               : "some ranks share a GPU, which NCCL refuses");
    }
  }
  if (wc.is_driver()) spdlog::info("backend: {}", e->backend_->name());
  PipelineStage stage;
  stage.index = wc.pp_rank();
  stage.count = wc.pp;
  stage.partition = args.pp_layer_partition;
  if (stage.partition.empty())
    if (const char* v = std::getenv("VLLM_PP_LAYER_PARTITION")) stage.partition = v;
  e->ctx_ = std::make_unique<ModelContext>(ModelContext{*e->backend_, *tp_comm, stage});

  LoadOptions load;
  load.dtype = args.dtype;
  load.format = args.load_format;
  load.pool = e->pool_.get();
  LoadReport report;
  on_all_ranks(world, "loading the model", [&] {
    e->model_ = load_model(args.model, *e->ctx_, load, &report);
    e->generation_ = resolve_generation_config(args);
  });
  e->load_seconds_ = report.seconds;
  const ModelConfig& config = e->model_->config();
  if (wc.is_driver())
    spdlog::info(
        "loaded {} ({}{}, {} layers) from {}: {:.2f} GB of weights{} in {:.2f} s{}",
        config.architecture, dtype_name(config.dtype),
        config.int_checkpoint()
            ? fmt::format(", {}-bit integer checkpoint ({}){}", config.int_bits, config.int_format,
                          config.int_group_size > 0
                              ? fmt::format(" in groups of {}", config.int_group_size)
                              : std::string(" with a scale per row"))
        : !config.fp8_checkpoint    ? std::string()
        : config.fp8_block_rows > 0 ? fmt::format(", FP8 checkpoint in {} x {} blocks",
                                                  config.fp8_block_rows, config.fp8_block_cols)
                                    : std::string(", FP8 checkpoint"),
        config.num_layers, args.model.string(), e->model_->weight_bytes() / 1e9,
        args.fp8_weights
            ? fmt::format(" ({:.2f} GB with FP8 layers)", e->resident_weight_bytes() / 1e9)
            : std::string(),
        report.seconds,
        report.bytes_read
            ? fmt::format(" ({:.2f} GB read in {:.2f} s at {:.2f} GB/s)", report.bytes_read / 1e9,
                          report.read_seconds,
                          report.bytes_read / 1e9 / std::max(report.read_seconds, 1e-9))
        : args.load_format == LoadFormat::kMmap
            ? std::string(" (memory-mapped: pages are read on first use)")
            : std::string(""));
  if (multi) {
    const Range layers = e->ctx_->owned_layers(config.num_layers);
    spdlog::info(
        "{} on {}: layers [{}, {}) of {}{}{}, {} KV heads, {:.1f} MB of weights ({:.1f} MB read), "
        "{} threads, RSS {:.1f} MB",
        wc.describe(), world.host(wc.rank), layers.begin, layers.end, config.num_layers,
        e->ctx_->owns_embedding() ? ", embedding" : "", e->ctx_->owns_lm_head() ? ", LM head" : "",
        e->model_->kv_heads_local(), e->model_->weight_bytes() / 1e6, report.bytes_read / 1e6,
        threads, current_rss_bytes() / 1e6);
  }

  int64_t max_len = args.max_model_len > 0 ? args.max_model_len : config.max_position_embeddings;
  // A learned position table (GPT-2, OPT) has no rows past its end; rotary positions
  // extrapolate.
  if (config.learned_positions && args.max_model_len > config.max_position_embeddings)
    fail(
        "--max-model-len {} exceeds the {} positions of {}'s learned position table ({} in "
        "config.json)",
        args.max_model_len, config.max_position_embeddings, config.architecture,
        config.arch == Arch::kGpt2 ? "n_positions" : "max_position_embeddings");
  if (args.max_model_len > config.max_position_embeddings && wc.is_driver())
    spdlog::warn("--max-model-len {} exceeds max_position_embeddings {} in config.json",
                 args.max_model_len, config.max_position_embeddings);
  const DType kv_dtype =
      args.kv_cache_dtype.value_or(e->backend_->default_kv_cache_dtype(config.dtype));
  if (!e->backend_->supports_kv_cache_dtype(kv_dtype))
    fail(ErrorKind::kUnsupported, "--kv-cache-dtype {} is not supported on the {} backend",
         kv_cache_dtype_label(kv_dtype), e->backend_->name());
  // The planner's arithmetic (engine/planner.h), so that `tessera plan` predicts this count.
  const KvShape kv_shape{e->model_->num_layers_local(), e->model_->kv_heads_local(),
                         config.head_dim, config.head_dim};
  const int64_t block_bytes =
      kv_block_bytes(kv_shape, args.block_size, static_cast<int64_t>(dtype_size(kv_dtype)));
  int64_t activations = e->model_->activation_bytes(args.max_num_batched_tokens);
  // vLLM's profile run at the scheduler's limits (engine/profile_run.h).
  auto profile_step = [&] {
    ProfileShape shape;
    shape.max_num_batched_tokens = args.max_num_batched_tokens;
    shape.max_num_seqs = args.max_num_seqs;
    shape.max_model_len = max_len;
    shape.block_size = args.block_size;
    shape.kv_dtype = kv_dtype;
    return profile_activations(*e->backend_, *e->model_, wc, shape);
  };
  bool profiled = false;
  on_all_ranks(world, "sizing the KV cache", [&] {
    // On a GPU, what is in use once the weights are there (the CUDA context and workspaces
    // too) stays out of the KV budget.
    const int64_t in_use = std::max(static_cast<int64_t>(e->resident_weight_bytes()),
                                    e->backend_->memory_in_use_bytes());
    // On a GPU the budget leaves free what a profiling step at the scheduler's limits really
    // held (as vLLM does); the CPU keeps the model's estimate, since a step of
    // --max-num-batched-tokens there takes seconds to minutes.
    const bool budget_from_memory = !args.num_gpu_blocks_override && !args.kv_cache_memory;
    if (gpu && budget_from_memory) {
      const ActivationProfile prof = profile_step();
      if (prof.peak_bytes >= 0) {
        if (wc.is_driver())
          spdlog::info(
              "profiling step: {} tokens in {} sequences, then one sequence of {}: activation "
              "peak {:.1f} MiB (the model's estimate: {:.1f} MiB), {:.2f} s",
              prof.tokens, prof.seqs, std::min(prof.tokens, max_len), prof.peak_bytes / 1048576.0,
              activations / 1048576.0, prof.seconds);
        activations = prof.peak_bytes;
        profiled = true;
      }
    }
    e->kv_plan_ = plan_kv_cache(args, e->backend_->memory_capacity_bytes(), in_use, activations,
                                block_bytes, max_len, gpu);
    if (profiled) e->kv_plan_.rule += " (activations: the profiling step's peak)";
  });
  int64_t blocks = e->kv_plan_.num_blocks;
  if (multi) {
    // Every rank must hold every block: the smallest count wins.
    Tensor mine = Tensor::empty({1}, DType::kI64);
    mine.data<int64_t>()[0] = blocks;
    Tensor all = Tensor::empty({wc.world_size}, DType::kI64);
    world.world().all_gather(mine, all);
    for (int r = 0; r < wc.world_size; ++r) blocks = std::min(blocks, all.data<int64_t>()[r]);
    if (blocks != e->kv_plan_.num_blocks)
      e->kv_plan_.rule += fmt::format(", the minimum over {} ranks", wc.world_size);
    e->kv_plan_.num_blocks = blocks;
  }
  const int64_t tokens = blocks * args.block_size;
  if (tokens < max_len) {
    if (args.max_model_len > 0)
      fail(ErrorKind::kResourceExhausted,
           "the KV cache holds {} tokens, fewer than --max-model-len {}: give it more memory "
           "(--kv-cache-memory, --gpu-memory-utilization) or lower --max-model-len",
           tokens, max_len);
    max_len = tokens;  // like vLLM's automatic fallback when the default does not fit
    if (wc.is_driver())
      spdlog::warn("max_model_len lowered to {} tokens to fit the KV cache", max_len);
  }
  e->cache_ = allocate_kv_cache(*e->backend_, *e->model_, blocks, args.block_size, kv_dtype);
  if (wc.is_driver()) {
    spdlog::info("# {} blocks: {}, block size {}, {} per block ({})", gpu ? "GPU" : "CPU", blocks,
                 args.block_size, block_bytes, e->kv_plan_.rule);
    spdlog::info("KV cache size: {} tokens", tokens);
    spdlog::info("Maximum concurrency for {} tokens per request: {:.2f}x", max_len,
                 static_cast<double>(tokens) / static_cast<double>(max_len));
  }

  PipelineLinks links;
  links.world_config = wc;
  links.world = world_comm;
  links.pp = pp_comm;
  e->runner_ = std::make_unique<ModelRunner>(*e->backend_, *e->model_, e->cache_, links);
  // Steps in flight (the sequences split into groups, each scheduled on its own) are each a
  // single micro-batch.
  if (pp_overlap) e->runner_->set_micro_batches(1);
  // TESSERA_PP_GROUPS sets the number of groups (steps in flight); by default pp, or 1 where
  // the stages share cores.
  int groups = pp_overlap ? placement.steps_in_flight : 1;
  if (const char* env = std::getenv("TESSERA_PP_GROUPS"); pp_overlap && env && *env) {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (*end != '\0' || n < 1 || n > kMaxPipelineGroups)
      fail("TESSERA_PP_GROUPS must be a whole number from 1 to {}, got \"{}\"", kMaxPipelineGroups,
           env);
    groups = static_cast<int>(n);
  }
  // CUDA graphs for decode steps, as vLLM captures them: batch sizes 1, 2, 4 and multiples of 8
  // up to --max-num-seqs (at most 512). Only where a step runs on the device alone: one stage,
  // tensor parallelism through NCCL, a model without host decisions (no mixture of experts).
  if (gpu && !args.enforce_eager && wc.pp == 1 && (wc.tp == 1 || e->nccl_tp_) &&
      e->model_->graph_capturable()) {
    std::vector<int> sizes = {1, 2, 4};
    for (int b = 8; b <= std::min<int64_t>(args.max_num_seqs, 512); b += 8) sizes.push_back(b);
    while (sizes.size() > 1 && sizes.back() > args.max_num_seqs) sizes.pop_back();
    on_all_ranks(world, "capturing CUDA graphs", [&] {
      // The recorded steps read the model's buffers: grow them to a full step first, as the
      // profiling step has done unless the KV cache was sized by flags.
      if (!profiled) {
        profile_step();
      }
      const double t0 = now_seconds();
      const std::vector<int> got = e->runner_->capture_decode_steps(sizes, max_len);
      if (wc.is_driver())
        spdlog::info(
            "CUDA graphs: {} decode batch sizes captured ({}) in {:.2f} s", got.size(),
            got.empty() ? std::string("none") : fmt::format("{} to {}", got.front(), got.back()),
            now_seconds() - t0);
    });
  } else if (gpu && wc.is_driver()) {
    spdlog::info("CUDA graphs: off ({})", args.enforce_eager ? "--enforce-eager"
                                          : wc.pp > 1        ? "pipeline parallelism"
                                          : wc.tp > 1 && !e->nccl_tp_
                                              ? "tensor parallelism without NCCL"
                                              : "the model decides on the host between ops");
  }
  const bool taking_turns = pp_overlap && groups == 1 && placement.stages_share_cores && !gpu;
  if (taking_turns) {
    e->runner_->set_shared_cores_pool(e->pool_.get());
    world_comm->set_waits_share_cores(true);
    pp_comm->set_waits_share_cores(true);
  }
  if (pp_overlap && wc.is_driver())
    spdlog::info("pipeline: {} step{} in flight{}", groups, groups == 1 ? "" : "s",
                 placement.stages_share_cores && !gpu
                     ? fmt::format(" (stages share cores: {})",
                                   groups == 1 ? "they take turns, each with all its threads"
                                               : "each has threads of its own")
                     : "");
  if (multi) {
    world.world().barrier();  // every rank is ready before the first step
    if (!wc.is_driver()) {
      run_worker_loop(*e->runner_, world, groups > wc.pp);
      throw WorkerRankFinished{};
    }
    e->executor_ = std::make_unique<DistributedExecutor>(*e->runner_, world);
  }
  EngineConfig ec;
  ec.scheduler.max_num_seqs = args.max_num_seqs;
  ec.scheduler.max_num_batched_tokens = args.max_num_batched_tokens;
  ec.scheduler.max_model_len = max_len;
  ec.scheduler.priority_policy = args.priority_scheduling;
  ec.scheduler.long_prefill_token_threshold = args.long_prefill_token_threshold;
  ec.block_size = args.block_size;
  ec.num_blocks = blocks;
  ec.enable_prefix_caching = args.enable_prefix_caching;
  ec.vocab_size = config.vocab_size;
  ec.max_logprobs = args.max_logprobs < 0 ? config.vocab_size : args.max_logprobs;
  ec.eos_token_ids = eos_token_ids(config, e->generation_);
  ec.virtual_engines = groups;
  if (args.num_speculative_tokens > 0) {
    if (groups > 1)
      fail(ErrorKind::kUnsupported,
           "--speculative-config: speculative decoding needs one step in flight; pipeline "
           "parallelism here runs {} steps in flight (TESSERA_PP_GROUPS=1 runs one)",
           groups);
    ec.scheduler.num_speculative_tokens = args.num_speculative_tokens;
    ec.scheduler.ngram_min = args.ngram_min;
    ec.scheduler.ngram_max = args.ngram_max;
    spdlog::info("speculative decoding: ngram, {} tokens, n-grams of {} to {}",
                 args.num_speculative_tokens, args.ngram_min, args.ngram_max);
  }
  ModelExecutor& executor = e->executor_ ? static_cast<ModelExecutor&>(*e->executor_) : *e->runner_;
  e->engine_ = std::make_unique<LLMEngine>(ec, executor, std::move(text_decoders), e->pool_.get());
  return e;
}

}  // namespace tessera
