#include "apps/cli/engine_flags.h"

#include <unistd.h>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "core/logging.h"
#include "core/status.h"
#include "core/thread_pool.h"
#include "distributed/world.h"
#include "model/make_model.h"
#include "tokenizer/tokenizer.h"

namespace tessera::cli {

namespace fs = std::filesystem;

void add_engine_flags(CLI::App* cmd, EngineFlags& f, bool model_positional) {
  if (model_positional) cmd->add_option("model_tag", f.model, "Model folder (or 'default')");
  cmd->add_option("--model", f.model,
                  "Hugging Face model folder, or 'default' for the built-in random-weight model")
      ->capture_default_str();
  cmd->add_option("--tokenizer", f.tokenizer,
                  "Folder of the tokenizer files (tokenizer.json, tokenizer_config.json, chat "
                  "template) when they are not in the model folder");
  cmd->add_option("--generation-config", f.generation_config,
                  "auto (sampling defaults from the model's generation_config.json), vllm (none "
                  "from it) or a folder with a generation_config.json")
      ->capture_default_str();
  cmd->add_option("--override-generation-config", f.override_generation_config,
                  "JSON object of generation_config.json keys set on top, e.g. "
                  "'{\"temperature\": 0.5}'");
  cmd->add_option("--max-logprobs", f.max_logprobs,
                  "Most logprobs, top_logprobs or prompt_logprobs a request may ask for (-1: the "
                  "whole vocabulary)")
      ->capture_default_str();
  cmd->add_option("--long-prefill-token-threshold", f.long_prefill_token_threshold,
                  "Most prompt tokens one request runs per step (0: up to the token budget)")
      ->capture_default_str();
  cmd->add_option("--prefix-caching-hash-algo", f.prefix_caching_hash_algo,
                  "Accepted for vLLM compatibility: blocks are matched by their tokens, so the "
                  "hash only finds candidates")
      ->check(CLI::IsMember({"builtin", "sha256", "sha256_cbor", "sha256_cbor_64bit"}))
      ->capture_default_str();
  cmd->add_option("--speculative-config", f.speculative_config,
                  "Speculative decoding, as JSON: '{\"method\": \"ngram\", "
                  "\"num_speculative_tokens\": 4, \"prompt_lookup_max\": 4}'");
  cmd->add_option("--scheduling-policy", f.scheduling_policy,
                  "fcfs (first come, first served) or priority (by the requests' `priority`, "
                  "lower first, then arrival)")
      ->check(CLI::IsMember({"fcfs", "priority"}))
      ->capture_default_str();
  cmd->add_option("--dtype", f.dtype, "auto, bfloat16, float16, float32 (auto: as stored)")
      ->capture_default_str();
  cmd->add_option("--kv-cache-dtype", f.kv_cache_dtype,
                  "auto (f32 on CPU, the model's dtype on GPU), fp8 (E4M3, CPU; a quarter of f32's "
                  "bytes), bfloat16, float16, float32")
      ->capture_default_str();
  cmd->add_option("--threads", f.threads, "CPU threads (default: physical cores)");
  cmd->add_option("--max-model-len", f.max_model_len,
                  "Longest prompt + output (default: config.json)");
  cmd->add_option("--block-size", f.block_size, "Tokens per KV cache block")->capture_default_str();
  cmd->add_option("--kv-cache-memory", f.kv_cache_memory, "KV cache budget, e.g. 4GiB");
  cmd->add_option("--gpu-memory-utilization", f.gpu_memory_utilization,
                  "Share of device memory (RAM on CPU) for weights, activations and KV cache");
  cmd->add_option("--num-gpu-blocks-override", f.num_gpu_blocks_override, "Fix the KV block count");
  cmd->add_option("--max-num-seqs", f.max_num_seqs, "Sequences per step")->capture_default_str();
  cmd->add_option("--max-num-batched-tokens", f.max_num_batched_tokens,
                  "Tokens per step (chunked prefill budget)")
      ->capture_default_str();
  cmd->add_flag("--enable-prefix-caching,!--no-enable-prefix-caching", f.enable_prefix_caching,
                "Reuse KV blocks of identical prefixes (default on)");
  cmd->add_option("--load-format", f.load_format,
                  "auto/safetensors (read into memory), mmap (zero copy), dummy (random weights)")
      ->capture_default_str();
  cmd->add_option("--cpu-matmul-precision", f.matmul_precision,
                  "exact (f32 activations times bf16 weights, default) or bf16 (activations "
                  "rounded to bf16 first, as PyTorch and llama.cpp do; same speed)")
      ->check(CLI::IsMember({"exact", "bf16"}))
      ->capture_default_str();
  cmd->add_option("--quantization,-q", f.quantization,
                  "none, or fp8: decoder layers' weights in FP8 E4M3 with a scale per output "
                  "row, quantized at load (the embedding and LM head stay as stored)");
  cmd->add_option("--device", f.device,
                  "auto (a GPU when this build has CUDA and one is usable, else the CPU), cpu or "
                  "cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_flag("--enforce-eager", f.enforce_eager,
                "Run decode steps op by op: capture no CUDA graphs");
  cmd->add_option("--tensor-parallel-size", f.tensor_parallel_size,
                  "Ranks per pipeline stage, each with 1/tp of every layer (-tp)")
      ->capture_default_str();
  cmd->add_option("--pipeline-parallel-size", f.pipeline_parallel_size,
                  "Pipeline stages, each with a contiguous range of layers (-pp)")
      ->capture_default_str();
  cmd->add_option("--distributed-executor-backend", f.distributed_executor_backend,
                  "mp or mpi: both start the ranks with MPI (ray is not supported)");
  cmd->add_option("--pp-layer-partition", f.pp_layer_partition,
                  "Layers per stage, e.g. 5,4,3 (default: env VLLM_PP_LAYER_PARTITION, else "
                  "vLLM's split)");
  cmd->add_option("--distributed-timeout", f.distributed_timeout,
                  "Seconds a rank waits for a peer inside a step before stopping the job")
      ->capture_default_str();
  cmd->add_option("--seed", f.seed, "Seed for sampling (requests without their own seed)")
      ->capture_default_str();
}

int64_t parse_bytes(const std::string& text, const std::string& flag) {
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  std::string unit = end ? std::string(end) : "";
  double scale = 1;
  if (unit == "" || unit == "B")
    scale = 1;
  else if (unit == "K" || unit == "KB")
    scale = 1e3;
  else if (unit == "M" || unit == "MB")
    scale = 1e6;
  else if (unit == "G" || unit == "GB")
    scale = 1e9;
  else if (unit == "T" || unit == "TB")
    scale = 1e12;
  else if (unit == "KiB" || unit == "k")
    scale = 1024.0;
  else if (unit == "MiB")
    scale = 1048576.0;
  else if (unit == "GiB")
    scale = 1073741824.0;
  else if (unit == "TiB")
    scale = 1099511627776.0;
  else
    fail("{}: cannot read \"{}\" as a size (e.g. 4GiB, 512MiB, 2G)", flag, text);
  if (end == text.c_str() || !(v > 0) || !std::isfinite(v))
    fail("{}: \"{}\" is not a positive size", flag, text);
  return static_cast<int64_t>(v * scale);
}

namespace {

// Re-executes this process's own command line as `mpirun -np RANKS <it>` (one node); the ranks
// then find themselves launched and join. Does not return.
[[noreturn]] void relaunch_under_mpi(int ranks) {
  if (!mpi_available())
    fail(ErrorKind::kUnsupported,
         "{} ranks are needed (tensor x pipeline parallel), but this build of tessera has no MPI: "
         "install libopenmpi-dev and openmpi-bin and rebuild",
         ranks);
#if TESSERA_HAVE_MPI
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), {});
  std::vector<std::string> args;
  std::string cur;
  for (char ch : all) {
    if (ch == '\0') {
      args.push_back(cur);
      cur.clear();
    } else {
      cur += ch;
    }
  }
  if (args.empty()) fail(ErrorKind::kInternal, "cannot read /proc/self/cmdline");
  std::vector<std::string> cmd = {TESSERA_MPIEXEC,   "-np",       std::to_string(ranks),
                                  "--oversubscribe", "--bind-to", "none"};
  if (geteuid() == 0) cmd.push_back("--allow-run-as-root");
  // One node: the ranks talk through shared memory with OpenMPI's ob1 layer, which it picks here
  // anyway after probing UCX; naming it skips the probe (a 2-rank job starts in 0.14 s instead of
  // 0.36). An OMPI_MCA_pml in the environment still decides.
  if (std::getenv("OMPI_MCA_pml") == nullptr) cmd.insert(cmd.end(), {"--mca", "pml", "ob1"});
  // Our own path, not argv[0]: the ranks must run this very binary.
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  const std::string binary = ec ? args[0] : self.string();
  cmd.push_back(binary);
  cmd.insert(cmd.end(), args.begin() + 1, args.end());
  spdlog::info("starting {} ranks: {} -np {} {} ...", ranks, TESSERA_MPIEXEC, ranks, binary);
  std::vector<char*> argv;
  for (auto& s : cmd) argv.push_back(s.data());
  argv.push_back(nullptr);
  std::fflush(nullptr);
  execv(TESSERA_MPIEXEC, argv.data());
  fail(ErrorKind::kUnavailable, "cannot start {}: {}", TESSERA_MPIEXEC, std::strerror(errno));
#endif
}

std::optional<DType> parse_dtype_flag(const std::string& s, const char* flag) {
  if (s == "auto") return std::nullopt;
  DType d;
  if (!parse_torch_dtype(s, &d))
    fail("{} must be auto, bfloat16, float16 or float32, got \"{}\"", flag, s);
  return d;
}
}  // namespace

EngineArgs to_engine_args(const EngineFlags& f) {
  EngineArgs a;
  a.model = resolve_model(f.model);
  if (!f.tokenizer.empty()) {
    a.tokenizer = f.tokenizer;
    if (!fs::is_directory(a.tokenizer))
      fail(ErrorKind::kNotFound, "--tokenizer: {} is not a folder", f.tokenizer);
    if (!tokenizer::has_tokenizer(a.tokenizer))
      fail(ErrorKind::kNotFound,
           "--tokenizer: {} has no tokenizer.json, vocab.json + merges.txt or tokenizer.model",
           f.tokenizer);
  }
  a.generation_config = f.generation_config;
  a.override_generation_config = f.override_generation_config;
  if (f.max_logprobs < -1) fail("--max-logprobs must be -1 (no limit) or at least 0");
  a.max_logprobs = f.max_logprobs;
  a.priority_scheduling = f.scheduling_policy == "priority";
  if (f.long_prefill_token_threshold < 0) fail("--long-prefill-token-threshold must be >= 0");
  a.long_prefill_token_threshold = f.long_prefill_token_threshold;
  if (!f.speculative_config.empty()) apply_speculative_config(f.speculative_config, a);
  a.dtype = parse_dtype_flag(f.dtype, "--dtype");
  a.kv_cache_dtype = parse_kv_cache_dtype(f.kv_cache_dtype);
  a.threads = f.threads;
  a.max_model_len = f.max_model_len;
  a.block_size = f.block_size;
  if (!f.kv_cache_memory.empty())
    a.kv_cache_memory = parse_bytes(f.kv_cache_memory, "--kv-cache-memory");
  if (f.gpu_memory_utilization != 0) a.gpu_memory_utilization = f.gpu_memory_utilization;
  if (f.num_gpu_blocks_override != 0) a.num_gpu_blocks_override = f.num_gpu_blocks_override;
  a.max_num_seqs = f.max_num_seqs;
  a.max_num_batched_tokens = f.max_num_batched_tokens;
  a.enable_prefix_caching = f.enable_prefix_caching;
  a.seed = f.seed;
  a.load_format = parse_load_format(f.load_format);
  a.matmul_precision =
      f.matmul_precision == "bf16" ? MatmulPrecision::kBf16 : MatmulPrecision::kExact;
  a.device = f.device;
  a.enforce_eager = f.enforce_eager;
  if (f.quantization == "fp8") {
    a.fp8_weights = true;
  } else if (!f.quantization.empty() && f.quantization != "none") {
    fail(ErrorKind::kUnsupported,
         "--quantization {} is not supported (supported: fp8, none); pre-quantized checkpoints "
         "(AWQ, GPTQ, compressed-tensors) are not read yet",
         f.quantization);
  }
  const std::string& backend = f.distributed_executor_backend;
  if (backend == "ray")
    fail(ErrorKind::kUnsupported,
         "--distributed-executor-backend ray is not supported: tessera starts its ranks with MPI "
         "(use mp or mpi, or leave it out)");
  if (!backend.empty() && backend != "mp" && backend != "mpi" && backend != "uni")
    fail("--distributed-executor-backend must be mp, mpi or uni, got \"{}\"", backend);
  if (f.tensor_parallel_size < 1)
    fail("--tensor-parallel-size must be at least 1, got {}", f.tensor_parallel_size);
  if (f.pipeline_parallel_size < 1)
    fail("--pipeline-parallel-size must be at least 1, got {}", f.pipeline_parallel_size);
  if (!(f.distributed_timeout > 0)) fail("--distributed-timeout must be positive");
  a.tensor_parallel_size = f.tensor_parallel_size;
  a.pipeline_parallel_size = f.pipeline_parallel_size;
  a.pp_layer_partition = f.pp_layer_partition;
  a.distributed_timeout_s = f.distributed_timeout;
  const int ranks = a.tensor_parallel_size * a.pipeline_parallel_size;
  if (ranks > 1 && launcher_world_size() == 0) relaunch_under_mpi(ranks);
  return a;
}

fs::path resolve_model(const std::string& model) {
  if (model != "default") return fs::path(model);
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  const char* home = std::getenv("HOME");
  fs::path base = xdg && *xdg ? fs::path(xdg) : fs::path(home ? home : "/tmp") / ".cache";
  // The folder name carries a version so that a change of the default regenerates it.
  fs::path dir = base / "tessera" / "models" / "default-v3";
  if (fs::exists(dir / "config.json")) return dir;
  spdlog::info(
      "creating the built-in default model (random weights, Llama 'small' shapes, built-in "
      "tokenizer) in {}",
      dir.string());
  MakeModelOptions options;
  options.arch = "llama";
  options.preset = "small";
  options.out = dir.string() + ".tmp." + std::to_string(getpid());
  options.dtype = DType::kBF16;
  ThreadPool pool(physical_core_count());
  make_model(options, pool);
  // Atomic: a concurrent first run never sees half a model; if another run won, keep its copy.
  std::error_code ec;
  fs::rename(options.out, dir, ec);
  if (ec) fs::remove_all(options.out);
  return dir;
}

}  // namespace tessera::cli
