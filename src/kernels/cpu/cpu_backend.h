// The CPU backend: AVX-512 (with BF16) kernels where the CPU has them, portable C++ otherwise,
// parallelised over a ThreadPool. One caller at a time (the engine's step loop).
#pragma once

#include <memory>
#include <vector>

#include "core/memory_meter.h"
#include "core/sys.h"

#include "core/thread_pool.h"
#include "kernels/backend.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/ops.h"

namespace tessera {

// How bf16 weights meet f32 activations on CPUs with a bf16 dot product.
enum class MatmulPrecision {
  kExact,  // f32 activations times bf16 weights in f32 FMAs (the default)
  kBf16,   // activations rounded to bf16 first, as PyTorch's bf16 matmul does (same speed)
};

class CpuBackend : public Backend {
 public:
  // fp8_weights: decoder layers' Linear weights are quantized to FP8 E4M3 per output row at load
  // (--quantization fp8; cpu/gemm.h, kLayoutFp8Tiles).
  explicit CpuBackend(ThreadPool& pool, cpu::Isa isa = cpu::detect_isa(),
                      MatmulPrecision precision = MatmulPrecision::kExact,
                      bool fp8_weights = false);
  // With TESSERA_PROFILE=1, prints the time spent in each op when destroyed.
  ~CpuBackend() override;

  Device device() const override { return Device::kCPU; }
  std::string name() const override;
  DType activation_dtype() const override { return DType::kF32; }
  // f32: a 16-bit cache rounds every key and value, and two implementations that differ in the
  // last bits of f32 then round some of them apart, which costs ~1e-2 in logprobs; the exact
  // default keeps results within 1e-4 of float64. --kv-cache-dtype bfloat16 halves the memory.
  DType default_kv_cache_dtype(DType) const override { return DType::kF32; }
  // --kv-cache-dtype fp8: E4M3 codes with scale 1, as vLLM stores them without calibrated
  // scales; a quarter of the f32 cache's bytes.
  bool supports_kv_cache_dtype(DType dtype) const override {
    return dtype == DType::kF8E4M3 || Backend::supports_kv_cache_dtype(dtype);
  }
  ThreadPool& pool() { return pool_; }

  Tensor empty(std::span<const int64_t> shape, DType dtype) override;
  int64_t allocated_bytes() const override { return meter_.in_use(); }
  int64_t peak_allocated_bytes() const override { return meter_.peak(); }
  void reset_peak_allocated() override { meter_.reset_peak(); }
  void copy(const Tensor& src, const Tensor& dst) override;
  void fill_zero(const Tensor& dst) override;
  Tensor prepare_weight(const Tensor& host_weight) override { return host_weight; }
  // bf16 weights on AVX-512: packed for the outer-product kernel (cpu/gemm.h), in place when
  // nothing else holds the tensor. Other dtypes and ISAs: unchanged.
  Tensor prepare_linear_weight(Tensor host_weight) override;
  // With fp8_weights: quantized and packed (any float dtype); else prepare_linear_weight.
  Tensor prepare_layer_weight(Tensor host_weight, std::span<const float> row_absmax) override;
  bool quantizes_layer_weights() const override { return fp8_weights_; }
  // FP8 checkpoints run on the FP8 kernels whatever --quantization says (the codes as stored).
  bool takes_fp8_weights() const override { return true; }
  // Blocks of columns: kLayoutFp8Blocks (cpu/gemm.h).
  Tensor prepare_fp8_layer_weight(const Tensor& codes, const Tensor& scales, int64_t block_cols,
                                  int64_t block_offset) override;
  int64_t quantization_saved_bytes() const override { return quantization_saved_bytes_; }

  void embedding(const Tensor& table, const Tensor& ids, int64_t vocab_start, float scale,
                 const Tensor& out) override;
  void linear(const Tensor& x, std::span<const LinearSegment> segments, const Tensor& out) override;
  void rms_norm(const Tensor& x, const Tensor& weight, float eps, bool unit_offset,
                const Tensor& out) override;
  void rope_table(const Tensor& positions, const Tensor& inv_freq, float attention_scaling,
                  const Tensor& table) override;
  void rope(const Tensor& x, int head_dim, const Tensor& table) override;
  void gated_activation(const Tensor& gate_up, Activation act, const Tensor& out) override;
  void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps,
                  const Tensor& out) override;
  void activation(const Tensor& x, Activation act, const Tensor& out) override;
  void add(const Tensor& a, const Tensor& b, const Tensor& out) override;
  void softcap(const Tensor& x, float cap) override;
  void gather_rows(const Tensor& x, const Tensor& rows, const Tensor& out) override;
  void add_rows_scaled(const Tensor& x, const Tensor& rows, const Tensor& scale,
                       const Tensor& out) override;
  void argmax_rows(const Tensor& x, const Tensor& out) override;
  void write_kv(const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
                const AttentionMetadata& meta) override;
  void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                       const AttentionMetadata& meta, const AttentionParams& params,
                       const Tensor& out) override;

 private:
  enum class Op {
    kEmbedding,
    kLinear,
    kRmsNorm,
    kRopeTable,
    kRope,
    kGatedActivation,
    kAdd,
    kLayerNorm,
    kActivation,
    kSoftcap,
    kGatherRows,
    kAddRowsScaled,
    kWriteKv,
    kPagedAttention,
    kCount
  };
  static constexpr int kNumOps = static_cast<int>(Op::kCount);
  struct Profile {
    struct Entry {
      int64_t calls = 0;
      double seconds = 0;
    };
    Entry entries[kNumOps];
  };
  // Adds the op's wall time to the profile, when profiling.
  class OpTimer {
   public:
    OpTimer(const std::unique_ptr<Profile>& p, Op op)
        : p_(p.get()), op_(op), t0_(p_ ? now_seconds() : 0) {}
    ~OpTimer() {
      if (!p_) return;
      auto& e = p_->entries[static_cast<int>(op_)];
      ++e.calls;
      e.seconds += now_seconds() - t0_;
    }

   private:
    Profile* p_;
    Op op_;
    double t0_;
  };
  static const char* op_name(Op op);

  std::unique_ptr<Profile> profile_;
  ThreadPool& pool_;
  cpu::Isa isa_;
  cpu::GemmKernels gemm_;
  cpu::OpsKernels ops_;
  MatmulPrecision precision_;
  bool fp8_weights_;
  int64_t quantization_saved_bytes_ = 0;
  MemoryMeter meter_;                             // the tensors empty() made
  std::vector<float> act_;                        // [tiles, k, tile_rows] activations (pack_tiles)
  std::vector<std::vector<uint16_t>> packed_;     // per segment: bf16 weights packed per call
  std::vector<std::vector<float>> attn_scratch_;  // per thread
};

}  // namespace tessera
