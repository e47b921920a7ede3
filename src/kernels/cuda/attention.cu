// Paged attention over the KV cache's block tables: the twin of kernels/cpu's attention, checked
// against it by tests/kernels/cuda_backend_test.cc.
//
// Correct first. A thread block takes one (query row, query head, key partition); its warps take
// the partition's keys in turn, a lane holding head_dim / 32 dimensions, and run an online
// softmax each; the warps then merge in order. Partitions of kAttentionPartition keys (aligned
// to absolute positions) spread a long context over many blocks, which is what keeps a decode
// step of few rows busy on a large GPU; a second kernel merges them in order. Over a 16-bit cache
// with head_dim 64, 128 or 256, the rows of sequences with several new tokens (prefill) go to the
// tiled tensor-core kernel of attention_tiled.cu instead, and these kernels skip them.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "kernels/cuda/launch.h"

namespace tessera::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kPerLane = kMaxHeadDim / 32;

__device__ __forceinline__ float load_kv(const float* p, int64_t i) {
  return p[i];
}
__device__ __forceinline__ float load_kv(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}
__device__ __forceinline__ float load_kv(const __half* p, int64_t i) {
  return __half2float(p[i]);
}

struct RowInfo {
  int seq;
  int32_t new_tokens;  // the sequence's rows in this step
  int32_t pos;         // absolute position of the query row
  int32_t first_part;  // partition of the first key it sees
  int32_t num_parts;   // partitions it spans
  int32_t key_lo;      // first key it sees
};

__device__ RowInfo row_info(const AttentionLaunch& a, int64_t t) {
  // The sequence holding row t: the last s with query_start[s] <= t (empty sequences share a
  // start with the next one, so "last" picks the one that really holds t).
  int lo = 0, hi = a.num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (a.query_start[mid] <= t)
      lo = mid;
    else
      hi = mid - 1;
  }
  RowInfo r;
  r.seq = lo;
  r.pos = a.seq_lens[lo] - (a.query_start[lo + 1] - static_cast<int32_t>(t));
  r.new_tokens = a.query_start[lo + 1] - a.query_start[lo];
  const int32_t w = a.params.sliding_window;
  r.key_lo = w > 0 ? max(0, r.pos - w + 1) : 0;
  r.first_part = r.key_lo / kAttentionPartition;
  r.num_parts = r.pos / kAttentionPartition - r.first_part + 1;
  return r;
}

// Scratch per (row, head, part): d floats of unnormalised output, then m and l.
__device__ __forceinline__ float* partial_at(const AttentionLaunch& a, int max_parts, int64_t t,
                                             int h, int part) {
  const int d = a.params.head_dim;
  const int64_t index = (t * a.params.num_heads + h) * max_parts + part;
  return static_cast<float*>(a.scratch) + index * (d + 2);
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    attention_kernel(AttentionLaunch a, int max_parts, bool skip_multi_row) {
  const int64_t t = blockIdx.x;
  const int h = blockIdx.y, part = blockIdx.z;
  const AttentionParams& p = a.params;
  const RowInfo row = row_info(a, t);
  if (part >= row.num_parts || (skip_multi_row && row.new_tokens > 1)) return;
  const int32_t part_index = row.first_part + part;
  const int32_t k_begin = max(row.key_lo, part_index * kAttentionPartition);
  const int32_t k_end = min(row.pos + 1, (part_index + 1) * kAttentionPartition);

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int d = p.head_dim, group = p.num_heads / p.num_kv_heads, kv_head = h / group;
  const int bs = a.block_size;
  const T* k_cache = static_cast<const T*>(a.k_cache);
  const T* v_cache = static_cast<const T*>(a.v_cache);
  const int32_t* table = a.block_tables + static_cast<int64_t>(row.seq) * a.max_blocks;

  float q[kPerLane], acc[kPerLane];
  const float* qv = a.q + t * a.ldq + static_cast<int64_t>(h) * d;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + 32 * i;
    q[i] = e < d ? qv[e] : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int32_t j = k_begin + warp; j < k_end; j += kWarps) {
    const int64_t base =
        ((static_cast<int64_t>(table[j / bs]) * p.num_kv_heads + kv_head) * bs + j % bs) * d;
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int e = lane + 32 * i;
      if (e < d) dot += q[i] * load_kv(k_cache, base + e);
    }
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    float score = dot * p.scale;
    if (p.softcap > 0) score = p.softcap * tanhf(score / p.softcap);
    const float m_new = fmaxf(m, score);
    const float corr = expf(m - m_new);  // 0 for the first key (m = -inf)
    const float pj = expf(score - m_new);
    l = l * corr + pj;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int e = lane + 32 * i;
      if (e < d) acc[i] = acc[i] * corr + pj * load_kv(v_cache, base + e);
    }
    m = m_new;
  }

  __shared__ float warp_m[kWarps], warp_l[kWarps];
  __shared__ float warp_acc[kWarps][kMaxHeadDim];
  if (lane == 0) {
    warp_m[warp] = m;
    warp_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + 32 * i;
    if (e < d) warp_acc[warp][e] = acc[i];
  }
  __syncthreads();
  float big = -INFINITY;
  for (int w = 0; w < kWarps; ++w) big = fmaxf(big, warp_m[w]);
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    float total_l = 0.0f, o = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      if (warp_m[w] == -INFINITY) continue;  // a warp that had no key
      const float f = expf(warp_m[w] - big);
      total_l += warp_l[w] * f;
      o += warp_acc[w][e] * f;
    }
    if (row.num_parts == 1) {
      a.out[t * a.ldo + static_cast<int64_t>(h) * d + e] = o / total_l;
    } else {
      float* dst = partial_at(a, max_parts, t, h, part);
      dst[e] = o;
      if (e == 0) {
        dst[d] = big;
        dst[d + 1] = total_l;
      }
    }
  }
}

__global__ void merge_partitions_kernel(AttentionLaunch a, int max_parts, bool skip_multi_row) {
  const int64_t t = blockIdx.x;
  const int h = blockIdx.y;
  const RowInfo row = row_info(a, t);
  if (row.num_parts == 1) return;                    // written whole by attention_kernel
  if (skip_multi_row && row.new_tokens > 1) return;  // the tiled kernel's
  const int d = a.params.head_dim;
  float big = -INFINITY;
  for (int part = 0; part < row.num_parts; ++part)
    big = fmaxf(big, partial_at(a, max_parts, t, h, part)[d]);
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    float total_l = 0.0f, o = 0.0f;
    for (int part = 0; part < row.num_parts; ++part) {
      const float* src = partial_at(a, max_parts, t, h, part);
      const float f = expf(src[d] - big);
      total_l += src[d + 1] * f;
      o += src[e] * f;
    }
    a.out[t * a.ldo + static_cast<int64_t>(h) * d + e] = o / total_l;
  }
}

int max_partitions(const AttentionLaunch& a) {
  return a.max_seq_len <= 0 ? 1 : (a.max_seq_len - 1) / kAttentionPartition + 1;
}

}  // namespace

// The partitions' partial results first, then the tiled kernel's tile table.
size_t split_scratch_bytes(const AttentionLaunch& a) {
  const int parts = max_partitions(a);
  if (parts == 1) return 0;
  const size_t bytes = static_cast<size_t>(a.tokens) * a.params.num_heads * parts *
                       (a.params.head_dim + 2) * sizeof(float);
  return (bytes + 255) / 256 * 256;
}

bool use_tiled(const AttentionLaunch& a) {
  return a.tiled && tiled_attention_applies(a);
}

size_t attention_scratch_bytes(const AttentionLaunch& a) {
  return split_scratch_bytes(a) + (use_tiled(a) ? tiled_attention_scratch_bytes(a) : 0);
}

void launch_paged_attention(const AttentionLaunch& a, cudaStream_t stream) {
  if (a.tokens == 0) return;
  const bool tiled = use_tiled(a);
  if (tiled)
    launch_tiled_attention(a, static_cast<char*>(a.scratch) + split_scratch_bytes(a), stream);
  const int parts = max_partitions(a);
  const dim3 grid(static_cast<unsigned>(a.tokens), static_cast<unsigned>(a.params.num_heads),
                  static_cast<unsigned>(parts));
  switch (a.kv_dtype) {
    case DType::kBF16:
      attention_kernel<__nv_bfloat16><<<grid, kWarps * 32, 0, stream>>>(a, parts, tiled);
      break;
    case DType::kF16:
      attention_kernel<__half><<<grid, kWarps * 32, 0, stream>>>(a, parts, tiled);
      break;
    default:
      attention_kernel<float><<<grid, kWarps * 32, 0, stream>>>(a, parts, tiled);
  }
  if (parts > 1) {
    const dim3 merge_grid(static_cast<unsigned>(a.tokens),
                          static_cast<unsigned>(a.params.num_heads));
    merge_partitions_kernel<<<merge_grid, 128, 0, stream>>>(a, parts, tiled);
  }
}

}  // namespace tessera::cuda
