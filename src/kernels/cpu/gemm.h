// One thread's share of a matrix product:
//   c[i * ldc + j] = sum_k a[i, k] * w[j, k] (+ bias[j]),  i < m, j in the thread's columns.
// Every output is reduced over k in the same order whatever m, n or the tile it falls in, so a
// row's result does not depend on what else is in the batch (batch invariance).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace tessera::cpu {

inline int64_t round_up(int64_t x, int64_t m) {
  return (x + m - 1) / m * m;
}

// The packed layout of a bf16 weight [n, k] for the AVX-512 kernels (Tensor::layout() value
// kLayoutBf16Tiles): output columns in groups of 16, each group one contiguous run of
// round_up(k, 2) / 2 pairs of input columns, each pair 16 lanes x (w[j][2p], w[j][2p + 1]):
//   packed[(j / 16) * tile_stride(k) + p * 32 + (j % 16) * 2 + e] = w[j][2p + e]
// (zero where j >= n or 2p + e >= k). A 64-byte load is one 32-bit lane per output column
// holding two consecutive weights: shifting left by 16 gives f32 w[j][2p], masking the low half
// gives f32 w[j][2p + 1], so 16 columns advance two steps along k with two f32 FMAs.
inline constexpr uint8_t kLayoutBf16Tiles = 1;
inline int64_t tile_stride(int64_t k) {
  return round_up(k, 2) * 16;
}
inline int64_t packed_bf16_elems(int64_t n, int64_t k) {
  return round_up(n, 16) / 16 * tile_stride(k);
}
// w [n, k] with row stride ldw -> packed (packed_bf16_elems(n, k) values). Output groups
// [g_begin, g_end) only, so that threads can share the work.
void pack_bf16_tiles(const uint16_t* w, int64_t ldw, int64_t n, int64_t k, uint16_t* packed,
                     int64_t g_begin, int64_t g_end);
// w[j][i] of a packed weight.
inline uint16_t packed_bf16_at(const uint16_t* packed, int64_t k, int64_t j, int64_t i) {
  return packed[(j / 16) * tile_stride(k) + (i / 2) * 32 + (j % 16) * 2 + (i % 2)];
}

// The packed layout of an FP8 (E4M3) weight [n, k] quantized per output row (Tensor::layout()
// value kLayoutFp8Tiles, dtype u8): output columns in groups of 16, each group k runs of 16
// codes (one per column), then the rows' f32 scales:
//   bytes[(j / 16) * 16k + i * 16 + j % 16] = q[j][i],  w[j][i] ~= scale[j] * e4m3(q[j][i])
//   scales at fp8_scales_offset(n, k): round_up(n, 16) floats (1 where j >= n; codes 0 there).
// A 16-byte load is one k step for 16 columns; widened to f16 bits it converts with one
// instruction (cpu/gemm_avx512.cc).
inline constexpr uint8_t kLayoutFp8Tiles = 2;
inline int64_t fp8_scales_offset(int64_t n, int64_t k) {
  return round_up(round_up(n, 16) * k, 64);
}
inline int64_t packed_fp8_bytes(int64_t n, int64_t k) {
  return fp8_scales_offset(n, k) + round_up(n, 16) * 4;
}
// Quantizes rows [16 g_begin, 16 g_end) of w [n, k] (row stride ldw, dtype f32, bf16 or f16)
// into packed (packed_fp8_bytes(n, k) bytes): scale[j] = absmax[j] / 448 (1 for a zero row),
// q[j][i] = e4m3(w[j][i] / scale[j]) rounded to nearest even. absmax[j] = max_i |w[j][i]|, or
// row_absmax[j] when given (the whole row's, for a shard of its columns).
void pack_fp8_tiles(const void* w, DType dtype, int64_t ldw, int64_t n, int64_t k,
                    const float* row_absmax, uint8_t* packed, int64_t g_begin, int64_t g_end);
// FP8 weights with a scale per row and block of bc inputs, the inputs starting off values into a
// block (an FP8 checkpoint's weight_block_size; Tensor::layout() kLayoutFp8Blocks, dtype u8,
// shape [n, k]): a 64-byte header holding bc, off and the chunk count ceil((k + off) / bc)
// (int64), the codes in kLayoutFp8Tiles' groups (16 k bytes per group of 16 columns), then per
// chunk round_up(n, 16) f32 scales (1 past n): chunk b holds inputs [max(0, b bc - off),
// min(k, (b + 1) bc - off)). The product sums the chunks' products (cpu_backend.cc).
inline constexpr uint8_t kLayoutFp8Blocks = 3;
inline constexpr int64_t kFp8BlocksHeader = 64;
inline int64_t fp8_blocks_scales_offset(int64_t n, int64_t k) {
  return kFp8BlocksHeader + round_up(round_up(n, 16) * k, 64);
}
inline int64_t packed_fp8_blocks_bytes(int64_t n, int64_t k, int64_t chunks) {
  return fp8_blocks_scales_offset(n, k) + chunks * round_up(n, 16) * 4;
}
// Packs E4M3 codes as they are (an FP8 checkpoint's weight, q [n, k] with row stride ldq, and
// one scale per row) into the same layout: no rounding. Groups [g_begin, g_end). Without
// row_scales only the codes are written (kLayoutFp8Blocks keeps its scales apart).
void pack_fp8_codes(const uint8_t* q, int64_t ldq, int64_t n, int64_t k, const float* row_scales,
                    uint8_t* packed, int64_t g_begin, int64_t g_end);
inline const float* packed_fp8_scales(const uint8_t* packed, int64_t n, int64_t k) {
  return reinterpret_cast<const float*>(packed + fp8_scales_offset(n, k));
}

struct GemmKernels {
  // Whether bf16 weights take the packed path below; the caller packs each weight once
  // (pack_bf16_tiles) and calls gemm_bf16 for column ranges of it.
  bool bf16_packed = false;
  // Columns [lo, hi) of a packed bf16 weight (n >= hi columns, k inputs): c and bias point at
  // column 0 of this weight. Each output is acc = 0; acc = fma(a[i][k'], w[j][k'], acc) for
  // k' = 0, 1, ..., k - 1 in that order; c = acc (+ bias). a is f32: row-major with row stride
  // lda >= k, or, with lda = -1, in pack_tiles' layout (many rows).
  void (*gemm_bf16)(const float* a, int64_t lda, int64_t m, int64_t k, const uint16_t* packed,
                    int64_t lo, int64_t hi, float* c, int64_t ldc, const float* bias) = nullptr;
  // Rows of a in tiles of tile_rows: out[t * k * tile_rows + kk * tile_rows + r] = a[t *
  // tile_rows + r][kk] (zero for rows >= m), tiles [t_begin, t_end); round_bf16 rounds each
  // value to bf16 first (the bf16 matmul precision, as PyTorch rounds bf16 matmul inputs).
  int tile_rows = 1;
  void (*pack_tiles)(const float* a, int64_t lda, int64_t m, int64_t k, float* out, int64_t t_begin,
                     int64_t t_end, bool round_bf16) = nullptr;
  // Columns [lo, hi) of a packed FP8 weight (n columns, k inputs), as gemm_bf16 (a row-major,
  // or lda = -1 for pack_tiles' layout where tile_rows > 1): acc = fma(a[i][k'], e4m3(q[j][k']),
  // acc) for k' = 0, 1, ..., k - 1; c = acc * scale[j] (+ bias). Every implementation gives the
  // same bits.
  void (*gemm_fp8)(const float* a, int64_t lda, int64_t m, int64_t k, const uint8_t* packed,
                   int64_t n, int64_t lo, int64_t hi, float* c, int64_t ldc,
                   const float* bias) = nullptr;
  // Columns [lo, hi) of inputs [0, k) of FP8 codes in kLayoutFp8Tiles' groups, group g at
  // codes + g gs (gs >= 16 k: a range of a wider weight's inputs): acc as gemm_fp8, c = acc *
  // scale[j] (scale and c point at column 0; scale is read in whole groups of 16). a is
  // row-major (tile_k = 0), or with tile_k > 0 in pack_tiles' layout of tile_k inputs per tile,
  // pointing at the first of the k inputs in tile 0 (where tile_rows > 1).
  void (*gemm_fp8_codes)(const float* a, int64_t lda, int64_t tile_k, int64_t m, int64_t k,
                         const uint8_t* codes, int64_t gs, const float* scale, int64_t lo,
                         int64_t hi, float* c, int64_t ldc) = nullptr;
  // f32 activations with f32, f16 or bf16 weights in their stored layout (converted to f32 in
  // registers).
  void (*gemm_f32)(const float* a, int64_t lda, int64_t m, int64_t k, const void* w, DType wdtype,
                   int64_t ldw, int64_t n, float* c, int64_t ldc, const float* bias) = nullptr;
};

GemmKernels gemm_kernels_generic();
GemmKernels gemm_kernels_avx512();

}  // namespace tessera::cpu
