// Host-side launchers of the CUDA kernels (kernels.cu, attention.cu). Plain C++ signatures over
// raw device pointers, so that cuda_backend.cc (compiled by the host compiler) checks shapes and
// the .cu files only compute. Every launcher enqueues on `stream` and returns at once; the
// caller checks cudaGetLastError after it (cuda_backend.cc's CUDA_LAUNCH_CHECK).
//
// Activations are f32 [rows, width] with a row stride (in elements) and a contiguous last
// dimension, as on the CPU. Weights and KV caches are f32, bf16 or f16 (`dtype` says which).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"
#include "kernels/op_params.h"

namespace tessera::cuda {

// out[t, :] = table[ids[t] - vocab_start, :] * scale, or 0 when the id is outside the table.
void launch_embedding(const void* table, DType dtype, int64_t ld_table, int64_t table_rows,
                      const int32_t* ids, int64_t tokens, int64_t vocab_start, float scale,
                      float* out, int64_t ldo, int64_t width, cudaStream_t stream);

// Vectors of `width` floats: vector v is token v / heads, head v % heads, at
// x + token * ld_token + head * width (2-d input: heads = 1).
void launch_rms_norm(const float* x, int64_t ldx_token, float* out, int64_t ldo_token,
                     int64_t tokens, int64_t heads, int64_t width, const float* weight, float eps,
                     bool unit_offset, cudaStream_t stream);

// table [rows, 2 * rot_half].
void launch_rope_table(const int32_t* positions, int64_t rows, const float* inv_freq, int rot_half,
                       float scaling, float* table, cudaStream_t stream);
void launch_rope(float* x, int64_t ldx, int64_t rows, int heads, int head_dim, const float* table,
                 int rot_half, cudaStream_t stream);
void launch_gated_activation(const float* gate_up, int64_t ldg, float* out, int64_t ldo,
                             int64_t rows, int64_t width, Activation act, cudaStream_t stream);
// out = act(x), element-wise over [rows, width].
void launch_activation(const float* x, int64_t ldx, float* out, int64_t ldo, int64_t rows,
                       int64_t width, Activation act, cudaStream_t stream);
// LayerNorm over each row of x [rows, width].
void launch_layer_norm(const float* x, int64_t ldx, float* out, int64_t ldo, int64_t rows,
                       int64_t width, const float* weight, const float* bias, float eps,
                       cudaStream_t stream);
void launch_add(const float* a, int64_t lda, const float* b, int64_t ldb, float* out, int64_t ldo,
                int64_t rows, int64_t width, cudaStream_t stream);
void launch_softcap(float* x, int64_t ldx, int64_t rows, int64_t width, float cap,
                    cudaStream_t stream);
// out[i, :] = x[rows[i], :], rows of row_bytes bytes (strides in bytes).
void launch_add_rows_scaled(const float* x, int64_t ldx, const int32_t* rows, const float* scale,
                            int64_t n, int64_t width, float* out, int64_t ldo, cudaStream_t stream);
void launch_gather_rows(const void* x, int64_t ldx_bytes, const int32_t* rows, int64_t n, void* out,
                        int64_t ldo_bytes, int64_t row_bytes, cudaStream_t stream);
// out [rows, width] contiguous, in `dtype` (bf16 or f16) = x rounded to nearest even.
void launch_convert_rows(const float* x, int64_t ldx, int64_t rows, int64_t width, void* out,
                         DType dtype, cudaStream_t stream);
// out[r, i] += bias[i].
void launch_add_bias(float* out, int64_t ldo, int64_t rows, int64_t width, const float* bias,
                     cudaStream_t stream);
void launch_fill_zero(void* dst, size_t bytes, cudaStream_t stream);
// out[r] = the first index of the largest value of row r of x [rows, width] (row stride ldx).
void launch_argmax_rows(const float* x, int64_t ldx, int64_t rows, int64_t width, int32_t* out,
                        cudaStream_t stream);

// KV caches: [blocks, kv_heads, block_size, head_dim] inside (the layout is the backend's
// choice, backend.h), in `dtype`.
void launch_write_kv(const float* k, int64_t ldk, const float* v, int64_t ldv, int64_t tokens,
                     const int32_t* slot_mapping, void* k_cache, void* v_cache, DType dtype,
                     int64_t num_slots, int block_size, int kv_heads, int head_dim,
                     cudaStream_t stream);

struct AttentionLaunch {
  const float* q = nullptr;  // [tokens, heads * head_dim], row stride ldq
  int64_t ldq = 0;
  const void* k_cache = nullptr;
  const void* v_cache = nullptr;
  DType kv_dtype = DType::kF32;
  const int32_t* query_start = nullptr;   // [num_seqs + 1]
  const int32_t* seq_lens = nullptr;      // [num_seqs]
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks]
  int64_t max_blocks = 0;
  int block_size = 16;
  int num_seqs = 0;
  int64_t tokens = 0;
  int32_t max_seq_len = 0;  // bound on seq_lens: sets how many key partitions are launched
  float* out = nullptr;     // [tokens, heads * head_dim], row stride ldo
  int64_t ldo = 0;
  AttentionParams params;
  // Scratch: attention_scratch_bytes() bytes, or null when it is 0.
  void* scratch = nullptr;
  // Rows of sequences with several new tokens go through the tiled tensor-core kernel
  // (attention_tiled.cu) where it applies: a 16-bit cache and head_dim 64, 128 or 256.
  bool tiled = true;
};

// Keys are split into partitions of kAttentionPartition positions aligned to absolute positions;
// each partition runs its own online softmax and partitions merge in order, so a query's result
// depends only on its position and the cache, not on the batch around it.
inline constexpr int kAttentionPartition = 512;
inline constexpr int kMaxHeadDim = 256;
size_t attention_scratch_bytes(const AttentionLaunch& a);
void launch_paged_attention(const AttentionLaunch& a, cudaStream_t stream);

// The tiled kernel (attention_tiled.cu), which launch_paged_attention calls: whether it takes the
// multi-row sequences of `a`, the scratch it needs (its tile table), and its launch.
bool tiled_attention_applies(const AttentionLaunch& a);
size_t tiled_attention_scratch_bytes(const AttentionLaunch& a);
void launch_tiled_attention(const AttentionLaunch& a, void* scratch, cudaStream_t stream);

}  // namespace tessera::cuda
