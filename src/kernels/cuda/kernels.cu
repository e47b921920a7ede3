// Element-wise and row kernels of the CUDA backend: twins of kernels/cpu/ops_impl.h, checked
// against it by tests/kernels/cuda_backend_test.cc. Correct first: one thread per element (or a
// block per row where a row reduces), f32 arithmetic throughout.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>

#include "kernels/cuda/launch.h"

namespace tessera::cuda {

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>((n + kThreads - 1) / kThreads);
}

__device__ __forceinline__ float load_f32(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kBF16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    case DType::kF16:
      return __half2float(static_cast<const __half*>(base)[i]);
    default:
      return static_cast<const float*>(base)[i];
  }
}

__device__ __forceinline__ void store_f32(void* base, DType dtype, int64_t i, float v) {
  switch (dtype) {
    case DType::kBF16:
      static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v);
      break;
    case DType::kF16:
      static_cast<__half*>(base)[i] = __float2half_rn(v);
      break;
    default:
      static_cast<float*>(base)[i] = v;
  }
}

__global__ void embedding_kernel(const void* table, DType dtype, int64_t ld_table,
                                 int64_t table_rows, const int32_t* ids, int64_t vocab_start,
                                 float scale, float* out, int64_t ldo, int64_t width) {
  const int64_t t = blockIdx.x;
  const int64_t r = static_cast<int64_t>(ids[t]) - vocab_start;
  float* o = out + t * ldo;
  const bool inside = r >= 0 && r < table_rows;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x)
    o[i] = inside ? load_f32(table, dtype, r * ld_table + i) * scale : 0.0f;
}

// Sum over the block of one value per thread; every thread gets the total.
__device__ float block_sum(float v) {
  __shared__ float partial[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  float total = 0;
  for (int w = 0; w < warps; ++w) total += partial[w];
  __syncthreads();  // partial is reused by the next call
  return total;
}

__global__ void rms_norm_kernel(const float* x, int64_t ldx_token, float* out, int64_t ldo_token,
                                int64_t heads, int64_t width, const float* weight, float eps,
                                bool unit_offset) {
  const int64_t vec = blockIdx.x;
  const int64_t token = vec / heads, head = vec % heads;
  const float* xr = x + token * ldx_token + head * width;
  float* o = out + token * ldo_token + head * width;
  float ss = 0;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) ss += xr[i] * xr[i];
  const float total = block_sum(ss);
  const float inv = 1.0f / sqrtf(total / static_cast<float>(width) + eps);
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    const float w = unit_offset ? 1.0f + weight[i] : weight[i];
    o[i] = (xr[i] * inv) * w;
  }
}

__global__ void rope_table_kernel(const int32_t* positions, int64_t rows, const float* inv_freq,
                                  int rot_half, float scaling, float* table) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * rot_half) return;
  const int64_t r = idx / rot_half;
  const int i = static_cast<int>(idx % rot_half);
  // The f32 product as Hugging Face computes it; cos and sin at full precision (not __cosf).
  const float angle = static_cast<float>(positions[r]) * inv_freq[i];
  float s, c;
  sincosf(angle, &s, &c);
  table[r * 2 * rot_half + i] = c * scaling;
  table[r * 2 * rot_half + rot_half + i] = s * scaling;
}

__global__ void rope_kernel(float* x, int64_t ldx, int64_t rows, int heads, int head_dim,
                            const float* table, int rot_half) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t per_row = static_cast<int64_t>(heads) * rot_half;
  if (idx >= rows * per_row) return;
  const int64_t r = idx / per_row;
  const int h = static_cast<int>((idx % per_row) / rot_half);
  const int i = static_cast<int>(idx % rot_half);
  const float c = table[r * 2 * rot_half + i], s = table[r * 2 * rot_half + rot_half + i];
  float* v = x + r * ldx + static_cast<int64_t>(h) * head_dim;
  const float x1 = v[i], x2 = v[i + rot_half];
  v[i] = x1 * c - x2 * s;
  v[i + rot_half] = x2 * c + x1 * s;
}

__global__ void gated_activation_kernel(const float* gate_up, int64_t ldg, float* out, int64_t ldo,
                                        int64_t rows, int64_t width, Activation act) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * width) return;
  const int64_t r = idx / width, i = idx % width;
  const float g = gate_up[r * ldg + i], u = gate_up[r * ldg + width + i];
  float a;
  switch (act) {
    case Activation::kSilu:
      a = g / (1.0f + expf(-g));
      break;
    case Activation::kGeluTanh:
      a = 0.5f * g * (1.0f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g)));
      break;
    case Activation::kRelu:
      a = g > 0.0f ? g : 0.0f;
      break;
    default:
      a = 0.5f * g * (1.0f + erff(g * 0.7071067811865476f));
  }
  out[r * ldo + i] = a * u;
}

__device__ float activate(float x, Activation act) {
  switch (act) {
    case Activation::kSilu:
      return x / (1.0f + expf(-x));
    case Activation::kGeluTanh:
      return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case Activation::kRelu:
      return x > 0.0f ? x : 0.0f;
    default:
      return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
  }
}

__global__ void activation_kernel(const float* x, int64_t ldx, float* out, int64_t ldo,
                                  int64_t rows, int64_t width, Activation act) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * width) return;
  const int64_t r = idx / width, i = idx % width;
  out[r * ldo + i] = activate(x[r * ldx + i], act);
}

// One block per row: the mean, then the centred sum of squares (as torch's LayerNorm).
__global__ void layer_norm_kernel(const float* x, int64_t ldx, float* out, int64_t ldo,
                                  int64_t width, const float* weight, const float* bias,
                                  float eps) {
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * ldx;
  float* o = out + static_cast<int64_t>(blockIdx.x) * ldo;
  float s = 0;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) s += xr[i];
  const float mean = block_sum(s) / static_cast<float>(width);
  float ss = 0;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) ss += (xr[i] - mean) * (xr[i] - mean);
  const float inv = 1.0f / sqrtf(block_sum(ss) / static_cast<float>(width) + eps);
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x)
    o[i] = (xr[i] - mean) * inv * weight[i] + bias[i];
}

__global__ void add_kernel(const float* a, int64_t lda, const float* b, int64_t ldb, float* out,
                           int64_t ldo, int64_t rows, int64_t width) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * width) return;
  const int64_t r = idx / width, i = idx % width;
  out[r * ldo + i] = a[r * lda + i] + b[r * ldb + i];
}

__global__ void softcap_kernel(float* x, int64_t ldx, int64_t rows, int64_t width, float cap) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * width) return;
  const int64_t r = idx / width, i = idx % width;
  x[r * ldx + i] = cap * tanhf(x[r * ldx + i] / cap);
}

__global__ void gather_rows_kernel(const char* x, int64_t ldx_bytes, const int32_t* rows, char* out,
                                   int64_t ldo_bytes, int64_t row_bytes) {
  const int64_t i = blockIdx.x;
  const char* src = x + static_cast<int64_t>(rows[i]) * ldx_bytes;
  char* dst = out + i * ldo_bytes;
  for (int64_t b = threadIdx.x; b < row_bytes; b += blockDim.x) dst[b] = src[b];
}

// One block per source row; rows are distinct, so no two blocks write the same output row.
__global__ void add_rows_scaled_kernel(const float* x, int64_t ldx, const int32_t* rows,
                                       const float* scale, int64_t width, float* out, int64_t ldo) {
  const int64_t i = blockIdx.x;
  const float w = scale[i];
  const float* src = x + i * ldx;
  float* dst = out + static_cast<int64_t>(rows[i]) * ldo;
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) dst[j] += w * src[j];
}

__global__ void convert_rows_kernel(const float* x, int64_t ldx, int64_t rows, int64_t width,
                                    void* out, DType dtype) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * width) return;
  const int64_t r = idx / width, i = idx % width;
  store_f32(out, dtype, idx, x[r * ldx + i]);
}

__global__ void add_bias_kernel(float* out, int64_t ldo, int64_t rows, int64_t width,
                                const float* bias) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * width) return;
  const int64_t r = idx / width, i = idx % width;
  out[r * ldo + i] += bias[i];
}

__global__ void write_kv_kernel(const float* k, int64_t ldk, const float* v, int64_t ldv,
                                int64_t tokens, const int32_t* slot_mapping, void* k_cache,
                                void* v_cache, DType dtype, int64_t num_slots, int block_size,
                                int kv_heads, int head_dim) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t per_token = static_cast<int64_t>(kv_heads) * head_dim;
  if (idx >= tokens * per_token) return;
  const int64_t t = idx / per_token, c = idx % per_token;
  const int32_t slot = slot_mapping[t];
  if (slot < 0) return;             // padding
  if (slot >= num_slots) __trap();  // a broken slot mapping: the CPU backend's CHECK
  const int64_t block = slot / block_size, off = slot % block_size;
  const int64_t h = c / head_dim, e = c % head_dim;
  const int64_t dst = ((block * kv_heads + h) * block_size + off) * head_dim + e;
  store_f32(k_cache, dtype, dst, k[t * ldk + c]);
  store_f32(v_cache, dtype, dst, v[t * ldv + c]);
}

}  // namespace

void launch_embedding(const void* table, DType dtype, int64_t ld_table, int64_t table_rows,
                      const int32_t* ids, int64_t tokens, int64_t vocab_start, float scale,
                      float* out, int64_t ldo, int64_t width, cudaStream_t stream) {
  if (tokens == 0) return;
  embedding_kernel<<<static_cast<unsigned>(tokens), kThreads, 0, stream>>>(
      table, dtype, ld_table, table_rows, ids, vocab_start, scale, out, ldo, width);
}

void launch_rms_norm(const float* x, int64_t ldx_token, float* out, int64_t ldo_token,
                     int64_t tokens, int64_t heads, int64_t width, const float* weight, float eps,
                     bool unit_offset, cudaStream_t stream) {
  if (tokens * heads == 0) return;
  const int threads = width >= 1024 ? 1024 : width >= 256 ? 256 : 128;
  rms_norm_kernel<<<static_cast<unsigned>(tokens * heads), threads, 0, stream>>>(
      x, ldx_token, out, ldo_token, heads, width, weight, eps, unit_offset);
}

void launch_rope_table(const int32_t* positions, int64_t rows, const float* inv_freq, int rot_half,
                       float scaling, float* table, cudaStream_t stream) {
  if (rows * rot_half == 0) return;
  rope_table_kernel<<<blocks_for(rows * rot_half), kThreads, 0, stream>>>(positions, rows, inv_freq,
                                                                          rot_half, scaling, table);
}

void launch_rope(float* x, int64_t ldx, int64_t rows, int heads, int head_dim, const float* table,
                 int rot_half, cudaStream_t stream) {
  const int64_t n = rows * heads * rot_half;
  if (n == 0) return;
  rope_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, ldx, rows, heads, head_dim, table,
                                                      rot_half);
}

void launch_gated_activation(const float* gate_up, int64_t ldg, float* out, int64_t ldo,
                             int64_t rows, int64_t width, Activation act, cudaStream_t stream) {
  if (rows * width == 0) return;
  gated_activation_kernel<<<blocks_for(rows * width), kThreads, 0, stream>>>(gate_up, ldg, out, ldo,
                                                                             rows, width, act);
}

void launch_activation(const float* x, int64_t ldx, float* out, int64_t ldo, int64_t rows,
                       int64_t width, Activation act, cudaStream_t stream) {
  if (rows * width == 0) return;
  activation_kernel<<<blocks_for(rows * width), kThreads, 0, stream>>>(x, ldx, out, ldo, rows,
                                                                       width, act);
}

void launch_layer_norm(const float* x, int64_t ldx, float* out, int64_t ldo, int64_t rows,
                       int64_t width, const float* weight, const float* bias, float eps,
                       cudaStream_t stream) {
  if (rows == 0) return;
  const int threads = width >= 1024 ? 1024 : width >= 256 ? 256 : 128;
  layer_norm_kernel<<<static_cast<unsigned>(rows), threads, 0, stream>>>(x, ldx, out, ldo, width,
                                                                         weight, bias, eps);
}

void launch_add(const float* a, int64_t lda, const float* b, int64_t ldb, float* out, int64_t ldo,
                int64_t rows, int64_t width, cudaStream_t stream) {
  if (rows * width == 0) return;
  add_kernel<<<blocks_for(rows * width), kThreads, 0, stream>>>(a, lda, b, ldb, out, ldo, rows,
                                                                width);
}

void launch_softcap(float* x, int64_t ldx, int64_t rows, int64_t width, float cap,
                    cudaStream_t stream) {
  if (rows * width == 0) return;
  softcap_kernel<<<blocks_for(rows * width), kThreads, 0, stream>>>(x, ldx, rows, width, cap);
}

void launch_gather_rows(const void* x, int64_t ldx_bytes, const int32_t* rows, int64_t n, void* out,
                        int64_t ldo_bytes, int64_t row_bytes, cudaStream_t stream) {
  if (n == 0 || row_bytes == 0) return;
  gather_rows_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
      static_cast<const char*>(x), ldx_bytes, rows, static_cast<char*>(out), ldo_bytes, row_bytes);
}

void launch_add_rows_scaled(const float* x, int64_t ldx, const int32_t* rows, const float* scale,
                            int64_t n, int64_t width, float* out, int64_t ldo,
                            cudaStream_t stream) {
  if (n == 0 || width == 0) return;
  add_rows_scaled_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(x, ldx, rows, scale,
                                                                            width, out, ldo);
}

void launch_convert_rows(const float* x, int64_t ldx, int64_t rows, int64_t width, void* out,
                         DType dtype, cudaStream_t stream) {
  if (rows * width == 0) return;
  convert_rows_kernel<<<blocks_for(rows * width), kThreads, 0, stream>>>(x, ldx, rows, width, out,
                                                                         dtype);
}

void launch_add_bias(float* out, int64_t ldo, int64_t rows, int64_t width, const float* bias,
                     cudaStream_t stream) {
  if (rows * width == 0) return;
  add_bias_kernel<<<blocks_for(rows * width), kThreads, 0, stream>>>(out, ldo, rows, width, bias);
}

void launch_fill_zero(void* dst, size_t bytes, cudaStream_t stream) {
  if (bytes) cudaMemsetAsync(dst, 0, bytes, stream);
}

void launch_write_kv(const float* k, int64_t ldk, const float* v, int64_t ldv, int64_t tokens,
                     const int32_t* slot_mapping, void* k_cache, void* v_cache, DType dtype,
                     int64_t num_slots, int block_size, int kv_heads, int head_dim,
                     cudaStream_t stream) {
  const int64_t n = tokens * kv_heads * head_dim;
  if (n == 0) return;
  write_kv_kernel<<<blocks_for(n), kThreads, 0, stream>>>(k, ldk, v, ldv, tokens, slot_mapping,
                                                          k_cache, v_cache, dtype, num_slots,
                                                          block_size, kv_heads, head_dim);
}

namespace {

// One block per row: each thread scans a strided share, then a tree over (value, index) pairs
// keeps the larger value and, between equals, the smaller index (the CPU's first maximum).
constexpr int kArgmaxThreads = 256;

__device__ __forceinline__ bool beats(float v, int i, float best_v, int best_i) {
  return v > best_v || (v == best_v && i < best_i);
}

__global__ void argmax_rows_kernel(const float* x, int64_t ldx, int64_t width, int32_t* out) {
  const float* row = x + blockIdx.x * ldx;
  float best_v = -INFINITY;
  int best_i = INT_MAX;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    const float v = row[i];
    if (beats(v, static_cast<int>(i), best_v, best_i)) {
      best_v = v;
      best_i = static_cast<int>(i);
    }
  }
  __shared__ float vals[kArgmaxThreads];
  __shared__ int idxs[kArgmaxThreads];
  vals[threadIdx.x] = best_v;
  idxs[threadIdx.x] = best_i;
  __syncthreads();
  for (int half = kArgmaxThreads / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half &&
        beats(vals[threadIdx.x + half], idxs[threadIdx.x + half], vals[threadIdx.x],
              idxs[threadIdx.x])) {
      vals[threadIdx.x] = vals[threadIdx.x + half];
      idxs[threadIdx.x] = idxs[threadIdx.x + half];
    }
    __syncthreads();
  }
  // A row of -inf (or NaN) only: index 0, as on the CPU.
  if (threadIdx.x == 0) out[blockIdx.x] = idxs[0] == INT_MAX ? 0 : idxs[0];
}

}  // namespace

void launch_argmax_rows(const float* x, int64_t ldx, int64_t rows, int64_t width, int32_t* out,
                        cudaStream_t stream) {
  if (rows == 0) return;
  argmax_rows_kernel<<<static_cast<unsigned>(rows), kArgmaxThreads, 0, stream>>>(x, ldx, width,
                                                                                 out);
}

}  // namespace tessera::cuda
