// The device interface. Model, engine and server code call these ops on a Backend& and never
// name a device: kernels/cpu and kernels/cuda implement the same op names.
//
// Conventions: activations are [rows, features] with a contiguous last dimension and any row
// stride (so q, k and v can be column slices of one fused projection output). Weights are stored
// as in Hugging Face checkpoints: a Linear weight is [out_features, in_features], row-major, in
// any float dtype, read in place (possibly as a column slice of a larger tensor).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "core/sys.h"
#include "core/tensor.h"
#include "kernels/op_params.h"

namespace tessera {

// One weight of a fused linear layer: output columns [offset, offset + rows) come from weight
// (shape [rows, in_features]) and an optional f32 bias [rows].
struct LinearSegment {
  Tensor weight;
  Tensor bias;  // undefined when absent
};

// Describes one step's batch over the paged KV cache. The batch is the concatenation of each
// sequence's new tokens (a prefill chunk or one decode token). All tensors are int32 on the
// backend's device.
struct AttentionMetadata {
  int num_seqs = 0;
  int block_size = 16;
  // A bound on seq_lens, known on the host: GPU kernels size their launch by it.
  int32_t max_seq_len = 0;
  Tensor query_start;   // [num_seqs + 1]: tokens of sequence s are rows [qs[s], qs[s+1])
  Tensor seq_lens;      // [num_seqs]: context length after this step (cached + new tokens)
  Tensor block_tables;  // [num_seqs, max_blocks]: physical block of each logical block
  Tensor slot_mapping;  // [num_tokens]: where each new token's K/V goes, -1 = do not write
};

// A recorded sequence of a backend's ops that replays as one launch (a CUDA graph).
class CapturedOps {
 public:
  virtual ~CapturedOps() = default;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;
  // Dtype of activations between ops on this backend.
  virtual DType activation_dtype() const = 0;
  // What --kv-cache-dtype auto means here for a model stored in `model_dtype`.
  virtual DType default_kv_cache_dtype(DType model_dtype) const = 0;
  // Whether write_kv and paged_attention take a cache of this dtype (f32, bf16 and f16 on every
  // backend; FP8 E4M3 where the backend overrides this).
  virtual bool supports_kv_cache_dtype(DType dtype) const {
    return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16;
  }
  // Bytes of the memory this backend's tensors live in: the host's RAM, or the GPU's memory
  // (what --gpu-memory-utilization is a fraction of).
  virtual int64_t memory_capacity_bytes() const { return total_memory_bytes(); }
  // Bytes of that memory in use now, by this process and any other (0 where unknown): on a GPU,
  // what the KV cache budget must leave alone besides the weights (the CUDA context, cuBLAS's
  // workspace, other processes).
  virtual int64_t memory_in_use_bytes() const { return 0; }
  // Bytes of the tensors empty() made that are alive now, and the most alive at once since
  // reset_peak_allocated(); -1 where the backend does not count. A profiling step reads them
  // (engine/profile_run.h).
  virtual int64_t allocated_bytes() const { return -1; }
  virtual int64_t peak_allocated_bytes() const { return -1; }
  virtual void reset_peak_allocated() {}
  // Gives memory that freed tensors left for reuse back to the system (a GPU's cached blocks).
  virtual void release_cached_memory() {}

  // Memory.
  virtual Tensor empty(std::span<const int64_t> shape, DType dtype) = 0;
  Tensor empty(std::initializer_list<int64_t> shape, DType dtype) {
    return empty(std::span<const int64_t>(shape.begin(), shape.size()), dtype);
  }
  // Host memory that this backend copies to and from fastest (a GPU's pinned memory): for the
  // host side of copies made every step (logits, staged communication).
  virtual Tensor empty_host(std::span<const int64_t> shape, DType dtype) {
    return Tensor::empty(shape, dtype);
  }
  Tensor empty_host(std::initializer_list<int64_t> shape, DType dtype) {
    return empty_host(std::span<const int64_t>(shape.begin(), shape.size()), dtype);
  }
  // Copies between tensors of the same shape and dtype, on any devices.
  virtual void copy(const Tensor& src, const Tensor& dst) = 0;
  virtual void fill_zero(const Tensor& dst) = 0;
  // Makes a weight usable by this backend (a no-op on CPU; an upload on GPUs).
  virtual Tensor prepare_weight(const Tensor& host_weight) = 0;
  // Makes a Linear weight [out_features, in_features] usable by linear() (and, for tied
  // embeddings, by embedding()), possibly rearranged into a packed layout for this backend's
  // kernels. Pass the tensor by value with std::move: a backend may then rearrange it in place.
  virtual Tensor prepare_linear_weight(Tensor host_weight) { return prepare_weight(host_weight); }
  // A decoder layer's Linear weight (attention and MLP projections, not the embedding or LM
  // head): what `--quantization` may store in fewer bits (an FP8 layout on the CPU).
  // row_absmax (empty, or one value per output row): the largest |w| of each whole row, for a
  // shard that holds part of every row (row-parallel), so that it is quantized as the whole
  // weight would be on one rank.
  virtual Tensor prepare_layer_weight(Tensor host_weight, std::span<const float> row_absmax) {
    (void)row_absmax;
    return prepare_linear_weight(std::move(host_weight));
  }
  // Whether prepare_fp8_layer_weight takes an FP8 checkpoint's weights as stored (E4M3 codes with
  // scales per row or per row and block of columns); else the loader dequantizes them.
  virtual bool takes_fp8_weights() const { return false; }
  // A decoder layer's Linear weight from codes kF8E4M3 [out_features, in_features] (row stride
  // >= in_features) and scales kF32: [out_features], w[j][i] = scales[j] * e4m3(codes[j][i]), or
  // with block_cols > 0 [out_features, ceil((in_features + block_offset) / block_cols)], w[j][i]
  // = scales[j][(i + block_offset) / block_cols] * e4m3(codes[j][i]) (a shard may start
  // block_offset columns into a block).
  virtual Tensor prepare_fp8_layer_weight(const Tensor& codes, const Tensor& scales,
                                          int64_t block_cols, int64_t block_offset) {
    (void)codes;
    (void)scales;
    (void)block_cols;
    (void)block_offset;
    TESSERA_CHECK(false) << "this backend takes no FP8 weights";
    return {};
  }
  // The widest attention head paged_attention takes (CUDA: its kernel's register budget).
  virtual int max_attention_head_dim() const { return 1 << 20; }
  // Whether prepare_layer_weight quantizes (and so wants row_absmax for row-parallel shards).
  virtual bool quantizes_layer_weights() const { return false; }
  // Bytes that prepare_layer_weight's quantization has saved so far (checkpoint bytes minus
  // prepared bytes).
  virtual int64_t quantization_saved_bytes() const { return 0; }
  virtual void synchronize() {}

  // Recording ops to replay them (CUDA graphs): between begin_capture and end_capture the calling
  // thread's ops are recorded, not run, on the same tensors; replay then runs them again at once.
  // Tensors made while capturing come from a pool kept for captured ops, since a replay writes
  // them again (they are reused only by later captures, which never replay at the same time).
  // end_capture returns null where the ops could not be recorded (then run them as usual).
  virtual bool supports_capture() const { return false; }
  virtual void begin_capture() {}
  virtual std::unique_ptr<CapturedOps> end_capture() { return nullptr; }
  virtual void replay(const CapturedOps& ops) { (void)ops; }

  // out[t, :] = table[ids[t] - vocab_start, :] * scale for ids in [vocab_start, vocab_start +
  // rows(table)), else 0 (vocab-parallel shards sum to the full embedding).
  virtual void embedding(const Tensor& table, const Tensor& ids, int64_t vocab_start, float scale,
                         const Tensor& out) = 0;
  // out[:, segment columns] = x @ segment.weight^T (+ bias), for every segment in order.
  virtual void linear(const Tensor& x, std::span<const LinearSegment> segments,
                      const Tensor& out) = 0;
  // out = x / rms(x) * (unit_offset ? 1 + w : w) over the last dimension of x (2-d or 3-d).
  virtual void rms_norm(const Tensor& x, const Tensor& weight, float eps, bool unit_offset,
                        const Tensor& out) = 0;
  // out = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias over the last dimension of x
  // [T, width] (GPT-2's LayerNorm; out may alias x).
  virtual void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps,
                          const Tensor& out) = 0;
  // table[t, i] = cos(a) * scaling, table[t, R + i] = sin(a) * scaling, a = f32(position[t]) *
  // inv_freq[i], for i < R = rows(inv_freq). Computed once per step, shared by all layers.
  virtual void rope_table(const Tensor& positions, const Tensor& inv_freq, float attention_scaling,
                          const Tensor& table) = 0;
  // Rotary embedding in place on x [tokens, heads * head_dim], Hugging Face "rotate half" layout
  // over the first 2R dims of each head: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).
  virtual void rope(const Tensor& x, int head_dim, const Tensor& table) = 0;
  // out[t, i] = act(gate_up[t, i]) * gate_up[t, F + i], F = out.size(1).
  virtual void gated_activation(const Tensor& gate_up, Activation act, const Tensor& out) = 0;
  // out[t, i] = act(x[t, i]) (an MLP without a gate; out may alias x).
  virtual void activation(const Tensor& x, Activation act, const Tensor& out) = 0;
  // out = a + b (element-wise; out may alias a).
  virtual void add(const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  // x = cap * tanh(x / cap), in place.
  virtual void softcap(const Tensor& x, float cap) = 0;
  // out[i, :] = x[rows[i], :].
  virtual void gather_rows(const Tensor& x, const Tensor& rows, const Tensor& out) = 0;
  // out[r] = the first index of the largest value of row r of x [rows, width] f32; out [rows]
  // int32. What a greedy step needs of its logits, in place of copying them off the device.
  virtual void argmax_rows(const Tensor& x, const Tensor& out) = 0;
  // out[rows[i], :] += scale[i] * x[i, :] for x [n, width] f32, rows [n] int32 (distinct),
  // scale [n] f32: one expert's outputs added, weighted by the router, to the tokens that chose it.
  virtual void add_rows_scaled(const Tensor& x, const Tensor& rows, const Tensor& scale,
                               const Tensor& out) = 0;

  // Writes the new tokens' k and v ([tokens, kv_heads * head_dim]) into the caches at
  // meta.slot_mapping. A cache tensor is allocated as [blocks, block_size, kv_heads, head_dim];
  // how a block's elements are laid out inside is the backend's choice.
  virtual void write_kv(const Tensor& k, const Tensor& v, const Tensor& k_cache,
                        const Tensor& v_cache, const AttentionMetadata& meta) = 0;
  // Causal attention of the batch's queries q [tokens, heads * head_dim] over each sequence's
  // cached keys and values; out [tokens, heads * head_dim].
  virtual void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                               const AttentionMetadata& meta, const AttentionParams& params,
                               const Tensor& out) = 0;
};

}  // namespace tessera
