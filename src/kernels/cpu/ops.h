// Row-range kernels behind CpuBackend's element-wise ops and attention. ops_impl.h holds one
// plain C++ implementation, compiled twice: for AVX-512 (ops_avx512.cc) and for any x86-64
// (ops_generic.cc). Each output row depends only on its own inputs, never on the range it was
// computed in, which keeps results batch invariant.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "kernels/backend.h"

namespace tessera::cpu {

struct AttentionArgs {
  const float* q = nullptr;  // [tokens, num_heads * head_dim], row stride ldq
  int64_t ldq = 0;
  const void* k_cache = nullptr;  // [blocks, block_size, num_kv_heads, head_dim]
  const void* v_cache = nullptr;
  DType kv_dtype = DType::kF32;
  const int32_t* query_start = nullptr;   // [num_seqs + 1]
  const int32_t* seq_lens = nullptr;      // [num_seqs]
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks]
  int64_t max_blocks = 0;
  int block_size = 16;
  float* out = nullptr;  // [tokens, num_heads * head_dim], row stride ldo
  int64_t ldo = 0;
  AttentionParams params;
};

// Keys are visited in tiles of kAttentionTile positions, grouped in partitions of
// kAttentionPartition positions, both aligned to absolute positions.
inline constexpr int kAttentionTile = 16;
inline constexpr int kAttentionPartition = 256;

// Floats of scratch one attention work item needs for `rows` query rows.
int64_t attention_scratch_floats(const AttentionParams& params, int64_t rows);
// Query rows per attention work item: about 64 (row, head) states.
inline int64_t attention_rows_per_item(const AttentionParams& params) {
  int64_t group = params.num_heads / params.num_kv_heads;
  return group >= 64 ? 1 : 64 / group;
}

struct OpsKernels {
  void (*rms_norm)(const float* x, int64_t ldx, float* out, int64_t ldo, int64_t rows,
                   int64_t width, const float* weight, float eps, bool unit_offset);
  void (*layer_norm)(const float* x, int64_t ldx, float* out, int64_t ldo, int64_t rows,
                     int64_t width, const float* weight, const float* bias, float eps);
  void (*activation)(const float* x, int64_t ldx, float* out, int64_t ldo, int64_t rows,
                     int64_t width, Activation act);
  void (*rope_table)(const int32_t* positions, int64_t rows, const float* inv_freq, int rot_half,
                     float scaling, float* table);
  void (*rope)(float* x, int64_t ldx, int64_t rows, int heads, int head_dim, const float* table,
               int rot_half);
  void (*gated_activation)(const float* gate_up, int64_t ldg, float* out, int64_t ldo, int64_t rows,
                           int64_t width, Activation act);
  void (*add)(const float* a, int64_t lda, const float* b, int64_t ldb, float* out, int64_t ldo,
              int64_t rows, int64_t width);
  void (*softcap)(float* x, int64_t ldx, int64_t rows, int64_t width, float cap);
  // Attention for sequence `seq`, kv head `kv_head`, batch rows [row_begin, row_end) (all in
  // that sequence).
  void (*attention)(const AttentionArgs& args, int seq, int kv_head, int64_t row_begin,
                    int64_t row_end, float* scratch);
};

OpsKernels ops_kernels_generic();
OpsKernels ops_kernels_avx512();

// The intrinsics attention kernel (attention_avx512.cc): head_dim a multiple of 16 up to 256
// and block_size a multiple of 16; the portable kernel covers the rest.
bool attention_avx512_supports(const AttentionParams& params, int block_size);
void attention_avx512(const AttentionArgs& args, int seq, int kv_head, int64_t row_begin,
                      int64_t row_end, float* scratch);

}  // namespace tessera::cpu
