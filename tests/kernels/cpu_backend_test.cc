// CPU kernels against naive double-precision references, on every ISA path this CPU has, plus
// the batch-invariance property: a row's result does not depend on the rest of the batch.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "test_util.h"

namespace tessera {
namespace {

using testing::at;
using testing::i32_tensor;
using testing::random_tensor;

struct Variant {
  cpu::Isa isa;
  MatmulPrecision precision;
  std::string name;
};

std::vector<Variant> variants() {
  std::vector<Variant> v = {{cpu::Isa::kGeneric, MatmulPrecision::kExact, "generic"}};
  if (__builtin_cpu_supports("avx512bf16")) {
    v.push_back({cpu::Isa::kAvx512, MatmulPrecision::kExact, "avx512_exact"});
    v.push_back({cpu::Isa::kAvx512, MatmulPrecision::kBf16, "avx512_bf16"});
  }
  return v;
}

class CpuBackendTest : public ::testing::TestWithParam<Variant> {
 protected:
  // Only the AVX-512 bf16-precision path rounds activations to bf16 before bf16 weights.
  bool rounds_activations() const {
    return GetParam().isa == cpu::Isa::kAvx512 && GetParam().precision == MatmulPrecision::kBf16;
  }
  // Rows [start, start + batch) of x through the linear layer alone give the bits of the same
  // rows in `full` (x through it at once).
  ::testing::AssertionResult batch_matches(const Tensor& x, const LinearSegment& seg,
                                           const Tensor& full, int64_t start, int64_t batch) {
    const int64_t n = full.size(1);
    Tensor part = Tensor::empty({batch, n}, DType::kF32);
    backend_.linear(x.slice(0, start, start + batch), {&seg, 1}, part);
    for (int64_t i = 0; i < batch; ++i)
      if (std::memcmp(part.data<float>() + i * n, full.data<float>() + (start + i) * n,
                      n * sizeof(float)) != 0)
        return ::testing::AssertionFailure()
               << "row " << start + i << " differs in a batch of " << batch;
    return ::testing::AssertionSuccess();
  }
  ThreadPool pool_{2};
  CpuBackend backend_{pool_, GetParam().isa, GetParam().precision};
};

// Naive x @ w^T + b in double. With bf16 weights in bf16 matmul precision the reference rounds
// the activations to bf16 too: that is the documented contract of that mode.
double linear_ref(const Tensor& x, int64_t i, const Tensor& w, int64_t j, bool round_x) {
  double s = 0;
  for (int64_t k = 0; k < x.size(1); ++k) {
    float xv = at(x, i, k);
    if (round_x) xv = round_to_bf16(xv);
    s += static_cast<double>(xv) * at(w, j, k);
  }
  return s;
}

// sum_k |x[i, k] * w[j, k]|: the scale of an output's rounding error (f32 accumulation).
double abs_product_sum(const Tensor& x, int64_t i, const Tensor& w, int64_t j) {
  double mag = 0;
  for (int64_t k = 0; k < x.size(1); ++k)
    mag += std::abs(static_cast<double>(at(x, i, k)) * at(w, j, k));
  return mag;
}

TEST_P(CpuBackendTest, LinearMatchesReferenceForEveryDtypeAndShape) {
  for (DType wdtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (auto [m, n, k] : std::vector<std::array<int64_t, 3>>{
             {1, 8, 32}, {1, 37, 100}, {3, 9, 17}, {5, 13, 64}, {64, 40, 96}, {70, 21, 129}}) {
      Tensor x = random_tensor({m, k}, DType::kF32, 1 + m);
      Tensor w = random_tensor({n, k}, wdtype, 2 + n);
      Tensor bias = random_tensor({n}, DType::kF32, 3);
      Tensor out = Tensor::empty({m, n}, DType::kF32);
      LinearSegment seg{w, bias};
      backend_.linear(x, {&seg, 1}, out);
      const bool round_x = rounds_activations() && wdtype == DType::kBF16;
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
          double ref = linear_ref(x, i, w, j, round_x) + bias.data<float>()[j];
          ASSERT_NEAR(at(out, i, j), ref, 1e-4 * std::sqrt(static_cast<double>(k)))
              << dtype_name(wdtype) << " m=" << m << " n=" << n << " k=" << k << " at " << i << ","
              << j;
        }
    }
  }
}

TEST_P(CpuBackendTest, ExactPrecisionKeepsActivationsToSixteenBits) {
  if (rounds_activations()) GTEST_SKIP() << "bf16 precision rounds activations by design";
  // Activations with long mantissas; a bf16-rounded product would be off by ~1e-3 relative.
  const int64_t m = 9, n = 24, k = 512;
  Tensor x = random_tensor({m, k}, DType::kF32, 31);
  Tensor w = random_tensor({n, k}, DType::kBF16, 32);
  Tensor out = Tensor::empty({m, n}, DType::kF32);
  LinearSegment seg{w, {}};
  backend_.linear(x, {&seg, 1}, out);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      ASSERT_NEAR(at(out, i, j), linear_ref(x, i, w, j, false), 2e-6 * abs_product_sum(x, i, w, j))
          << i << "," << j;
    }
}

TEST_P(CpuBackendTest, LinearWithSegmentsAndStridedWeights) {
  // A fused q/k/v projection: three weights, one a column slice of a wider tensor (as a
  // row-parallel shard is), written into one output.
  const int64_t m = 6, k = 48;
  Tensor x = random_tensor({m, k}, DType::kF32, 7);
  Tensor wide = random_tensor({10, 2 * k}, DType::kBF16, 8);
  Tensor wq = wide.slice(1, k, 2 * k);  // row stride 2k
  Tensor wk = random_tensor({4, k}, DType::kBF16, 9);
  Tensor wv = random_tensor({5, k}, DType::kF32, 10);
  std::vector<LinearSegment> segs = {{wq, {}}, {wk, {}}, {wv, {}}};
  Tensor out = Tensor::empty({m, 19}, DType::kF32);
  backend_.linear(x, segs, out);
  const bool round_x = rounds_activations();
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < 10; ++j)
      EXPECT_NEAR(at(out, i, j), linear_ref(x, i, wq, j, round_x), 1e-4);
    for (int64_t j = 0; j < 4; ++j)
      EXPECT_NEAR(at(out, i, 10 + j), linear_ref(x, i, wk, j, round_x), 1e-4);
    for (int64_t j = 0; j < 5; ++j)
      EXPECT_NEAR(at(out, i, 14 + j), linear_ref(x, i, wv, j, false), 1e-4);
  }
}

TEST_P(CpuBackendTest, LinearRowsAreBatchInvariant) {
  const int64_t k = 200, n = 77;
  for (DType wdtype : {DType::kF32, DType::kBF16}) {
    Tensor x = random_tensor({64, k}, DType::kF32, 11);
    Tensor w = random_tensor({n, k}, wdtype, 12);
    LinearSegment seg{w, {}};
    Tensor full = Tensor::empty({64, n}, DType::kF32);
    backend_.linear(x, {&seg, 1}, full);
    for (int64_t batch : {1, 3, 7}) {
      for (int64_t start = 0; start + batch <= 64; start += 9) {
        ASSERT_TRUE(batch_matches(x, seg, full, start, batch));
      }
    }
    // One thread or two: the same bits.
    ThreadPool one(1);
    CpuBackend single(one, GetParam().isa, GetParam().precision);
    Tensor again = Tensor::empty({64, n}, DType::kF32);
    single.linear(x, {&seg, 1}, again);
    EXPECT_EQ(0, std::memcmp(again.raw(), full.raw(), full.nbytes()));
  }
}

// The bf16 GEMM works in row tiles of up to 12 rows (read in place below 12 rows, rearranged
// into tiles from 12), groups of 16 columns (1-8 per tile by height) and column blocks sized
// by k: shapes that cross every boundary must agree with the reference and give each row the
// same bits in any batch.
TEST_P(CpuBackendTest, Bf16LinearAcrossKernelAndBlockBoundaries) {
  const int64_t k = 2100, n = 53, m = 131;
  Tensor x = random_tensor({m, k}, DType::kF32, 41);
  Tensor w = random_tensor({n, k}, DType::kBF16, 42);
  Tensor bias = random_tensor({n}, DType::kF32, 43);
  LinearSegment seg{w, bias};
  Tensor full = Tensor::empty({m, n}, DType::kF32);
  backend_.linear(x, {&seg, 1}, full);
  const bool round_x = rounds_activations();
  for (int64_t i : {0, 1, 3, 4, 63, 127, 128, 130})
    for (int64_t j = 0; j < n; ++j) {
      const double ref = linear_ref(x, i, w, j, round_x) + bias.data<float>()[j];
      ASSERT_NEAR(at(full, i, j), ref, 2e-6 * abs_product_sum(x, i, w, j)) << i << "," << j;
    }
  for (int64_t batch : {1, 2, 5, 7, 8, 15, 16, 17, 64, 129}) {
    for (int64_t start : {int64_t{0}, m - batch}) {
      ASSERT_TRUE(batch_matches(x, seg, full, start, batch));
    }
  }
}

// A bf16 weight prepared for the backend (packed at load, in place when nothing else holds it,
// otherwise copied) gives the same bits as the same weight passed raw, for every tile height
// and for shapes that need padding (n not a multiple of 16, odd k), fused with other segments.
TEST_P(CpuBackendTest, PreparedBf16WeightsMatchRawOnes) {
  for (auto [n, k] : std::vector<std::array<int64_t, 2>>{{48, 64}, {37, 33}, {100, 258}, {16, 7}}) {
    Tensor raw = random_tensor({n, k}, DType::kBF16, 50 + n);
    Tensor raw2 = random_tensor({5, k}, DType::kBF16, 51 + n);
    // One copy is moved in (may be packed in place), one is still held here (must be copied).
    Tensor copy = Tensor::empty({n, k}, DType::kBF16);
    std::memcpy(copy.raw(), raw.raw(), raw.nbytes());
    const void* copy_data = copy.raw();
    std::vector<uint16_t> before(raw.data<uint16_t>(), raw.data<uint16_t>() + n * k);
    Tensor moved = backend_.prepare_linear_weight(std::move(copy));
    Tensor held = backend_.prepare_linear_weight(raw);
    // The held tensor is never rearranged under its holder.
    EXPECT_EQ(0, std::memcmp(before.data(), raw.raw(), raw.nbytes()));
    if (GetParam().isa == cpu::Isa::kAvx512) {
      EXPECT_EQ(moved.layout(), cpu::kLayoutBf16Tiles);
      EXPECT_EQ(held.layout(), cpu::kLayoutBf16Tiles);
      EXPECT_NE(held.raw(), raw.raw());
      // No padding needed: packed in place.
      if (n % 16 == 0 && k % 2 == 0) EXPECT_EQ(moved.raw(), copy_data);
    }
    Tensor bias = random_tensor({n}, DType::kF32, 52);
    for (int64_t m : {1, 2, 3, 5, 11, 12, 13, 25, 40}) {
      Tensor x = random_tensor({m, k}, DType::kF32, 53 + m);
      Tensor want = Tensor::empty({m, n + 5}, DType::kF32);
      std::vector<LinearSegment> raw_segs = {{raw, bias}, {raw2, {}}};
      backend_.linear(x, raw_segs, want);
      for (const Tensor& w : {moved, held}) {
        Tensor got = Tensor::empty({m, n + 5}, DType::kF32);
        std::vector<LinearSegment> segs = {{w, bias}, {backend_.prepare_linear_weight(raw2), {}}};
        backend_.linear(x, segs, got);
        ASSERT_EQ(0, std::memcmp(got.raw(), want.raw(), want.nbytes()))
            << "n=" << n << " k=" << k << " m=" << m;
      }
    }
  }
}

// Every tile height (1-12 rows, then tiles of 12 plus a remainder), across column blocks and
// thread chunks: row i of any sub-batch equals row i of the full batch, bit for bit, and all
// agree with the reference.
TEST_P(CpuBackendTest, PreparedBf16LinearIsBatchInvariantForEveryTileHeight) {
  const int64_t k = 3000, n = 301, m = 64;  // k = 3000: column blocks of 2 groups
  Tensor x = random_tensor({m, k}, DType::kF32, 61);
  Tensor w = random_tensor({n, k}, DType::kBF16, 62);
  LinearSegment seg{backend_.prepare_linear_weight(w), {}};
  Tensor full = Tensor::empty({m, n}, DType::kF32);
  backend_.linear(x, {&seg, 1}, full);
  const bool round_x = rounds_activations();
  for (int64_t i : {0, 11, 12, 63})
    for (int64_t j : {0, 15, 16, 31, 32, 300}) {
      ASSERT_NEAR(at(full, i, j), linear_ref(x, i, w, j, round_x),
                  2e-6 * abs_product_sum(x, i, w, j))
          << i << "," << j;
    }
  for (int64_t batch = 1; batch <= 26; ++batch) {
    const int64_t start = (batch * 5) % (m - batch + 1);
    ASSERT_TRUE(batch_matches(x, seg, full, start, batch));
  }
}

// FP8 weights (--quantization fp8): quantized per output row at load, then every kernel computes
// x @ (scale[j] * e4m3(q[j]))^T. The reference quantizes independently from the definition.
struct Fp8Reference {
  std::vector<double> w;  // [n, k] dequantized values
  int64_t k = 0;
};
Fp8Reference fp8_reference(const Tensor& w) {
  const int64_t n = w.size(0), k = w.size(1);
  Fp8Reference r;
  r.k = k;
  r.w.resize(static_cast<size_t>(n * k));
  for (int64_t j = 0; j < n; ++j) {
    float amax = 0;
    for (int64_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(at(w, j, i)));
    const float scale = amax > 0 ? amax / kFp8E4M3Max : 1.0f;
    for (int64_t i = 0; i < k; ++i)
      r.w[j * k + i] =
          static_cast<double>(scale) * fp8_e4m3_to_f32(f32_to_fp8_e4m3(at(w, j, i) / scale));
  }
  return r;
}

TEST_P(CpuBackendTest, Fp8LinearMatchesDequantizedReference) {
  CpuBackend fp8(pool_, GetParam().isa, GetParam().precision, /*fp8_weights=*/true);
  for (DType wd : {DType::kBF16, DType::kF32, DType::kF16})
    for (auto [m, n, k] : std::vector<std::array<int64_t, 3>>{{1, 16, 64},
                                                              {3, 37, 129},
                                                              {8, 301, 3000},
                                                              {13, 50, 7},
                                                              {40, 33, 515},
                                                              {64, 45, 301}}) {
      Tensor x = random_tensor({m, k}, DType::kF32, 71 + m);
      Tensor w = random_tensor({n, k}, wd, 72 + n);
      Tensor b = random_tensor({n}, DType::kF32, 73);
      const Fp8Reference ref = fp8_reference(w);
      LinearSegment seg{fp8.prepare_layer_weight(w, {}), b};
      EXPECT_EQ(seg.weight.layout(), cpu::kLayoutFp8Tiles);
      Tensor out = Tensor::empty({m, n}, DType::kF32);
      fp8.linear(x, {&seg, 1}, out);
      const bool round_x = GetParam().precision == MatmulPrecision::kBf16;
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
          const double bj = b.data<float>()[j];
          double want = bj, mag = std::abs(bj);
          for (int64_t kk = 0; kk < k; ++kk) {
            const float xv = round_x ? round_to_bf16(at(x, i, kk)) : at(x, i, kk);
            want += xv * ref.w[j * k + kk];
            mag += std::abs(xv * ref.w[j * k + kk]);
          }
          ASSERT_NEAR(at(out, i, j), want, 2e-6 * mag + 1e-7)
              << dtype_name(wd) << " m=" << m << " n=" << n << " k=" << k << " at " << i << ","
              << j;
        }
    }
}

// The quantized weight takes a quarter of f32's bytes (a half of bf16's) plus a scale per row,
// and the generic and AVX-512 kernels give the same bits, in any batch (each AVX-512 path:
// direct FP8 tiles for few rows, bf16-widened blocks for many).
TEST_P(CpuBackendTest, Fp8LinearIsBatchInvariantAndTheSameOnEveryIsa) {
  const int64_t k = 1030, n = 77, m = 60;  // 48 rows and more widen to bf16 tiles first
  Tensor x = random_tensor({m, k}, DType::kF32, 81);
  Tensor w = random_tensor({n, k}, DType::kBF16, 82);
  CpuBackend fp8(pool_, GetParam().isa, GetParam().precision, true);
  CpuBackend generic(pool_, cpu::Isa::kGeneric, GetParam().precision, true);
  LinearSegment seg{fp8.prepare_layer_weight(w, {}), {}};
  LinearSegment gseg{generic.prepare_layer_weight(w, {}), {}};
  EXPECT_EQ(seg.weight.dtype(), DType::kU8);
  EXPECT_EQ(seg.weight.owner() ? cpu::packed_fp8_bytes(n, k) : 0,
            cpu::round_up(80 * k, 64) + 80 * 4);
  EXPECT_EQ(std::memcmp(seg.weight.raw(), gseg.weight.raw(), cpu::packed_fp8_bytes(n, k)), 0);
  Tensor full = Tensor::empty({m, n}, DType::kF32), ref = Tensor::empty({m, n}, DType::kF32);
  fp8.linear(x, {&seg, 1}, full);
  generic.linear(x, {&gseg, 1}, ref);
  EXPECT_EQ(std::memcmp(full.raw(), ref.raw(), full.nbytes()), 0) << "kernels disagree";
  for (int64_t batch : {1, 2, 5, 8, 11, 12, 13, 14, 16, 17, 28, 47, 48, 50}) {
    const int64_t start = (batch * 3) % (m - batch + 1);
    Tensor part = Tensor::empty({batch, n}, DType::kF32);
    fp8.linear(x.slice(0, start, start + batch), {&seg, 1}, part);
    ASSERT_EQ(std::memcmp(part.raw(), full.data<float>() + start * n, part.nbytes()), 0)
        << "batch " << batch << " at " << start;
  }
}

// An FP8 checkpoint's weight as stored: random E4M3 codes with a scale per row, or per row and
// block of columns (several blocks, a short last one; a shard starting inside a block). The
// reference dequantizes from the definition, w[j][i] = scale[j][(i + off) / block] *
// e4m3(q[j][i]), and sums in double.
TEST_P(CpuBackendTest, StoredFp8CodesMatchDequantizedReference) {
  for (auto [block, off] : std::vector<std::array<int64_t, 2>>{{0, 0}, {32, 0}, {128, 0}, {32, 13}})
    for (auto [m, n, k] : std::vector<std::array<int64_t, 3>>{{1, 16, 64},
                                                              {3, 37, 129},
                                                              {8, 300, 1000},
                                                              {13, 50, 7},
                                                              {16, 64, 320},
                                                              {40, 33, 515},
                                                              {64, 45, 301}}) {
      const int64_t chunks = block > 0 ? (k + off + block - 1) / block : 1;
      Tensor x = random_tensor({m, k}, DType::kF32, 171 + m);
      Tensor codes = Tensor::empty({n, k}, DType::kF8E4M3);
      Tensor scales =
          block > 0 ? Tensor::empty({n, chunks}, DType::kF32) : Tensor::empty({n}, DType::kF32);
      uint64_t state = 12345 + n * 7 + k;
      for (int64_t i = 0; i < n * k; ++i) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        uint8_t q = static_cast<uint8_t>(state >> 56);
        if ((q & 0x7f) == 0x7f) q ^= 1;  // not NaN
        codes.data<uint8_t>()[i] = q;
      }
      for (int64_t i = 0; i < scales.numel(); ++i)
        scales.data<float>()[i] = 1e-3f * static_cast<float>(1 + (i * 37) % 11);
      Tensor b = random_tensor({n}, DType::kF32, 173);
      LinearSegment seg{backend_.prepare_fp8_layer_weight(codes, scales, block, off), b};
      EXPECT_EQ(seg.weight.layout(), block > 0 ? cpu::kLayoutFp8Blocks : cpu::kLayoutFp8Tiles);
      Tensor out = Tensor::empty({m, n}, DType::kF32);
      backend_.linear(x, {&seg, 1}, out);
      const bool round_x = GetParam().precision == MatmulPrecision::kBf16;
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
          double want = b.data<float>()[j], mag = std::abs(want);
          for (int64_t kk = 0; kk < k; ++kk) {
            const int64_t c = block > 0 ? (kk + off) / block : 0;
            const double wv = static_cast<double>(scales.data<float>()[j * chunks + c]) *
                              fp8_e4m3_to_f32(codes.data<uint8_t>()[j * k + kk]);
            const float xv = round_x ? round_to_bf16(at(x, i, kk)) : at(x, i, kk);
            want += xv * wv;
            mag += std::abs(xv * wv);
          }
          ASSERT_NEAR(at(out, i, j), want, 2e-6 * mag + 1e-7)
              << "block " << block << "+" << off << " m=" << m << " n=" << n << " k=" << k << " at "
              << i << "," << j;
        }
    }
}

// Block-scaled codes give the same bits on every ISA and in every batch: each output is the same
// chunk sums added in the same order whether its rows run one, twelve or sixteen at a time.
TEST_P(CpuBackendTest, Fp8BlocksAreBatchInvariantAndTheSameOnEveryIsa) {
  const int64_t k = 300, n = 70, m = 60, block = 128, off = 40;
  const int64_t chunks = (k + off + block - 1) / block;
  Tensor x = random_tensor({m, k}, DType::kF32, 181);
  Tensor codes = Tensor::empty({n, k}, DType::kF8E4M3);
  for (int64_t i = 0; i < n * k; ++i)
    codes.data<uint8_t>()[i] = static_cast<uint8_t>((i * 53) % 127);
  Tensor scales = Tensor::empty({n, chunks}, DType::kF32);
  for (int64_t i = 0; i < n * chunks; ++i) scales.data<float>()[i] = 1e-3f * (1 + i % 7);
  CpuBackend generic(pool_, cpu::Isa::kGeneric, GetParam().precision);
  LinearSegment seg{backend_.prepare_fp8_layer_weight(codes, scales, block, off), {}};
  LinearSegment gseg{generic.prepare_fp8_layer_weight(codes, scales, block, off), {}};
  Tensor full = Tensor::empty({m, n}, DType::kF32), ref = Tensor::empty({m, n}, DType::kF32);
  backend_.linear(x, {&seg, 1}, full);
  generic.linear(x, {&gseg, 1}, ref);
  EXPECT_EQ(std::memcmp(full.raw(), ref.raw(), full.nbytes()), 0) << "kernels disagree";
  for (int64_t batch : {1, 2, 5, 11, 12, 13, 16, 17, 47, 50}) {
    const int64_t start = (batch * 3) % (m - batch + 1);
    Tensor part = Tensor::empty({batch, n}, DType::kF32);
    backend_.linear(x.slice(0, start, start + batch), {&seg, 1}, part);
    ASSERT_EQ(std::memcmp(part.raw(), full.data<float>() + start * n, part.nbytes()), 0)
        << "batch " << batch << " at " << start;
  }
}

// Without --quantization the layer weights are prepared as before (bf16 packed or as stored).
TEST_P(CpuBackendTest, LayerWeightsStayAsStoredWithoutQuantization) {
  Tensor w = random_tensor({32, 64}, DType::kF32, 91);
  EXPECT_EQ(backend_.prepare_layer_weight(w, {}).layout(), 0);
  EXPECT_EQ(backend_.prepare_layer_weight(w, {}).dtype(), DType::kF32);
}

// A tied LM head's packed weight is also the embedding table: the embedding reads it back.
TEST_P(CpuBackendTest, EmbeddingReadsAPreparedTable) {
  Tensor table = random_tensor({40, 34}, DType::kBF16, 71);
  Tensor prepared = backend_.prepare_linear_weight(table);
  Tensor ids = i32_tensor({3, 17, 39, 0, 5, 60});
  Tensor want = Tensor::empty({6, 34}, DType::kF32), got = Tensor::empty({6, 34}, DType::kF32);
  backend_.embedding(table, ids, 0, 1.5f, want);
  backend_.embedding(prepared, ids, 0, 1.5f, got);
  EXPECT_EQ(0, std::memcmp(got.raw(), want.raw(), want.nbytes()));
  EXPECT_EQ(at(got, 1, 33), 1.5f * at(table, 17, 33));
}

TEST_P(CpuBackendTest, RmsNormPlainAndUnitOffset) {
  Tensor x = random_tensor({5, 70}, DType::kF32, 13, 3.0f);
  Tensor w = random_tensor({70}, DType::kF32, 14);
  for (bool unit : {false, true}) {
    Tensor out = Tensor::empty({5, 70}, DType::kF32);
    backend_.rms_norm(x, w, 1e-5f, unit, out);
    for (int64_t i = 0; i < 5; ++i) {
      double ss = 0;
      for (int64_t j = 0; j < 70; ++j) ss += static_cast<double>(at(x, i, j)) * at(x, i, j);
      double inv = 1.0 / std::sqrt(ss / 70 + 1e-5);
      for (int64_t j = 0; j < 70; ++j) {
        double wj = w.data<float>()[j];
        double ref = at(x, i, j) * inv * (unit ? 1.0 + wj : wj);
        ASSERT_NEAR(at(out, i, j), ref, 1e-5);
      }
    }
  }
  // Per-head norm over a [tokens, heads, head_dim] view of wider rows (Qwen3's q_norm).
  Tensor rows = random_tensor({3, 40}, DType::kF32, 15);
  Tensor heads = rows.slice(1, 0, 32).split_dim(1, 16);  // [3, 2, 16], strides (40, 16, 1)
  Tensor w16 = random_tensor({16}, DType::kF32, 16);
  Tensor out = Tensor::empty({3, 2, 16}, DType::kF32);
  backend_.rms_norm(heads, w16, 1e-6f, false, out);
  for (int t = 0; t < 3; ++t)
    for (int h = 0; h < 2; ++h) {
      double ss = 0;
      for (int e = 0; e < 16; ++e) ss += std::pow(at(rows, t, h * 16 + e), 2);
      double inv = 1.0 / std::sqrt(ss / 16 + 1e-6);
      for (int e = 0; e < 16; ++e)
        ASSERT_NEAR(out.data<float>()[(t * 2 + h) * 16 + e],
                    at(rows, t, h * 16 + e) * inv * w16.data<float>()[e], 1e-5);
    }
}

TEST_P(CpuBackendTest, RopeMatchesRotateHalfReference) {
  const int heads = 3, d = 8;
  Tensor x = random_tensor({4, heads * d}, DType::kF32, 17);
  Tensor orig = x.contiguous().to(DType::kF32);
  std::vector<int32_t> pos = {0, 5, 17, 1000};
  std::vector<float> inv = {1.0f, 0.1f, 0.01f, 0.001f};
  Tensor inv_t = Tensor::empty({4}, DType::kF32);
  std::memcpy(inv_t.raw(), inv.data(), 16);
  Tensor table = Tensor::empty({4, 8}, DType::kF32);
  backend_.rope_table(i32_tensor(pos), inv_t, 1.0f, table);
  backend_.rope(x, d, table);
  for (int t = 0; t < 4; ++t)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < 4; ++i) {
        double a = static_cast<double>(static_cast<float>(pos[t]) * inv[i]);
        double x1 = at(orig, t, h * d + i), x2 = at(orig, t, h * d + i + 4);
        EXPECT_NEAR(at(x, t, h * d + i), x1 * std::cos(a) - x2 * std::sin(a), 1e-5);
        EXPECT_NEAR(at(x, t, h * d + i + 4), x2 * std::cos(a) + x1 * std::sin(a), 1e-5);
      }
}

// The activations' definitions, in double.
double activation_reference(double g, Activation act) {
  switch (act) {
    case Activation::kSilu:
      return g / (1 + std::exp(-g));
    case Activation::kGeluTanh:
      return 0.5 * g * (1 + std::tanh(std::sqrt(2 / M_PI) * (g + 0.044715 * g * g * g)));
    case Activation::kRelu:
      return std::max(g, 0.0);
    case Activation::kGelu:
      break;
  }
  return 0.5 * g * (1 + std::erf(g / std::sqrt(2.0)));
}

TEST_P(CpuBackendTest, GatedActivations) {
  Tensor gu = random_tensor({3, 2 * 37}, DType::kF32, 18, 6.0f);
  for (Activation act :
       {Activation::kSilu, Activation::kGeluTanh, Activation::kGelu, Activation::kRelu}) {
    Tensor out = Tensor::empty({3, 37}, DType::kF32);
    backend_.gated_activation(gu, act, out);
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 37; ++j) {
        const double g = at(gu, i, j), u = at(gu, i, 37 + j), a = activation_reference(g, act);
        ASSERT_NEAR(at(out, i, j), a * u, 2e-5 * std::max(1.0, std::abs(a * u)));
      }
  }
}

// The ungated activation of GPT-2's MLP, in place as the model calls it.
TEST_P(CpuBackendTest, Activations) {
  for (Activation act :
       {Activation::kSilu, Activation::kGeluTanh, Activation::kGelu, Activation::kRelu}) {
    Tensor x = random_tensor({4, 45}, DType::kF32, 28, 6.0f);
    Tensor orig = x.contiguous().to(DType::kF32);
    backend_.activation(x, act, x);
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 45; ++j) {
        const double a = activation_reference(at(orig, i, j), act);
        ASSERT_NEAR(at(x, i, j), a, 2e-5 * std::max(1.0, std::abs(a)));
      }
  }
}

// LayerNorm against its definition in double, with an offset mean (the two-pass variance
// keeps it exact where a one-pass E[x^2] - E[x]^2 would cancel), on a strided input.
TEST_P(CpuBackendTest, LayerNorm) {
  for (int64_t rows : {int64_t{3}, int64_t{300}}) {
    Tensor wide = random_tensor({rows, 90}, DType::kF32, 29, 2.0f);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < 90; ++j) wide.data<float>()[i * 90 + j] += 40.0f;
    Tensor x = wide.slice(1, 5, 82);  // [rows, 77], row stride 90
    Tensor w = random_tensor({77}, DType::kF32, 30), bias = random_tensor({77}, DType::kF32, 31);
    Tensor out = Tensor::empty({rows, 77}, DType::kF32);
    backend_.layer_norm(x, w, bias, 1e-5f, out);
    for (int64_t i = 0; i < rows; ++i) {
      double mean = 0, var = 0;
      for (int64_t j = 0; j < 77; ++j) mean += at(x, i, j);
      mean /= 77;
      for (int64_t j = 0; j < 77; ++j) var += std::pow(at(x, i, j) - mean, 2);
      const double inv = 1.0 / std::sqrt(var / 77 + 1e-5);
      for (int64_t j = 0; j < 77; ++j) {
        double ref = (at(x, i, j) - mean) * inv * w.data<float>()[j] + bias.data<float>()[j];
        ASSERT_NEAR(at(out, i, j), ref, 2e-5) << i << " " << j;
      }
    }
  }
}

TEST_P(CpuBackendTest, SoftcapAndAdd) {
  Tensor x = random_tensor({2, 50}, DType::kF32, 19, 100.0f);
  Tensor orig = x.contiguous().to(DType::kF32);
  backend_.softcap(x, 30.0f);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 50; ++j)
      ASSERT_NEAR(at(x, i, j), 30.0 * std::tanh(at(orig, i, j) / 30.0), 1e-5);
  Tensor y = random_tensor({2, 50}, DType::kF32, 20);
  Tensor out = Tensor::empty({2, 50}, DType::kF32);
  backend_.add(orig, y, out);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 50; ++j) ASSERT_EQ(at(out, i, j), at(orig, i, j) + at(y, i, j));
}

// out[rows[i]] += scale[i] * x[i], on rows of a strided output and enough rows to use the pool;
// rows not named stay as they were.
TEST_P(CpuBackendTest, AddRowsScaled) {
  const int64_t n = 300, width = 70, out_rows = 701;  // 7 and 701 coprime: distinct rows
  Tensor x = random_tensor({n, width}, DType::kF32, 22);
  Tensor scale = random_tensor({n}, DType::kF32, 23);
  std::vector<int32_t> picked;
  for (int64_t i = 0; i < n; ++i) picked.push_back(static_cast<int32_t>((i * 7 + 3) % out_rows));
  Tensor wide = random_tensor({out_rows, width + 5}, DType::kF32, 24);
  Tensor out = wide.slice(1, 2, 2 + width);
  Tensor before = out.contiguous().to(DType::kF32);
  backend_.add_rows_scaled(x, i32_tensor(picked), scale, out);
  std::vector<int64_t> source(out_rows, -1);
  for (int64_t i = 0; i < n; ++i) source[picked[i]] = i;
  for (int64_t r = 0; r < out_rows; ++r)
    for (int64_t j = 0; j < width; ++j) {
      double want = at(before, r, j);
      if (source[r] >= 0) want += double(scale.data<float>()[source[r]]) * at(x, source[r], j);
      ASSERT_NEAR(at(out, r, j), want, 1e-5 * (1 + std::fabs(want))) << r << " " << j;
    }
}

TEST_P(CpuBackendTest, EmbeddingWithVocabShard) {
  Tensor table = random_tensor({10, 6}, DType::kBF16, 21);
  Tensor out = Tensor::empty({3, 6}, DType::kF32);
  backend_.embedding(table, i32_tensor({12, 3, 25}), 10, 2.0f, out);  // shard holds ids 10..19
  for (int j = 0; j < 6; ++j) {
    EXPECT_EQ(at(out, 0, j), 2.0f * at(table, 2, j));
    EXPECT_EQ(at(out, 1, j), 0.0f);
    EXPECT_EQ(at(out, 2, j), 0.0f);
  }
}

// A paged KV cache with a random block layout, filled through write_kv.
struct PagedCase {
  int num_kv_heads = 2, num_heads = 4, head_dim = 16, block_size = 16, num_blocks = 40;
  DType kv_dtype = DType::kF32;
  std::vector<int> seq_lens;  // context lengths
  Tensor k_cache, v_cache, block_tables;
  std::vector<Tensor> keys, values;  // per sequence [len, kv_heads * head_dim]

  void build(Backend& backend, uint64_t seed) {
    int kvw = num_kv_heads * head_dim;
    k_cache = Tensor::zeros({num_blocks, block_size, num_kv_heads, head_dim}, kv_dtype);
    v_cache = Tensor::zeros({num_blocks, block_size, num_kv_heads, head_dim}, kv_dtype);
    int max_blocks = 0;
    for (int len : seq_lens) max_blocks = std::max(max_blocks, (len + block_size - 1) / block_size);
    block_tables = Tensor::zeros({static_cast<int64_t>(seq_lens.size()), max_blocks}, DType::kI32);
    // Hand out blocks in a shuffled order so that logical and physical blocks differ.
    std::vector<int> free_blocks(num_blocks);
    for (int i = 0; i < num_blocks; ++i) free_blocks[i] = (i * 7 + 3) % num_blocks;
    int next = 0;
    for (size_t s = 0; s < seq_lens.size(); ++s) {
      int len = seq_lens[s];
      keys.push_back(random_tensor({len, kvw}, DType::kF32, seed + 2 * s));
      values.push_back(random_tensor({len, kvw}, DType::kF32, seed + 2 * s + 1));
      std::vector<int32_t> slots(len);
      for (int b = 0; b < (len + block_size - 1) / block_size; ++b) {
        ASSERT_LT(next, num_blocks) << "test case needs more blocks";
        block_tables.data<int32_t>()[s * max_blocks + b] = free_blocks[next++];
      }
      for (int p = 0; p < len; ++p)
        slots[p] = block_tables.data<int32_t>()[s * max_blocks + p / block_size] * block_size +
                   p % block_size;
      AttentionMetadata meta;
      meta.block_size = block_size;
      meta.slot_mapping = i32_tensor(slots);
      backend.write_kv(keys[s], values[s], k_cache, v_cache, meta);
    }
  }
};

// A key or value as a cache of `kv` holds it.
float as_stored(float x, DType kv) {
  switch (kv) {
    case DType::kBF16:
      return round_to_bf16(x);
    case DType::kF16:
      return f16_to_f32(f32_to_f16(x));
    case DType::kF8E4M3:
      return fp8_e4m3_to_f32(f32_to_fp8_e4m3(x));
    default:
      return x;
  }
}

// Naive attention of one query row over positions [0, pos] of a sequence, on the keys and
// values rounded as a cache of `kv` stores them.
std::vector<double> attention_ref(const PagedCase& c, int s, const float* q, int pos,
                                  const AttentionParams& p, DType kv) {
  int group = p.num_heads / p.num_kv_heads;
  std::vector<double> out(p.num_heads * p.head_dim, 0.0);
  for (int h = 0; h < p.num_heads; ++h) {
    int kvh = h / group;
    std::vector<double> scores;
    std::vector<int> keys;
    for (int kp = 0; kp <= pos; ++kp) {
      if (p.sliding_window > 0 && pos - kp >= p.sliding_window) continue;
      double dot = 0;
      for (int e = 0; e < p.head_dim; ++e) {
        const float k = as_stored(at(c.keys[s], kp, kvh * p.head_dim + e), kv);
        dot += static_cast<double>(q[h * p.head_dim + e]) * k;
      }
      dot *= p.scale;
      if (p.softcap > 0) dot = p.softcap * std::tanh(dot / p.softcap);
      scores.push_back(dot);
      keys.push_back(kp);
    }
    double mx = -1e300, sum = 0;
    for (double v : scores) mx = std::max(mx, v);
    for (double& v : scores) sum += (v = std::exp(v - mx));
    for (size_t i = 0; i < keys.size(); ++i)
      for (int e = 0; e < p.head_dim; ++e) {
        const float vv = as_stored(at(c.values[s], keys[i], kvh * p.head_dim + e), kv);
        out[h * p.head_dim + e] += scores[i] / sum * vv;
      }
  }
  return out;
}

// Runs attention for the last q_lens[s] positions of each sequence in one batch.
Tensor run_attention(Backend& backend, const PagedCase& c, const std::vector<int>& q_lens,
                     const Tensor& q, const AttentionParams& p) {
  std::vector<int32_t> starts = {0};
  for (int len : q_lens) starts.push_back(starts.back() + len);
  AttentionMetadata meta;
  meta.num_seqs = static_cast<int>(q_lens.size());
  meta.block_size = c.block_size;
  meta.query_start = i32_tensor(starts);
  meta.seq_lens = i32_tensor(std::vector<int32_t>(c.seq_lens.begin(), c.seq_lens.end()));
  meta.block_tables = c.block_tables;
  Tensor out = Tensor::empty({q.size(0), p.num_heads * p.head_dim}, DType::kF32);
  backend.paged_attention(q, c.k_cache, c.v_cache, meta, p, out);
  return out;
}

// Every cache dtype, sliding windows, soft-capping and block sizes against the naive reference.
void check_paged_attention(Backend& backend) {
  struct Variant {
    DType kv;
    int window;
    float softcap;
    int block_size;
  };
  // FP8 (E4M3): the AVX-512 kernel's vector decode (block size 16) and the portable one (8).
  for (Variant v : {Variant{DType::kF32, 0, 0.0f, 16}, Variant{DType::kBF16, 0, 0.0f, 16},
                    Variant{DType::kF32, 37, 0.0f, 16}, Variant{DType::kF32, 0, 5.0f, 8},
                    Variant{DType::kF32, 300, 0.0f, 32}, Variant{DType::kF16, 0, 0.0f, 16},
                    Variant{DType::kF8E4M3, 0, 0.0f, 16}, Variant{DType::kF8E4M3, 37, 5.0f, 8}}) {
    PagedCase c;
    c.kv_dtype = v.kv;
    c.block_size = v.block_size;
    c.num_blocks = 1200 / v.block_size;
    c.seq_lens = {1, 40, 600, 17};
    c.build(backend, 100);
    std::vector<int> q_lens = {1, 40, 33, 1};  // a decode, a full prefill, a chunk, a decode
    int total = 0;
    for (int l : q_lens) total += l;
    AttentionParams p;
    p.num_heads = c.num_heads;
    p.num_kv_heads = c.num_kv_heads;
    p.head_dim = c.head_dim;
    p.scale = 0.25f;
    p.softcap = v.softcap;
    p.sliding_window = v.window;
    Tensor q = random_tensor({total, p.num_heads * p.head_dim}, DType::kF32, 5, 2.0f);
    Tensor out = run_attention(backend, c, q_lens, q, p);
    int row = 0;
    for (size_t s = 0; s < q_lens.size(); ++s)
      for (int i = 0; i < q_lens[s]; ++i, ++row) {
        int pos = c.seq_lens[s] - q_lens[s] + i;
        auto ref = attention_ref(c, s, q.data<float>() + row * q.size(1), pos, p, v.kv);
        for (int e = 0; e < p.num_heads * p.head_dim; ++e)
          ASSERT_NEAR(at(out, row, e), ref[e], 2e-5)
              << "seq " << s << " pos " << pos << " window " << v.window;
      }
  }
}

TEST_P(CpuBackendTest, PagedAttentionMatchesNaiveAttention) {
  check_paged_attention(backend_);
}

// The AVX-512 attention kernel needs AVX-512F/BW only (no bf16 instructions), so it runs on
// CPUs that the suite above tests with the portable kernels alone.
TEST(CpuAvx512Attention, MatchesNaiveAttentionOnEveryCacheDtype) {
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw"))
    GTEST_SKIP() << "this CPU has no AVX-512";
  ThreadPool pool(2);
  CpuBackend backend(pool, cpu::Isa::kAvx512, MatmulPrecision::kExact);
  check_paged_attention(backend);
}

// DeepSeek's latent attention widths (288 for the small preset, 576 for the released models):
// one key/value head shared by several query heads, as MLA runs it.
TEST_P(CpuBackendTest, PagedAttentionAtLatentWidths) {
  for (int width : {288, 576}) {
    PagedCase c;
    c.num_kv_heads = 1;
    c.num_heads = 3;
    c.head_dim = width;
    c.num_blocks = 12;
    c.seq_lens = {1, 40, 70};
    c.build(backend_, 300 + width);
    const std::vector<int> q_lens = {1, 40, 5};
    AttentionParams p;
    p.num_heads = c.num_heads;
    p.num_kv_heads = 1;
    p.head_dim = width;
    p.scale = 0.07f;
    Tensor q = random_tensor({46, 3 * width}, DType::kF32, 7, 2.0f);
    Tensor out = run_attention(backend_, c, q_lens, q, p);
    int row = 0;
    for (size_t s = 0; s < q_lens.size(); ++s)
      for (int i = 0; i < q_lens[s]; ++i, ++row) {
        const int pos = c.seq_lens[s] - q_lens[s] + i;
        auto ref = attention_ref(c, s, q.data<float>() + row * q.size(1), pos, p, DType::kF32);
        for (int e = 0; e < 3 * width; ++e)
          ASSERT_NEAR(at(out, row, e), ref[e], 2e-5) << width << " seq " << s << " pos " << pos;
      }
  }
}

TEST_P(CpuBackendTest, PagedAttentionRowsAreBatchInvariant) {
  // The same query rows computed in one batch, alone, and as chunks give identical bits.
  PagedCase c;
  c.num_blocks = 80;
  c.seq_lens = {300, 90};
  c.build(backend_, 200);
  AttentionParams p;
  p.num_heads = 4;
  p.num_kv_heads = 2;
  p.head_dim = 16;
  p.scale = 0.25f;
  Tensor q = random_tensor({300 + 90, 64}, DType::kF32, 6, 2.0f);
  Tensor all = run_attention(backend_, c, {300, 90}, q, p);
  // Sequence 0's last 50 rows as a chunk on their own.
  PagedCase only0 = c;
  only0.seq_lens = {300};
  Tensor bt0 = c.block_tables.slice(0, 0, 1).contiguous();
  only0.block_tables = bt0;
  Tensor chunk = run_attention(backend_, only0, {50}, q.slice(0, 250, 300), p);
  EXPECT_EQ(0, std::memcmp(chunk.raw(), all.data<float>() + 250 * 64, 50 * 64 * sizeof(float)));
  // Row 299 alone (a decode step).
  Tensor one = run_attention(backend_, only0, {1}, q.slice(0, 299, 300), p);
  EXPECT_EQ(0, std::memcmp(one.raw(), all.data<float>() + 299 * 64, 64 * sizeof(float)));
}

// The first index of each row's largest value, against a plain scan: ties (planted), a maximum at
// either end, rows of -inf, and a strided view (a column slice of wider logits).
TEST_P(CpuBackendTest, ArgmaxRowsTakesTheFirstMaximum) {
  Tensor wide = random_tensor({6, 1100}, DType::kF32, 21, 3.0f);
  Tensor x = wide.slice(1, 50, 1050);
  float* base = wide.data<float>();
  const int64_t ld = wide.stride(0);
  base[0 * ld + 50 + 700] = 9.0f;  // row 0: a tie between 300 and 700, 300 first
  base[0 * ld + 50 + 300] = 9.0f;
  base[1 * ld + 50 + 0] = 9.0f;                                          // row 1: at the start
  base[2 * ld + 50 + 999] = 9.0f;                                        // row 2: at the end
  for (int64_t i = 0; i < 1000; ++i) base[3 * ld + 50 + i] = -INFINITY;  // row 3: index 0
  Tensor got = Tensor::empty({6}, DType::kI32);
  backend_.argmax_rows(x, got);
  for (int64_t r = 0; r < 6; ++r) {
    int32_t want = 0;
    for (int32_t i = 1; i < 1000; ++i)
      if (at(x, r, i) > at(x, r, want)) want = i;
    EXPECT_EQ(got.data<int32_t>()[r], want) << "row " << r;
  }
  EXPECT_EQ(got.data<int32_t>()[0], 300);
  EXPECT_EQ(got.data<int32_t>()[1], 0);
  EXPECT_EQ(got.data<int32_t>()[2], 999);
  EXPECT_EQ(got.data<int32_t>()[3], 0);
}

INSTANTIATE_TEST_SUITE_P(Isa, CpuBackendTest, ::testing::ValuesIn(variants()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace tessera
