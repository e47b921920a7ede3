// Runs a model directly, one sequence or several, without the scheduler: for logit tests.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "engine/model_runner.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/make_model.h"
#include "model/model.h"

namespace tessera::testing {

// A unique empty folder under the test temp dir.
inline std::filesystem::path temp_dir(const std::string& name) {
  static int counter = 0;
  std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) /
      ("tessera_" + name + "_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

inline std::filesystem::path make_tiny(const std::string& arch, DType dtype, uint64_t seed = 7,
                                       nlohmann::json override = nlohmann::json::object(),
                                       uint64_t shard_bytes = 0,
                                       const std::string& checkpoint_quantization = "") {
  MakeModelOptions o;
  o.checkpoint_quantization = checkpoint_quantization;
  o.arch = arch;
  o.preset = "tiny";
  o.dtype = dtype;
  o.seed = seed;
  o.config_override = std::move(override);
  o.max_shard_bytes = shard_bytes;
  o.out = temp_dir(arch);
  ThreadPool pool(2);
  make_model(o, pool);
  return o.out;
}

// Deterministic pseudo-random token ids in [1, vocab).
inline std::vector<int32_t> test_ids(int n, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> ids(n);
  uint64_t s = seed * 2654435761u + 1;
  for (auto& id : ids) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    id = static_cast<int32_t>(1 + (s >> 33) % (vocab - 1));
  }
  return ids;
}

// One model with a KV cache; sequences are given contiguous block ranges.
class DirectRunner {
 public:
  // kv_dtype: the KV cache dtype (default: the backend's choice for the model).
  explicit DirectRunner(const std::filesystem::path& dir, std::optional<DType> kv_dtype = {},
                        int threads = 2, int64_t blocks = 512, cpu::Isa isa = cpu::detect_isa(),
                        MatmulPrecision precision = MatmulPrecision::kExact,
                        LoadFormat format = LoadFormat::kAuto)
      : pool_(threads),
        backend_(std::make_unique<CpuBackend>(pool_, isa, precision)),
        ctx_{*backend_, comm_} {
    load(dir, kv_dtype, blocks, format);
  }
  // The same on a backend of the caller's (e.g. the CUDA backend).
  DirectRunner(const std::filesystem::path& dir, std::unique_ptr<Backend> backend,
               std::optional<DType> kv_dtype = {}, int64_t blocks = 512)
      : pool_(2), backend_(std::move(backend)), ctx_{*backend_, comm_} {
    load(dir, kv_dtype, blocks, LoadFormat::kAuto);
  }
  const ModelConfig& config() const { return model_->config(); }
  DType kv_dtype() const { return kv_dtype_; }
  ModelRunner& runner() { return *runner_; }

  struct Chunk {
    int seq;                      // sequence slot (owns blocks [seq * 32, seq * 32 + 32))
    std::vector<int32_t> tokens;  // the sequence's full token list so far
    int64_t begin, end;           // compute tokens [begin, end)
    bool all_rows;                // logits for every computed row, else the last only
  };

  // Runs the chunks as one batch; returns logits [rows, vocab] in chunk order.
  Tensor run(const std::vector<Chunk>& chunks) {
    StepInputs in;
    in.query_start.push_back(0);
    in.max_blocks = 32;
    for (const Chunk& c : chunks) {
      for (int64_t p = c.begin; p < c.end; ++p) {
        in.token_ids.push_back(c.tokens[p]);
        in.positions.push_back(static_cast<int32_t>(p));
        in.slot_mapping.push_back(static_cast<int32_t>((c.seq * 32 + p / 16) * 16 + p % 16));
        if (c.all_rows || p == c.end - 1)
          in.logit_rows.push_back(static_cast<int32_t>(in.token_ids.size() - 1));
      }
      in.query_start.push_back(static_cast<int32_t>(in.token_ids.size()));
      in.seq_lens.push_back(static_cast<int32_t>(c.end));
      for (int b = 0; b < 32; ++b) in.block_tables.push_back(c.seq * 32 + b);
    }
    return runner_->execute(in);
  }

 private:
  void load(const std::filesystem::path& dir, std::optional<DType> kv_dtype, int64_t blocks,
            LoadFormat format) {
    LoadOptions options;
    options.format = format;
    options.pool = &pool_;
    model_ = load_model(dir, ctx_, options);
    kv_dtype_ = kv_dtype.value_or(backend_->default_kv_cache_dtype(model_->config().dtype));
    cache_ = allocate_kv_cache(*backend_, *model_, blocks, 16, kv_dtype_);
    runner_ = std::make_unique<ModelRunner>(*backend_, *model_, cache_);
  }

  ThreadPool pool_;
  std::unique_ptr<Backend> backend_;
  SingleCommunicator comm_;
  ModelContext ctx_;
  std::unique_ptr<CausalLM> model_;
  DType kv_dtype_;
  KVCache cache_;
  std::unique_ptr<ModelRunner> runner_;
};

// Every sequence from its first token, with every row's logits: a batch of prefills.
inline std::vector<DirectRunner::Chunk> prefill_chunks(
    const std::vector<std::vector<int32_t>>& seqs) {
  std::vector<DirectRunner::Chunk> chunks;
  for (size_t s = 0; s < seqs.size(); ++s)
    chunks.push_back({static_cast<int>(s), seqs[s], 0, static_cast<int64_t>(seqs[s].size()), true});
  return chunks;
}

// A decode step of the `active` sequences: each gets a next token (a deterministic function of
// its length, not a model's choice, so that two runs compared see the same inputs) and computes
// it alone, returning its logits row.
inline std::vector<DirectRunner::Chunk> decode_step(std::vector<std::vector<int32_t>>& seqs,
                                                    const std::vector<int>& active, int64_t vocab) {
  std::vector<DirectRunner::Chunk> decode;
  for (int s : active) {
    seqs[s].push_back(static_cast<int32_t>((seqs[s].size() * 31 + s) % vocab));
    const int64_t n = static_cast<int64_t>(seqs[s].size());
    decode.push_back({s, seqs[s], n - 1, n, false});
  }
  return decode;
}

// "llama_BF16": the test name of an (architecture, dtype) parameter.
struct ArchDtypeName {
  template <class Info>
  std::string operator()(const Info& info) const {
    return info.param.first + "_" + std::string(dtype_name(info.param.second));
  }
};

// log_softmax of a logits row.
inline std::vector<double> log_softmax(const float* row, int64_t n) {
  double m = row[0];
  for (int64_t i = 1; i < n; ++i) m = std::max<double>(m, row[i]);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(row[i] - m);
  std::vector<double> out(n);
  for (int64_t i = 0; i < n; ++i) out[i] = row[i] - m - std::log(s);
  return out;
}

}  // namespace tessera::testing
