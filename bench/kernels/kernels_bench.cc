// CPU kernel throughput: the linear layer at decode (1 row, memory bound: reports GB/s of weights
// read) and prefill (512 rows, compute bound: reports GFLOP/s), beside a plain streaming read of
// the same bytes (the bandwidth baseline, measured in the same run).
//   build/bench/kernels/kernels_bench --benchmark_filter=Linear
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include "core/thread_pool.h"
#include "kernels/cpu/cpu_backend.h"
#include "test_util.h"

namespace tessera {
namespace {

int bench_threads() {
  return physical_core_count();
}

// Sum of all bytes of a buffer, split across the pool: the read bandwidth the GEMV can hope for.
void BM_StreamRead(benchmark::State& state) {
  const int64_t bytes = state.range(0) << 20;
  Tensor buf = testing::random_tensor({bytes / 4}, DType::kF32, 1);
  ThreadPool pool(bench_threads());
  for (auto _ : state) {
    std::vector<float> sums(pool.size());
    pool.parallel_for(bytes / 64, [&](int64_t b, int64_t e) {
      __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
      const float* p = buf.data<float>();
      int64_t i = b;
      for (; i + 4 <= e; i += 4) {
        acc0 = _mm512_add_ps(acc0, _mm512_loadu_ps(p + i * 16));
        acc1 = _mm512_add_ps(acc1, _mm512_loadu_ps(p + i * 16 + 16));
        acc2 = _mm512_add_ps(acc2, _mm512_loadu_ps(p + i * 16 + 32));
        acc3 = _mm512_add_ps(acc3, _mm512_loadu_ps(p + i * 16 + 48));
      }
      benchmark::DoNotOptimize(acc0 + acc1 + acc2 + acc3);
    });
  }
  state.SetBytesProcessed(state.iterations() * bytes);
}
// 256 MiB and 2 GiB: the second is larger than any L3 (this machine reports 260 MiB), like a
// model's weights.
BENCHMARK(BM_StreamRead)->Arg(256)->Arg(2048)->UseRealTime();

// A stack of `layers` [n, k] bf16 weights, larger than the caches, multiplied in turn.
void BM_Linear(benchmark::State& state) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const DType dtype = state.range(3) == 0 ? DType::kBF16 : DType::kF32;
  const int layers =
      static_cast<int>(std::max<int64_t>(1, (256ll << 20) / (n * k * dtype_size(dtype))));
  ThreadPool pool(bench_threads());
  CpuBackend backend(pool);
  // Prepared as the model loader prepares them (bf16: packed for the outer-product kernel).
  std::vector<Tensor> weights;
  for (int l = 0; l < layers; ++l)
    weights.push_back(backend.prepare_linear_weight(testing::random_tensor({n, k}, dtype, l)));
  Tensor x = testing::random_tensor({m, k}, DType::kF32, 99);
  Tensor out = Tensor::empty({m, n}, DType::kF32);
  int l = 0;
  for (auto _ : state) {
    LinearSegment seg{weights[l], {}};
    backend.linear(x, {&seg, 1}, out);
    l = (l + 1) % layers;
  }
  state.SetBytesProcessed(state.iterations() * n * k * static_cast<int64_t>(dtype_size(dtype)));
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * m * n * k * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Linear)
    ->Args({1, 2048, 2048, 0})
    ->Args({1, 5632, 2048, 0})
    ->Args({1, 2048, 5632, 0})
    ->Args({16, 2048, 2048, 0})
    ->Args({16, 5632, 2048, 0})
    ->Args({512, 2048, 2048, 0})
    ->Args({512, 5632, 2048, 0})
    ->Args({512, 2048, 5632, 0})
    // The small preset's shapes at a 2048-token step (serving) and a 16-row decode step.
    ->Args({2048, 768, 768, 0})
    ->Args({2048, 4096, 768, 0})
    ->Args({2048, 768, 2048, 0})
    ->Args({16, 4096, 768, 0})
    ->Args({16, 32000, 768, 0})
    ->Args({1, 2048, 2048, 1})
    ->Args({512, 2048, 2048, 1})
    ->UseRealTime();

// Issue rate of the two instructions a bf16 matmul can be built on, 16 independent accumulators
// in registers (no memory traffic): items/s = instructions per second on one core. Each
// instruction does 32 (vdpbf16ps) or 16 (vfmadd231ps) multiply-adds. On the development machine
// vdpbf16ps issues once per ~2.1 cycles and the f32 FMA twice per cycle (docs/performance.md).
#define TESSERA_X16(op)                                                                          \
  op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7) op(8) op(9) op(10) op(11) op(12) op(13) op(14) \
      op(15)
#define TESSERA_DP(i) "vdpbf16ps %%zmm30, %%zmm31, %%zmm" #i "\n\t"
#define TESSERA_FMA(i) "vfmadd231ps %%zmm30, %%zmm31, %%zmm" #i "\n\t"
#define TESSERA_ZERO(i) "vpxord %%zmm" #i ", %%zmm" #i ", %%zmm" #i "\n\t"
#define TESSERA_ZERO_ALL TESSERA_X16(TESSERA_ZERO) TESSERA_ZERO(30) TESSERA_ZERO(31)
template <bool kDot>
void BM_IssueRate(benchmark::State& state) {
  constexpr int64_t kLoops = 1 << 16;
  for (auto _ : state) {
    int64_t n = kLoops;
    if constexpr (kDot) {
      asm volatile(TESSERA_ZERO_ALL "1:\n\t" TESSERA_X16(TESSERA_DP) "dec %0\n\tjnz 1b"
                   : "+r"(n)
                   :
                   : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
                     "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm30", "xmm31");
    } else {
      asm volatile(TESSERA_ZERO_ALL "1:\n\t" TESSERA_X16(TESSERA_FMA) "dec %0\n\tjnz 1b"
                   : "+r"(n)
                   :
                   : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
                     "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm30", "xmm31");
    }
  }
  state.SetItemsProcessed(state.iterations() * kLoops * 16);
  state.counters["GFLOP/s"] = benchmark::Counter(
      state.iterations() * kLoops * 16 * (kDot ? 64.0 : 32.0) / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_IssueRate<true>)->Name("BM_IssueRate/vdpbf16ps");
BENCHMARK(BM_IssueRate<false>)->Name("BM_IssueRate/vfmadd231ps");

}  // namespace
}  // namespace tessera

BENCHMARK_MAIN();
