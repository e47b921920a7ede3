// The CUDA backend against its CPU twin, op by op: fresh random inputs, outputs poisoned with NaN
// before each op (so an element the kernel never wrote fails), compared by ||gpu - cpu|| / ||cpu||
// with a tolerance per dtype. Skips, saying why, where no GPU is usable (label `cuda`).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "test_util.h"

namespace tessera {
namespace {

using testing::at;
using testing::i32_tensor;
using testing::random_tensor;

// Element (i, j) of a 2-d view of any float tensor with at most 2 non-trivial dims.
Tensor as_2d(const Tensor& t) {
  if (t.dim() == 2) return t;
  if (t.dim() == 1) return t.reshape({1, t.size(0)});
  return t.reshape({t.size(0), t.numel() / t.size(0)});
}

::testing::AssertionResult close(const Tensor& got_t, const Tensor& want_t, double tol) {
  const Tensor got = as_2d(got_t), want = as_2d(want_t);
  if (got.size(0) != want.size(0) || got.size(1) != want.size(1))
    return ::testing::AssertionFailure()
           << "shapes " << got.shape_string() << " vs " << want.shape_string();
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < want.size(0); ++i)
    for (int64_t j = 0; j < want.size(1); ++j) {
      const double g = at(got, i, j), w = at(want, i, j);
      if (std::isnan(g))
        return ::testing::AssertionFailure() << "element (" << i << ", " << j << ") is NaN";
      diff += (g - w) * (g - w);
      norm += w * w;
    }
  const double rel = std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
  if (rel > tol) return ::testing::AssertionFailure() << "relative error " << rel << " > " << tol;
  return ::testing::AssertionSuccess() << "relative error " << rel;
}

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (cuda_device_count(&why) == 0) GTEST_SKIP() << "no usable CUDA device: " << why;
    gpu_ = make_cuda_backend({});
  }

  Tensor up(const Tensor& host) {
    Tensor d = gpu_->empty(host.shape(), host.dtype());
    gpu_->copy(host, d);
    return d;
  }
  Tensor down(const Tensor& dev) {
    Tensor h = Tensor::empty(dev.shape(), dev.dtype());
    gpu_->copy(dev, h);
    return h;
  }
  // A device f32 tensor full of NaN.
  Tensor poisoned(std::initializer_list<int64_t> shape) {
    Tensor h = Tensor::empty(shape, DType::kF32);
    std::fill(h.data<float>(), h.data<float>() + h.numel(),
              std::numeric_limits<float>::quiet_NaN());
    return up(h);
  }

  uint64_t seed_ = std::random_device{}();
  ThreadPool pool_{2};
  CpuBackend cpu_{pool_};
  std::unique_ptr<Backend> gpu_;
};

TEST_F(CudaBackendTest, CopiesBetweenHostDeviceAndStridedViews) {
  Tensor host = random_tensor({6, 40}, DType::kF32, seed_);
  Tensor dev = up(host);
  EXPECT_TRUE(close(down(dev), host, 0));
  // Into a column slice of a wider device tensor, back out of it, and device to device.
  Tensor wide = poisoned({6, 64});
  gpu_->copy(host, wide.slice(1, 10, 50));
  EXPECT_TRUE(close(down(wide.slice(1, 10, 50)), host, 0));
  Tensor other = poisoned({6, 48});
  gpu_->copy(wide.slice(1, 10, 50), other.slice(1, 4, 44));
  EXPECT_TRUE(close(down(other).slice(1, 4, 44), host, 0));
  // bf16 bytes travel unchanged.
  Tensor b = random_tensor({3, 17}, DType::kBF16, seed_ + 1);
  Tensor back = down(up(b));
  EXPECT_EQ(std::memcmp(back.raw(), b.raw(), b.nbytes()), 0);
}

// Pinned host tensors: device copies to and from them keep every byte, and a freed one is
// handed out again for a size of its class (pinning is slow; logits come back every step).
TEST_F(CudaBackendTest, PinnedHostTensorsRoundTripAndAreReused) {
  Tensor src = random_tensor({300, 1000}, DType::kF32, seed_);
  Tensor pinned = gpu_->empty_host({300, 1000}, DType::kF32);
  EXPECT_EQ(pinned.device(), Device::kCPU);
  Tensor dev = up(src);
  gpu_->copy(dev, pinned);
  EXPECT_EQ(std::memcmp(pinned.raw(), src.raw(), src.nbytes()), 0);
  Tensor back = gpu_->empty({300, 1000}, DType::kF32);
  gpu_->copy(pinned, back);
  EXPECT_EQ(std::memcmp(down(back).raw(), src.raw(), src.nbytes()), 0);
  void* first = pinned.raw();
  pinned = Tensor();
  Tensor again = gpu_->empty_host({290, 1000}, DType::kF32);  // the same 2 MiB class
  EXPECT_EQ(again.raw(), first);
}

TEST_F(CudaBackendTest, LinearMatchesCpuForEveryWeightDtype) {
  const int64_t k = 384, n1 = 200, n2 = 88;
  // bf16/f16 round the activations to 16 bits (cuBLASLt's inputs); the CPU keeps them in f32.
  const std::pair<DType, double> cases[] = {
      {DType::kF32, 1e-5}, {DType::kBF16, 8e-3}, {DType::kF16, 2e-3}};
  for (auto [dtype, tol] : cases)
    for (int64_t m : {1, 5, 64, 300}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " m=" + std::to_string(m));
      // x is a column slice (a row stride and an offset), as q/k/v slices of a fused output are.
      Tensor x_wide = random_tensor({m, k + 16}, DType::kF32, seed_ + m);
      Tensor x = x_wide.slice(1, 8, 8 + k);
      Tensor w1 = random_tensor({n1, k}, dtype, seed_ + 2, 0.1f);
      Tensor w2 = random_tensor({n2, k}, dtype, seed_ + 3, 0.1f);
      Tensor b1 = random_tensor({n1}, DType::kF32, seed_ + 4);
      LinearSegment cpu_segs[2] = {{w1, b1}, {w2, Tensor()}};
      Tensor want = Tensor::empty({m, n1 + n2}, DType::kF32);
      cpu_.linear(x, cpu_segs, want);

      LinearSegment gpu_segs[2] = {{gpu_->prepare_linear_weight(w1), gpu_->prepare_weight(b1)},
                                   {gpu_->prepare_linear_weight(w2), Tensor()}};
      Tensor xg_wide = up(x_wide);
      Tensor got = poisoned({m, n1 + n2});
      gpu_->linear(xg_wide.slice(1, 8, 8 + k), gpu_segs, got);
      EXPECT_TRUE(close(down(got), want, tol));
    }
}

TEST_F(CudaBackendTest, EmbeddingOfAVocabShard) {
  // Rows [50, 150) of the vocabulary; ids outside give zeros.
  Tensor table = random_tensor({100, 64}, DType::kBF16, seed_);
  Tensor ids = i32_tensor({50, 149, 10, 160, 75, 99});
  Tensor want = Tensor::empty({6, 64}, DType::kF32);
  cpu_.embedding(table, ids, 50, 2.5f, want);
  Tensor got = poisoned({6, 64});
  gpu_->embedding(gpu_->prepare_weight(table), up(ids), 50, 2.5f, got);
  EXPECT_TRUE(close(down(got), want, 0));
}

TEST_F(CudaBackendTest, RmsNormPerRowAndPerHead) {
  for (bool unit_offset : {false, true}) {
    Tensor x = random_tensor({7, 1000}, DType::kF32, seed_ + unit_offset);
    Tensor w = random_tensor({1000}, DType::kF32, seed_ + 2);
    Tensor want = Tensor::empty({7, 1000}, DType::kF32);
    cpu_.rms_norm(x, w, 1e-6f, unit_offset, want);
    Tensor got = poisoned({7, 1000});
    gpu_->rms_norm(up(x), gpu_->prepare_weight(w), 1e-6f, unit_offset, got);
    EXPECT_TRUE(close(down(got), want, 1e-5));
  }
  // [tokens, heads, head_dim]: Qwen3's q/k norms.
  Tensor x = random_tensor({5, 512}, DType::kF32, seed_ + 3);
  Tensor w = random_tensor({128}, DType::kF32, seed_ + 4);
  Tensor want = Tensor::empty({5, 512}, DType::kF32);
  cpu_.rms_norm(x.reshape({5, 4, 128}), w, 1e-5f, false, want.reshape({5, 4, 128}));
  Tensor got = poisoned({5, 512});
  gpu_->rms_norm(up(x).reshape({5, 4, 128}), gpu_->prepare_weight(w), 1e-5f, false,
                 got.reshape({5, 4, 128}));
  EXPECT_TRUE(close(down(got), want, 1e-5));
}

TEST_F(CudaBackendTest, RopeTableAndRotation) {
  Tensor positions = i32_tensor({0, 1, 17, 4095, 131071});
  for (int rot_half : {64, 32}) {  // full and partial rotary over head_dim 128
    Tensor inv = Tensor::empty({rot_half}, DType::kF32);
    for (int i = 0; i < rot_half; ++i)
      inv.data<float>()[i] = static_cast<float>(std::pow(500000.0, -2.0 * i / (2 * rot_half)));
    Tensor want_table = Tensor::empty({5, 2 * rot_half}, DType::kF32);
    cpu_.rope_table(positions, inv, 1.2f, want_table);
    Tensor got_table = poisoned({5, 2 * rot_half});
    gpu_->rope_table(up(positions), gpu_->prepare_weight(inv), 1.2f, got_table);
    EXPECT_TRUE(close(down(got_table), want_table, 1e-6));

    Tensor x_wide = random_tensor({5, 4 * 128 + 64}, DType::kF32, seed_ + rot_half);
    Tensor want = x_wide.contiguous();
    cpu_.rope(want.slice(1, 64, 64 + 4 * 128), 128, want_table);
    Tensor got = up(x_wide);
    gpu_->rope(got.slice(1, 64, 64 + 4 * 128), 128, got_table);
    EXPECT_TRUE(close(down(got), want, 1e-6));
  }
}

TEST_F(CudaBackendTest, GatedActivations) {
  for (Activation act : {Activation::kSilu, Activation::kGeluTanh, Activation::kGelu}) {
    Tensor gu = random_tensor({9, 600}, DType::kF32, seed_ + static_cast<int>(act), 4.0f);
    Tensor want = Tensor::empty({9, 300}, DType::kF32);
    cpu_.gated_activation(gu, act, want);
    Tensor got = poisoned({9, 300});
    gpu_->gated_activation(up(gu), act, got);
    EXPECT_TRUE(close(down(got), want, 1e-6)) << static_cast<int>(act);
  }
}

TEST_F(CudaBackendTest, ActivationsAndLayerNorm) {
  for (Activation act :
       {Activation::kSilu, Activation::kGeluTanh, Activation::kGelu, Activation::kRelu}) {
    Tensor x = random_tensor({9, 300}, DType::kF32, seed_ + static_cast<int>(act), 4.0f);
    Tensor want = Tensor::empty({9, 300}, DType::kF32);
    cpu_.activation(x, act, want);
    Tensor got = up(x);
    gpu_->activation(got, act, got);  // in place, as GPT-2's MLP calls it
    EXPECT_TRUE(close(down(got), want, 1e-6)) << static_cast<int>(act);
  }
  Tensor x = random_tensor({7, 768}, DType::kF32, seed_ + 9, 3.0f);
  Tensor w = random_tensor({768}, DType::kF32, seed_ + 10);
  Tensor b = random_tensor({768}, DType::kF32, seed_ + 11);
  Tensor want = Tensor::empty({7, 768}, DType::kF32);
  cpu_.layer_norm(x, w, b, 1e-5f, want);
  Tensor got = poisoned({7, 768});
  gpu_->layer_norm(up(x), gpu_->prepare_weight(w), gpu_->prepare_weight(b), 1e-5f, got);
  EXPECT_TRUE(close(down(got), want, 1e-5));
}

TEST_F(CudaBackendTest, AddSoftcapAndGatherRows) {
  Tensor a = random_tensor({4, 130}, DType::kF32, seed_);
  Tensor b = random_tensor({4, 130}, DType::kF32, seed_ + 1);
  Tensor want = Tensor::empty({4, 130}, DType::kF32);
  cpu_.add(a, b, want);
  Tensor ga = up(a);
  gpu_->add(ga, up(b), ga);  // out aliases a, as the residual adds do
  EXPECT_TRUE(close(down(ga), want, 0));

  Tensor s = random_tensor({3, 70}, DType::kF32, seed_ + 2, 80.0f);
  Tensor gs = up(s);
  cpu_.softcap(s, 30.0f);
  gpu_->softcap(gs, 30.0f);
  EXPECT_TRUE(close(down(gs), s, 1e-6));

  for (DType dtype : {DType::kF32, DType::kBF16}) {
    Tensor x = random_tensor({7, 33}, dtype, seed_ + 3);
    Tensor rows = i32_tensor({3, 0, 3, 6});
    Tensor want_rows = Tensor::empty({4, 33}, dtype);
    cpu_.gather_rows(x, rows, want_rows);
    Tensor got = gpu_->empty({4, 33}, dtype);
    gpu_->gather_rows(up(x), up(rows), got);
    Tensor back = down(got);
    EXPECT_EQ(std::memcmp(back.raw(), want_rows.raw(), want_rows.nbytes()), 0);
  }

  Tensor x = random_tensor({5, 300}, DType::kF32, seed_ + 4);
  Tensor scale = random_tensor({5}, DType::kF32, seed_ + 5);
  Tensor rows = i32_tensor({6, 0, 2, 7, 3});
  Tensor out = random_tensor({8, 300}, DType::kF32, seed_ + 6);
  Tensor got = up(out);
  cpu_.add_rows_scaled(x, rows, scale, out);
  gpu_->add_rows_scaled(up(x), up(rows), up(scale), got);
  EXPECT_TRUE(close(down(got), out, 1e-6));
}

// Argmax of logits-shaped rows (ties planted) and of a strided view: the CPU's indices exactly.
TEST_F(CudaBackendTest, ArgmaxRowsMatchesCpu) {
  Tensor wide = random_tensor({37, 128300}, DType::kF32, seed_, 3.0f);
  float* base = wide.data<float>();
  for (int64_t r = 0; r < 37; r += 3) {
    base[r * 128300 + 70000] = 9.0f;
    base[r * 128300 + 1234 + r] = 9.0f;  // a tie: the lower index wins
  }
  for (int64_t i = 0; i < 128300; ++i) base[5 * 128300 + i] = -INFINITY;
  for (const Tensor& x : {wide, wide.slice(1, 16, 128256)}) {
    Tensor want = Tensor::empty({37}, DType::kI32);
    cpu_.argmax_rows(x, want);
    Tensor dev = up(wide);
    Tensor got = gpu_->empty({37}, DType::kI32);
    gpu_->argmax_rows(x.size(1) == 128300 ? dev : dev.slice(1, 16, 128256), got);
    const Tensor back = down(got);
    EXPECT_EQ(std::memcmp(back.raw(), want.raw(), want.nbytes()), 0);
  }
}

// Sequences over a shared paged cache with blocks in random physical order: a decode row alone,
// a whole prefill, a decode row of a long context, and a prefill chunk at the end of a longer
// one (the last two span several key partitions; the prefills take the tiled kernel over 16-bit
// caches with head_dim 64, 128 or 256).
struct PagedCase {
  int heads = 8, kv_heads = 2, head_dim = 128, block_size = 16;
  std::vector<int32_t> lens = {1, 37, 700, 1100};
  std::vector<int32_t> new_tokens = {1, 37, 1, 50};
  int num_blocks = 0, max_blocks = 0;
  std::vector<int32_t> tables;  // [seqs, max_blocks]

  explicit PagedCase(uint64_t seed) {
    std::vector<int32_t> need;
    for (int32_t len : lens) {
      need.push_back((len + block_size - 1) / block_size);
      max_blocks = std::max(max_blocks, need.back());
      num_blocks += need.back();
    }
    num_blocks += 23;  // blocks that no sequence owns
    std::vector<int32_t> order(num_blocks);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), std::mt19937_64(seed));
    tables.assign(lens.size() * max_blocks, 0);
    int next = 0;
    for (size_t s = 0; s < lens.size(); ++s)
      for (int b = 0; b < need[s]; ++b) tables[s * max_blocks + b] = order[next++];
  }
  int32_t slot(size_t s, int32_t pos) const {
    return tables[s * max_blocks + pos / block_size] * block_size + pos % block_size;
  }
};

TEST_F(CudaBackendTest, PagedAttentionMatchesCpu) {
  struct Variant {
    int head_dim;
    DType kv_dtype;
    int32_t window;
    float softcap;
  };
  const Variant variants[] = {{128, DType::kF32, 0, 0.0f},
                              {128, DType::kBF16, 0, 0.0f},
                              {64, DType::kF16, 100, 0.0f},
                              {256, DType::kBF16, 600, 20.0f}};
  for (const Variant& var : variants) {
    SCOPED_TRACE(std::string(dtype_name(var.kv_dtype)) + " d=" + std::to_string(var.head_dim) +
                 " window=" + std::to_string(var.window));
    PagedCase c(seed_);
    c.head_dim = var.head_dim;
    const int64_t kv_width = static_cast<int64_t>(c.kv_heads) * c.head_dim;
    const int64_t q_width = static_cast<int64_t>(c.heads) * c.head_dim;

    // Every context position's K/V, written through each backend's write_kv, with two padding
    // rows (slot -1) that must write nothing.
    std::vector<int32_t> slots;
    for (size_t s = 0; s < c.lens.size(); ++s)
      for (int32_t p = 0; p < c.lens[s]; ++p) slots.push_back(c.slot(s, p));
    slots.insert(slots.begin() + 5, -1);
    slots.push_back(-1);
    const int64_t rows = static_cast<int64_t>(slots.size());
    Tensor k = random_tensor({rows, kv_width}, DType::kF32, seed_ + 1);
    Tensor v = random_tensor({rows, kv_width}, DType::kF32, seed_ + 2);
    const std::initializer_list<int64_t> cache_shape = {c.num_blocks, c.block_size, c.kv_heads,
                                                        c.head_dim};
    Tensor kc = Tensor::zeros(cache_shape, var.kv_dtype),
           vc = Tensor::zeros(cache_shape, var.kv_dtype);
    Tensor kg = gpu_->empty(cache_shape, var.kv_dtype), vg = gpu_->empty(cache_shape, var.kv_dtype);
    gpu_->fill_zero(kg);
    gpu_->fill_zero(vg);
    AttentionMetadata write;
    write.slot_mapping = i32_tensor(slots);
    cpu_.write_kv(k, v, kc, vc, write);
    AttentionMetadata write_g;
    write_g.slot_mapping = up(write.slot_mapping);
    gpu_->write_kv(up(k), up(v), kg, vg, write_g);

    std::vector<int32_t> qs = {0};
    for (int32_t n : c.new_tokens) qs.push_back(qs.back() + n);
    const int64_t tokens = qs.back();
    AttentionMetadata meta;
    meta.num_seqs = static_cast<int>(c.lens.size());
    meta.block_size = c.block_size;
    meta.max_seq_len = *std::max_element(c.lens.begin(), c.lens.end());
    meta.query_start = i32_tensor(qs);
    meta.seq_lens = i32_tensor(c.lens);
    meta.block_tables = i32_tensor(c.tables).reshape({meta.num_seqs, c.max_blocks});
    AttentionParams params;
    params.num_heads = c.heads;
    params.num_kv_heads = c.kv_heads;
    params.head_dim = c.head_dim;
    params.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    params.softcap = var.softcap;
    params.sliding_window = var.window;

    Tensor q = random_tensor({tokens, q_width}, DType::kF32, seed_ + 3, 2.0f);
    Tensor want = Tensor::empty({tokens, q_width}, DType::kF32);
    cpu_.paged_attention(q, kc, vc, meta, params, want);

    AttentionMetadata meta_g = meta;
    meta_g.query_start = up(meta.query_start);
    meta_g.seq_lens = up(meta.seq_lens);
    meta_g.block_tables = up(meta.block_tables);
    Tensor qg = up(q);
    Tensor got = poisoned({tokens, q_width});
    gpu_->paged_attention(qg, kg, vg, meta_g, params, got);
    const Tensor got_host = down(got);
    // Decode rows (the row-per-block kernel) within 1e-4 over a 16-bit cache. Prefill rows over a
    // 16-bit cache with head_dim 64, 128 or 256 take the tiled tensor-core kernel, which rounds the
    // queries and probabilities to the cache's type: 2e-2 for bf16, 4e-3 for f16.
    const double exact = var.kv_dtype == DType::kF32 ? 2e-5 : 1e-4;
    const bool tiled = var.kv_dtype != DType::kF32;  // every head_dim here: 64, 128, 256
    const double prefill_tol = !tiled ? exact : var.kv_dtype == DType::kBF16 ? 2e-2 : 4e-3;
    for (size_t s = 0; s < c.lens.size(); ++s) {
      SCOPED_TRACE("sequence " + std::to_string(s));
      const bool multi = c.new_tokens[s] > 1;
      EXPECT_TRUE(close(got_host.slice(0, qs[s], qs[s + 1]), want.slice(0, qs[s], qs[s + 1]),
                        multi ? prefill_tol : exact));
    }
    if (tiled) {
      // The row-per-block kernel alone (TESSERA_ATTENTION_TILED=0) still gives every row within
      // 1e-4.
      gpu_->synchronize();
      setenv("TESSERA_ATTENTION_TILED", "0", 1);
      std::unique_ptr<Backend> split = make_cuda_backend({});
      unsetenv("TESSERA_ATTENTION_TILED");
      Tensor got_split = poisoned({tokens, q_width});
      gpu_->synchronize();
      split->paged_attention(qg, kg, vg, meta_g, params, got_split);
      split->synchronize();
      EXPECT_TRUE(close(down(got_split), want, exact)) << "TESSERA_ATTENTION_TILED=0";

      // A prefill chunk alone gives the same bits as in the batch (its 50 rows span a partial
      // tile, and the batch holds other sequences' tiles).
      AttentionMetadata chunk;
      chunk.num_seqs = 1;
      chunk.block_size = c.block_size;
      chunk.max_seq_len = c.lens[3];
      chunk.query_start = up(i32_tensor({0, c.new_tokens[3]}));
      chunk.seq_lens = up(i32_tensor({c.lens[3]}));
      chunk.block_tables = up(i32_tensor(std::vector<int32_t>(c.tables.begin() + 3 * c.max_blocks,
                                                              c.tables.begin() + 4 * c.max_blocks))
                                  .reshape({1, c.max_blocks}));
      Tensor chunk_out = poisoned({c.new_tokens[3], q_width});
      gpu_->paged_attention(qg.slice(0, qs[3], qs[4]), kg, vg, chunk, params, chunk_out);
      const Tensor chunk_host = down(chunk_out);
      EXPECT_EQ(std::memcmp(chunk_host.raw(), got_host.data<float>() + qs[3] * q_width,
                            chunk_host.nbytes()),
                0)
          << "a prefill chunk alone and in the batch";
    }

    // Batch invariance: the long context's decode row alone gives the same bits.
    AttentionMetadata one;
    one.num_seqs = 1;
    one.block_size = c.block_size;
    one.max_seq_len = c.lens[2];
    one.query_start = up(i32_tensor({0, 1}));
    one.seq_lens = up(i32_tensor({c.lens[2]}));
    one.block_tables = up(i32_tensor(std::vector<int32_t>(c.tables.begin() + 2 * c.max_blocks,
                                                          c.tables.begin() + 3 * c.max_blocks))
                              .reshape({1, c.max_blocks}));
    Tensor alone = poisoned({1, q_width});
    const int64_t row = qs[2];
    gpu_->paged_attention(qg.slice(0, row, row + 1), kg, vg, one, params, alone);
    const Tensor alone_host = down(alone);
    EXPECT_EQ(std::memcmp(alone_host.raw(), got_host.data<float>() + row * q_width,
                          q_width * sizeof(float)),
              0);
  }
}

}  // namespace
}  // namespace tessera
