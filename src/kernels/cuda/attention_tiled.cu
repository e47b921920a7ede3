// Prefill attention on tensor cores: the rows of sequences with several new tokens in a step (a
// prompt or a prefill chunk), flash-attention style. A thread block takes 64 query rows (32 at
// head_dim 256) of one sequence and one query head; they stay in shared memory as 16-bit values
// while the block walks the sequence's keys in tiles of 64, each loaded once for all 64 rows (the
// row-per-block kernel of attention.cu reads every key once per row). Its warps own 16 rows each: S
// = Q K^T and O += P V are 16x16x16 matrix products (nvcuda::wmma, f32 accumulation), the online
// softmax runs on S in shared memory, and O lives there in f32 so that it can be rescaled row by
// row.
//
// Numerics: queries and probabilities are rounded to the cache's 16-bit type for the products,
// as FlashAttention does, so results are within ~1e-2 (bf16) of the f32 reference rather than
// 1e-4. A row's result depends only on its query, its position and the cache: key tiles are
// aligned to absolute positions and the products are row-independent, so the rows around it
// (its tile, the batch) do not change its bits.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cmath>

#include "kernels/cuda/launch.h"

namespace tessera::cuda {

namespace {

using namespace nvcuda;

constexpr int kTileKeys = 64;  // keys per step
// Query rows per block, 16 per warp: 64, or 32 for head_dim 256, whose tiles would not fit an
// A100's 164 KB of shared memory at 64 rows.
__host__ __device__ constexpr int tile_rows(int d) {
  return d > 128 ? 32 : 64;
}
__host__ __device__ constexpr int tile_threads(int d) {
  return tile_rows(d) / 16 * 32;
}
constexpr int kPadHalf = 8;   // 16-bit row padding (elements): keeps wmma's 32-byte alignment
constexpr int kPadFloat = 4;  // f32 row padding (elements)

// A tile of the step: rows [row0, row0 + 64) of the batch, all of sequence `seq` (-1: none).
struct Tile {
  int32_t seq;
  int32_t row0;
};

template <typename T>
__device__ __forceinline__ T to_t(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 to_t<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ __forceinline__ __half to_t<__half>(float x) {
  return __float2half(x);
}

size_t round_up(size_t n, size_t to) {
  return (n + to - 1) / to * to;
}

// Shared memory of one block for head dim D, in bytes, and where each part starts.
struct Layout {
  int ld_half, ld_s, ld_p, ld_o;
  size_t q, k, v, s, p, o, ml, total;
  __host__ __device__ explicit Layout(int d) {
    const int rows = tile_rows(d);
    ld_half = d + kPadHalf;
    ld_s = kTileKeys + kPadFloat;
    ld_p = kTileKeys + kPadHalf;
    ld_o = d + kPadFloat;
    size_t at = 0;
    q = take(&at, sizeof(uint16_t) * rows * ld_half);
    k = take(&at, sizeof(uint16_t) * kTileKeys * ld_half);
    v = take(&at, sizeof(uint16_t) * kTileKeys * ld_half);
    s = take(&at, sizeof(float) * rows * ld_s);
    p = take(&at, sizeof(uint16_t) * rows * ld_p);
    o = take(&at, sizeof(float) * rows * ld_o);
    ml = take(&at, sizeof(float) * rows * 2);
    total = at;
  }
  // Each part starts on a 128-byte boundary (wmma wants 32).
  __host__ __device__ static size_t take(size_t* at, size_t bytes) {
    const size_t start = *at;
    *at = (*at + bytes + 127) / 128 * 128;
    return start;
  }
};

// One block: the step's tiles, each multi-row sequence cut into tiles of `rows` rows in order.
__global__ void tile_table_kernel(const int32_t* query_start, int num_seqs, int rows, Tile* tiles,
                                  int max_tiles) {
  __shared__ int counts[1024];
  const int per = (num_seqs + blockDim.x - 1) / blockDim.x;
  const int s0 = threadIdx.x * per, s1 = min(num_seqs, s0 + per);
  int mine = 0;
  for (int s = s0; s < s1; ++s) {
    const int n = query_start[s + 1] - query_start[s];
    if (n > 1) mine += (n + rows - 1) / rows;
  }
  counts[threadIdx.x] = mine;
  __syncthreads();
  // Exclusive prefix sum (1024 entries; a simple pass per thread is enough here).
  int before = 0;
  for (int i = 0; i < static_cast<int>(threadIdx.x); ++i) before += counts[i];
  int next = before;
  for (int s = s0; s < s1; ++s) {
    const int32_t q0 = query_start[s], n = query_start[s + 1] - q0;
    if (n <= 1) continue;
    for (int32_t r = 0; r < n; r += rows)
      if (next < max_tiles) tiles[next++] = Tile{s, q0 + r};
  }
  __syncthreads();
  if (threadIdx.x == blockDim.x - 1)
    for (int i = next; i < max_tiles; ++i) tiles[i] = Tile{-1, 0};
}

template <typename T, int D>
__global__ void __launch_bounds__(tile_threads(D))
    tiled_attention_kernel(AttentionLaunch a, const Tile* tiles) {
  constexpr int kTileRows = tile_rows(D), kThreads = tile_threads(D);
  const Tile tile = tiles[blockIdx.x];
  if (tile.seq < 0) return;
  const int h = blockIdx.y;
  const AttentionParams& p = a.params;
  const Layout L(D);
  extern __shared__ __align__(128) unsigned char smem[];
  T* q_s = reinterpret_cast<T*>(smem + L.q);
  T* k_s = reinterpret_cast<T*>(smem + L.k);
  T* v_s = reinterpret_cast<T*>(smem + L.v);
  float* s_s = reinterpret_cast<float*>(smem + L.s);
  T* p_s = reinterpret_cast<T*>(smem + L.p);
  float* o_s = reinterpret_cast<float*>(smem + L.o);
  float* m_s = reinterpret_cast<float*>(smem + L.ml);
  float* l_s = m_s + kTileRows;

  const int seq = tile.seq;
  const int32_t q0 = a.query_start[seq], q_len = a.query_start[seq + 1] - q0;
  const int32_t rows = min(kTileRows, q0 + q_len - tile.row0);
  const int32_t seq_len = a.seq_lens[seq];
  // Position of the tile's first row; row r sits at pos0 + r.
  const int32_t pos0 = seq_len - q_len + (tile.row0 - q0);
  const int32_t w = p.sliding_window;
  const int32_t last_key = pos0 + rows - 1;
  const int32_t first_key = w > 0 ? max(0, pos0 - w + 1) : 0;
  const int group = p.num_heads / p.num_kv_heads, kv_head = h / group;
  const int bs = a.block_size;
  const T* k_cache = static_cast<const T*>(a.k_cache);
  const T* v_cache = static_cast<const T*>(a.v_cache);
  const int32_t* table = a.block_tables + static_cast<int64_t>(seq) * a.max_blocks;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  // Queries (rounded to T; rows past the sequence are zero), O = 0, m = -inf, l = 0.
  for (int i = threadIdx.x; i < kTileRows * D; i += kThreads) {
    const int r = i / D, e = i % D;
    const float x =
        r < rows
            ? a.q[static_cast<int64_t>(tile.row0 + r) * a.ldq + static_cast<int64_t>(h) * D + e]
            : 0.0f;
    q_s[r * L.ld_half + e] = to_t<T>(x);
    o_s[r * L.ld_o + e] = 0.0f;
  }
  for (int r = threadIdx.x; r < kTileRows; r += kThreads) {
    m_s[r] = -INFINITY;
    l_s[r] = 0.0f;
  }

  // Key tiles aligned to multiples of 64 positions, from the first any row sees to the last.
  for (int32_t k0 = first_key / kTileKeys * kTileKeys; k0 <= last_key; k0 += kTileKeys) {
    __syncthreads();  // the previous tile's K and V are no longer read
    // K and V rows of the tile, 16 bytes at a time; keys past the last are zero (a zero V row
    // keeps 0 * garbage out of O).
    constexpr int kChunks = D * static_cast<int>(sizeof(T)) / 16;
    for (int i = threadIdx.x; i < kTileKeys * kChunks; i += kThreads) {
      const int j = i / kChunks, c = i % kChunks;
      const int32_t key = k0 + j;
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (key <= last_key) {
        const int64_t base =
            ((static_cast<int64_t>(table[key / bs]) * p.num_kv_heads + kv_head) * bs + key % bs) *
            D;
        kv = reinterpret_cast<const uint4*>(k_cache + base)[c];
        vv = reinterpret_cast<const uint4*>(v_cache + base)[c];
      }
      reinterpret_cast<uint4*>(k_s + j * L.ld_half)[c] = kv;
      reinterpret_cast<uint4*>(v_s + j * L.ld_half)[c] = vv;
    }
    __syncthreads();

    // S [16 x 64] of this warp's rows = Q K^T.
    const int r0 = warp * 16;
    for (int nb = 0; nb < kTileKeys / 16; ++nb) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kb;
        wmma::load_matrix_sync(qa, q_s + r0 * L.ld_half + kk * 16, L.ld_half);
        wmma::load_matrix_sync(kb, k_s + nb * 16 * L.ld_half + kk * 16, L.ld_half);
        wmma::mma_sync(acc, qa, kb, acc);
      }
      wmma::store_matrix_sync(s_s + r0 * L.ld_s + nb * 16, acc, L.ld_s, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax of each of the warp's rows: a lane takes two keys.
    for (int rr = 0; rr < 16; ++rr) {
      const int r = r0 + rr;
      const int32_t pos = pos0 + r;
      const int32_t lo = w > 0 ? max(0, pos - w + 1) : 0;
      float score[2];
      float row_max = -INFINITY;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int j = lane + 32 * c;
        const int32_t key = k0 + j;
        float x = -INFINITY;
        if (r < rows && key <= pos && key >= lo) {
          x = s_s[r * L.ld_s + j] * p.scale;
          if (p.softcap > 0) x = p.softcap * tanhf(x / p.softcap);
        }
        score[c] = x;
        row_max = fmaxf(row_max, x);
      }
      for (int o = 16; o > 0; o >>= 1)
        row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, o));
      const float m_old = m_s[r];
      const float m_new = fmaxf(m_old, row_max);
      // No key seen yet (m_new = -inf): nothing to scale, nothing to add.
      const float corr = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);
      float sum = 0.0f;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const float pj = m_new == -INFINITY ? 0.0f : expf(score[c] - m_new);
        sum += pj;
        p_s[r * L.ld_p + lane + 32 * c] = to_t<T>(pj);
      }
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      for (int e = lane; e < D; e += 32) o_s[r * L.ld_o + e] *= corr;
      __syncwarp();
      if (lane == 0) {
        m_s[r] = m_new;
        l_s[r] = l_s[r] * corr + sum;
      }
    }
    __syncwarp();

    // O [16 x D] += P [16 x 64] V [64 x D], accumulating into O where it lives.
    for (int nb = 0; nb < D / 16; ++nb) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, o_s + r0 * L.ld_o + nb * 16, L.ld_o, wmma::mem_row_major);
      for (int kk = 0; kk < kTileKeys / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vb;
        wmma::load_matrix_sync(pa, p_s + r0 * L.ld_p + kk * 16, L.ld_p);
        wmma::load_matrix_sync(vb, v_s + kk * 16 * L.ld_half + nb * 16, L.ld_half);
        wmma::mma_sync(acc, pa, vb, acc);
      }
      wmma::store_matrix_sync(o_s + r0 * L.ld_o + nb * 16, acc, L.ld_o, wmma::mem_row_major);
    }
    __syncwarp();
  }
  __syncthreads();
  for (int i = threadIdx.x; i < rows * D; i += kThreads) {
    const int r = i / D, e = i % D;
    a.out[static_cast<int64_t>(tile.row0 + r) * a.ldo + static_cast<int64_t>(h) * D + e] =
        o_s[r * L.ld_o + e] / l_s[r];
  }
}

int max_tiles(const AttentionLaunch& a) {
  const int rows = tile_rows(a.params.head_dim);
  return static_cast<int>((a.tokens + rows - 1) / rows) + a.num_seqs;
}

template <typename T, int D>
void launch_tiled(const AttentionLaunch& a, const Tile* tiles, int n, cudaStream_t stream) {
  const size_t bytes = Layout(D).total;
  static bool configured = false;  // per instantiation; the attribute is per function
  if (!configured) {
    cudaFuncSetAttribute(tiled_attention_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(bytes));
    configured = true;
  }
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(a.params.num_heads));
  tiled_attention_kernel<T, D><<<grid, tile_threads(D), bytes, stream>>>(a, tiles);
}

}  // namespace

bool tiled_attention_applies(const AttentionLaunch& a) {
  const bool half = a.kv_dtype == DType::kBF16 || a.kv_dtype == DType::kF16;
  const int d = a.params.head_dim;
  return half && (d == 64 || d == 128 || d == 256) && a.tokens > a.num_seqs;
}

size_t tiled_attention_scratch_bytes(const AttentionLaunch& a) {
  return round_up(static_cast<size_t>(max_tiles(a)) * sizeof(Tile), 256);
}

void launch_tiled_attention(const AttentionLaunch& a, void* scratch, cudaStream_t stream) {
  Tile* tiles = static_cast<Tile*>(scratch);
  const int n = max_tiles(a);
  tile_table_kernel<<<1, 1024, 0, stream>>>(a.query_start, a.num_seqs, tile_rows(a.params.head_dim),
                                            tiles, n);
  const bool bf16 = a.kv_dtype == DType::kBF16;
  switch (a.params.head_dim) {
    case 64:
      bf16 ? launch_tiled<__nv_bfloat16, 64>(a, tiles, n, stream)
           : launch_tiled<__half, 64>(a, tiles, n, stream);
      break;
    case 128:
      bf16 ? launch_tiled<__nv_bfloat16, 128>(a, tiles, n, stream)
           : launch_tiled<__half, 128>(a, tiles, n, stream);
      break;
    default:
      bf16 ? launch_tiled<__nv_bfloat16, 256>(a, tiles, n, stream)
           : launch_tiled<__half, 256>(a, tiles, n, stream);
  }
}

}  // namespace tessera::cuda
