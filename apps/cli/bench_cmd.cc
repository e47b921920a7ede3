// tessera bench latency: prefill and decode speed of one batch, like `vllm bench latency`.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>

#include "apps/cli/commands.h"
#include "apps/cli/engine_flags.h"
#include "core/logging.h"
#include "core/status.h"
#include "core/sys.h"
#include "core/tensor.h"
#include "core/thread_pool.h"

namespace tessera::cli {

namespace {

struct LatencyFlags {
  EngineFlags engine;
  int64_t input_len = 512, output_len = 128, batch_size = 1;
  int iters = 3, warmup = 1;
  bool json = false;
  bool stream_baseline = false;
};

// The memory bandwidth baseline for decode, measured in the same run: the best of 5 passes
// reading `bytes` of memory allocated like the weights (Tensor::empty) and written
// first so that it is resident, with `threads` threads summing 64-bit words.
double stream_read_rate(size_t bytes, int threads) {
  const int64_t words = static_cast<int64_t>(bytes / sizeof(uint64_t));
  Tensor buf = Tensor::empty({words}, DType::kI64);
  uint64_t* data = static_cast<uint64_t*>(buf.raw());
  ThreadPool pool(threads);
  pool.parallel_for(words, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) data[i] = static_cast<uint64_t>(i);
  });
  std::atomic<uint64_t> sum{0};
  double best = 0;
  for (int pass = 0; pass < 5; ++pass) {
    const double t0 = now_seconds();
    pool.parallel_for(words, [&](int64_t b, int64_t e) {
      // Eight interleaved streams with a software prefetch 1 KB ahead in each, as the decode
      // kernel reads its weight tiles: one sequential stream per thread leaves bandwidth unused.
      constexpr int kStreams = 8;
      constexpr int64_t kAhead = 1024 / sizeof(uint64_t), kStep = 8;  // 64-byte lines
      const int64_t part = (e - b) / kStreams / kStep * kStep;
      uint64_t acc[kStreams] = {};
      for (int64_t off = 0; off < part; off += kStep) {
        for (int st = 0; st < kStreams; ++st) {
          const uint64_t* p = data + b + st * part + off;
          __builtin_prefetch(p + kAhead);
          acc[st] += p[0] + p[1] + p[2] + p[3] + p[4] + p[5] + p[6] + p[7];
        }
      }
      uint64_t total = 0;
      for (uint64_t a : acc) total += a;
      for (int64_t i = b + kStreams * part; i < e; ++i) total += data[i];
      sum += total;
    });
    best = std::max(best, static_cast<double>(words) * sizeof(uint64_t) / (now_seconds() - t0));
  }
  if (sum.load() == 1) std::fprintf(stderr, " ");  // the sum is used, so the reads stay
  return best;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void run_latency(const LatencyFlags& f) {
  if (f.input_len < 1 || f.output_len < 2 || f.batch_size < 1 || f.iters < 1 || f.warmup < 0)
    fail(
        "bench latency needs --input-len >= 1, --output-len >= 2, --batch-size >= 1, --num-iters "
        ">= 1");
  EngineArgs args = to_engine_args(f.engine);
  if (args.max_model_len == 0) args.max_model_len = f.input_len + f.output_len;
  std::unique_ptr<EngineInstance> instance = EngineInstance::create(args);
  LLMEngine& engine = instance->engine();
  const ModelConfig& config = instance->model_config();

  std::vector<double> prefill_tps, decode_tps, prefill_s, decode_s;
  std::mt19937 rng(1234);
  for (int it = 0; it < f.warmup + f.iters; ++it) {
    SamplingParams p;
    p.temperature = 0;
    p.max_tokens = f.output_len;
    p.ignore_eos = true;
    // Fresh random prompts every time, so the prefix cache never helps; dropping the previous
    // iteration's blocks from it lets this one reuse their memory instead of committing more
    // (peak memory then counts one iteration's KV cache, not all of them).
    engine.reset_prefix_cache();
    for (int64_t b = 0; b < f.batch_size; ++b) {
      std::vector<int32_t> prompt(f.input_len);
      for (auto& t : prompt) t = static_cast<int32_t>(rng() % config.vocab_size);
      engine.add_request(fmt::format("bench-{}-{}", it, b), std::move(prompt), p);
    }
    const double t0 = now_seconds();
    double t_first = 0;
    int64_t started = 0;
    while (engine.has_unfinished()) {
      for (const RequestOutput& out : engine.step())
        if (out.num_output_tokens == static_cast<int64_t>(out.new_token_ids.size()) &&
            !out.new_token_ids.empty())
          ++started;
      if (t_first == 0 && started == f.batch_size) t_first = now_seconds();
    }
    const double t_end = now_seconds();
    if (it < f.warmup) continue;
    prefill_s.push_back(t_first - t0);
    decode_s.push_back(t_end - t_first);
    prefill_tps.push_back(static_cast<double>(f.batch_size * f.input_len) / (t_first - t0));
    decode_tps.push_back(static_cast<double>(f.batch_size * (f.output_len - 1)) /
                         (t_end - t_first));
  }
  // Bytes a decode step streams: every weight but the embedding table (one row is read).
  const int64_t embed_bytes =
      config.tie_word_embeddings
          ? 0
          : config.vocab_size * config.hidden_size * static_cast<int64_t>(dtype_size(config.dtype));
  const double streamed =
      static_cast<double>(instance->resident_weight_bytes()) - static_cast<double>(embed_bytes);
  const double decode_steps_per_s = median(decode_tps) / static_cast<double>(f.batch_size);
  nlohmann::json j = {
      {"model", args.model.string()},
      {"backend", instance->backend_name()},
      {"batch_size", f.batch_size},
      {"input_len", f.input_len},
      {"output_len", f.output_len},
      {"num_iters", f.iters},
      {"prefill_tokens_per_s", median(prefill_tps)},
      {"decode_tokens_per_s", median(decode_tps)},
      {"prefill_seconds", median(prefill_s)},
      {"decode_seconds", median(decode_s)},
      {"decode_weight_gb_per_s", streamed * decode_steps_per_s / 1e9},
      {"weight_bytes", instance->weight_bytes()},
      {"kv_cache_bytes", instance->kv_plan().num_blocks * instance->kv_plan().block_bytes},
      {"load_seconds", instance->load_seconds()},
      {"peak_rss_bytes", peak_rss_bytes()},
      {"all_prefill_tokens_per_s", prefill_tps},
      {"all_decode_tokens_per_s", decode_tps}};
  // After the peak memory was read: the baseline's buffer is as large as the streamed weights
  // (at most 2 GiB), so that caches hold the same share of it.
  double stream = 0;
  if (f.stream_baseline) {
    const int threads = f.engine.threads > 0 ? f.engine.threads : physical_core_count();
    stream =
        stream_read_rate(std::min<size_t>(static_cast<size_t>(streamed), size_t{2} << 30), threads);
    j["stream_read_gb_per_s"] = stream / 1e9;
    j["decode_bandwidth_utilisation"] = streamed * decode_steps_per_s / stream;
  }
  if (f.json) {
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("backend:            %s\n", instance->backend_name().c_str());
  std::printf("model load:         %.2f s, %.2f GB of weights\n", instance->load_seconds(),
              instance->weight_bytes() / 1e9);
  std::printf("prefill:            %.1f tokens/s (median of %d; %.3f s for %lld x %lld tokens)\n",
              median(prefill_tps), f.iters, median(prefill_s), static_cast<long long>(f.batch_size),
              static_cast<long long>(f.input_len));
  std::printf("decode:             %.1f tokens/s (median; %.3f s for %lld steps)\n",
              median(decode_tps), median(decode_s), static_cast<long long>(f.output_len - 1));
  std::printf("decode weight read: %.1f GB/s\n", streamed * decode_steps_per_s / 1e9);
  std::printf("peak memory:        %.2f GB resident\n", j["peak_rss_bytes"].get<double>() / 1e9);
  if (f.stream_baseline)
    std::printf("stream read:        %.1f GB/s (%d threads, %.2f GB, same run): decode at %.0f%%\n",
                stream / 1e9, f.engine.threads > 0 ? f.engine.threads : physical_core_count(),
                std::min(streamed, 2147483648.0) / 1e9,
                100 * streamed * decode_steps_per_s / stream);
}

}  // namespace

void add_bench_command(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks (latency; serve)");
  bench->require_subcommand(1);
  auto f = std::make_shared<LatencyFlags>();
  CLI::App* latency = bench->add_subcommand("latency", "Prefill and decode speed of one batch");
  add_engine_flags(latency, f->engine);
  latency->add_option("--input-len", f->input_len, "Prompt tokens")->capture_default_str();
  latency->add_option("--output-len", f->output_len, "Generated tokens")->capture_default_str();
  latency->add_option("--batch-size", f->batch_size, "Sequences at once")->capture_default_str();
  latency->add_option("--num-iters", f->iters, "Measured iterations")->capture_default_str();
  latency->add_option("--num-iters-warmup", f->warmup, "Unmeasured iterations first")
      ->capture_default_str();
  latency->add_flag("--json", f->json, "Print one JSON object");
  latency->add_flag("--stream-baseline", f->stream_baseline,
                    "Also measure the memory read rate (a buffer the size of the weights) and "
                    "report decode's share of it");
  latency->callback([f] { run_latency(*f); });
  add_bench_serve_command(*bench);
}

}  // namespace tessera::cli
