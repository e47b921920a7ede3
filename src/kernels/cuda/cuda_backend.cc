// The CUDA backend: Backend's ops on one NVIDIA GPU, one stream, f32 activations (as on the CPU,
// so the model code is the same), weights and the KV cache in the checkpoint's 16-bit dtype.
// Matrix products go through cuBLASLt with f32 accumulation; the other ops are the kernels of
// kernels.cu and attention.cu (launch.h).
#include "kernels/cuda/cuda_backend.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_set>
#include <vector>

#include "core/memory_meter.h"
#include "core/status.h"
#include "kernels/cuda/launch.h"

#define TESSERA_CUDA_CHECK(expr)                                     \
  do {                                                               \
    const cudaError_t tessera_cuda_status = (expr);                  \
    TESSERA_CHECK(tessera_cuda_status == cudaSuccess)                \
        << #expr << ": " << cudaGetErrorString(tessera_cuda_status); \
  } while (0)

#define TESSERA_CUBLAS_CHECK(expr)                                                 \
  do {                                                                             \
    const cublasStatus_t tessera_cublas_status = (expr);                           \
    TESSERA_CHECK(tessera_cublas_status == CUBLAS_STATUS_SUCCESS)                  \
        << #expr << ": cuBLAS status " << static_cast<int>(tessera_cublas_status); \
  } while (0)

namespace tessera {

namespace {

using namespace tessera::cuda;

cudaDataType_t cuda_type(DType dtype) {
  switch (dtype) {
    case DType::kBF16:
      return CUDA_R_16BF;
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kF32:
      return CUDA_R_32F;
    default:
      TESSERA_CHECK(false) << "no CUDA matrix type for " << dtype_name(dtype);
      return CUDA_R_32F;
  }
}

// The largest power of two (up to 256) that divides the address: what cuBLASLt may assume.
uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

// Device memory in blocks that return to a free list when their last Tensor goes, so that the
// per-step activations reuse memory instead of calling cudaMalloc (which synchronises). All work
// runs on the backend's one stream, so a block freed on the host may be handed out again at once:
// the stream orders the old reads before the new writes.
class DeviceAllocator {
 public:
  explicit DeviceAllocator(int device) : state_(std::make_shared<State>()) {
    state_->device = device;
  }

  std::shared_ptr<void> allocate(size_t bytes) {
    const size_t size = round_size(std::max<size_t>(bytes, 1));
    void* p = nullptr;
    size_t got = size;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      // While capturing, the graph pool's freed blocks first, then the cache's (which then join
      // the pool: a replay writes them again).
      for (auto* list : {state_->capturing ? &state_->graph_free : nullptr, &state_->free}) {
        if (!list) continue;
        auto it = list->lower_bound(size);
        // Reuse a block at most 25% larger (or 1 MiB larger) than asked, to bound the waste.
        if (it != list->end() && it->first <= std::max(size + size / 4, size + (1u << 20))) {
          p = it->second;
          got = it->first;
          list->erase(it);
          break;
        }
      }
    }
    if (!p) {
      cudaError_t e = cudaMalloc(&p, size);
      if (e != cudaSuccess && !state_->capturing) {
        (void)cudaGetLastError();
        release_cached();
        e = cudaMalloc(&p, size);
      }
      if (e != cudaSuccess) {
        (void)cudaGetLastError();
        size_t free_bytes = 0, total = 0;
        cudaMemGetInfo(&free_bytes, &total);
        fail(ErrorKind::kResourceExhausted,
             "CUDA out of memory: {:.1f} MiB asked, {:.1f} MiB free of {:.1f} MiB on device {} "
             "(lower --gpu-memory-utilization, --max-num-batched-tokens or --max-model-len)",
             size / 1048576.0, free_bytes / 1048576.0, total / 1048576.0, state_->device);
      }
    }
    std::shared_ptr<State> state = state_;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      if (state_->capturing) state_->graph_owned.insert(p);
    }
    return std::shared_ptr<void>(p, [state, got](void* ptr) {
      std::lock_guard<std::mutex> lock(state->mu);
      (state->graph_owned.count(ptr) ? state->graph_free : state->free).emplace(got, ptr);
    });
  }

  void set_capturing(bool on) {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->capturing = on;
  }

  void release_cached() {
    std::lock_guard<std::mutex> lock(state_->mu);
    for (auto& [size, p] : state_->free) cudaFree(p);
    state_->free.clear();
  }

 private:
  struct State {
    std::mutex mu;
    std::multimap<size_t, void*> free;  // size -> block
    // Blocks handed out while capturing belong to the graph pool for good: freed, they wait
    // for the next capture (captured ops replay into them), never for ordinary tensors.
    bool capturing = false;
    std::multimap<size_t, void*> graph_free;
    std::unordered_set<void*> graph_owned;
    int device = 0;
    ~State() {
      for (auto& [size, p] : free) cudaFree(p);
      for (auto& [size, p] : graph_free) cudaFree(p);
    }
  };
  static size_t round_size(size_t bytes) {
    constexpr size_t kSmall = 512, kLarge = 2u << 20;
    return bytes < kLarge ? (bytes + kSmall - 1) / kSmall * kSmall
                          : (bytes + kLarge - 1) / kLarge * kLarge;
  }
  std::shared_ptr<State> state_;
};

// Pinned host memory in size classes (powers of two from 64 KiB), reused when freed: pinning is
// slow (cudaHostAlloc maps and locks pages), and the same sizes come back every step.
class PinnedPool {
 public:
  PinnedPool() : state_(std::make_shared<State>()) {}
  std::shared_ptr<void> allocate(size_t bytes) {
    size_t size = 64u << 10;
    while (size < bytes) size *= 2;
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      auto& list = state_->free[size];
      if (!list.empty()) {
        p = list.back();
        list.pop_back();
      }
    }
    if (!p && cudaHostAlloc(&p, size, cudaHostAllocDefault) != cudaSuccess) {
      (void)cudaGetLastError();
      return nullptr;  // the caller takes ordinary memory
    }
    std::shared_ptr<State> state = state_;
    return std::shared_ptr<void>(p, [state, size](void* ptr) {
      std::lock_guard<std::mutex> lock(state->mu);
      state->free[size].push_back(ptr);
    });
  }

 private:
  struct State {
    std::mutex mu;
    std::map<size_t, std::vector<void*>> free;
    ~State() {
      for (auto& [size, list] : free)
        for (void* p : list) cudaFreeHost(p);
    }
  };
  std::shared_ptr<State> state_;
};

// An instantiated CUDA graph.
class CudaGraph : public CapturedOps {
 public:
  explicit CudaGraph(cudaGraphExec_t exec) : exec_(exec) {}
  ~CudaGraph() override { cudaGraphExecDestroy(exec_); }
  cudaGraphExec_t exec() const { return exec_; }

 private:
  cudaGraphExec_t exec_;
};

// A 2-d view of a tensor's bytes for cudaMemcpy2D: `height` rows of `width` bytes, `pitch` apart.
struct ByteRows {
  char* data;
  size_t pitch, width, height;
};

ByteRows byte_rows(const Tensor& t, int64_t rows) {
  const size_t elem = dtype_size(t.dtype());
  if (t.is_contiguous()) {
    const size_t width = t.nbytes() / static_cast<size_t>(rows);
    return {static_cast<char*>(t.raw()), width, width, static_cast<size_t>(rows)};
  }
  TESSERA_CHECK(t.dim() == 2 && t.stride(1) == 1)
      << "copy of a tensor that is neither contiguous nor rows: " << t.shape_string();
  return {static_cast<char*>(t.raw()), static_cast<size_t>(t.stride(0)) * elem,
          static_cast<size_t>(t.size(1)) * elem, static_cast<size_t>(t.size(0))};
}

cudaMemcpyKind copy_kind(Device src, Device dst) {
  if (src == Device::kCPU)
    return dst == Device::kCPU ? cudaMemcpyHostToHost : cudaMemcpyHostToDevice;
  return dst == Device::kCPU ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice;
}

class CudaBackend : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device), alloc_(device) {
    TESSERA_CUDA_CHECK(cudaSetDevice(device));
    TESSERA_CUDA_CHECK(cudaGetDeviceProperties(&props_, device));
    TESSERA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    TESSERA_CUBLAS_CHECK(cublasLtCreate(&lt_));
    workspace_ = alloc_.allocate(kWorkspaceBytes);
    for (auto& s : staging_) {
      TESSERA_CUDA_CHECK(cudaMallocHost(&s.host, kStagingBytes));
      TESSERA_CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
    }
    const char* sync = std::getenv("TESSERA_CUDA_SYNC");
    sync_each_op_ = sync && *sync && std::string(sync) != "0";
    const char* tiled = std::getenv("TESSERA_ATTENTION_TILED");
    tiled_attention_ = !(tiled && std::string(tiled) == "0");
  }

  ~CudaBackend() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    for (auto& [key, plan] : plans_) {
      cublasLtMatmulDescDestroy(plan.op);
      cublasLtMatrixLayoutDestroy(plan.a);
      cublasLtMatrixLayoutDestroy(plan.b);
      cublasLtMatrixLayoutDestroy(plan.d);
    }
    for (auto& s : staging_) {
      cudaEventDestroy(s.done);
      cudaFreeHost(s.host);
    }
    workspace_.reset();
    cublasLtDestroy(lt_);
    cudaStreamDestroy(stream_);
  }

  using Backend::empty;
  using Backend::empty_host;
  CudaQueue queue() const {
    return {stream_, device_, std::string(props_.uuid.bytes, sizeof props_.uuid.bytes)};
  }
  Device device() const override { return Device::kCUDA; }
  std::string name() const override {
    return fmt::format("cuda (device {}: {}, sm_{}{}, {:.1f} GiB)", device_, props_.name,
                       props_.major, props_.minor, props_.totalGlobalMem / 1073741824.0);
  }
  DType activation_dtype() const override { return DType::kF32; }
  // vLLM's "auto": the model's dtype when it is 16-bit.
  DType default_kv_cache_dtype(DType model_dtype) const override {
    return model_dtype == DType::kBF16 || model_dtype == DType::kF16 ? model_dtype : DType::kF32;
  }
  int64_t memory_capacity_bytes() const override {
    return static_cast<int64_t>(props_.totalGlobalMem);
  }

  Tensor empty(std::span<const int64_t> shape, DType dtype) override {
    use_device();
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    const size_t bytes = static_cast<size_t>(n) * dtype_size(dtype);
    std::shared_ptr<void> block = meter_.track(alloc_.allocate(bytes), static_cast<int64_t>(bytes));
    return Tensor::wrap(block.get(), shape, dtype, block, Device::kCUDA);
  }

  Tensor empty_host(std::span<const int64_t> shape, DType dtype) override {
    use_device();
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::shared_ptr<void> block = pinned_.allocate(static_cast<size_t>(n) * dtype_size(dtype));
    if (!block) return Tensor::empty(shape, dtype);
    return Tensor::wrap(block.get(), shape, dtype, block, Device::kCPU);
  }

  void copy(const Tensor& src, const Tensor& dst) override {
    use_device();
    TESSERA_CHECK(src.dtype() == dst.dtype() && src.numel() == dst.numel());
    TESSERA_CHECK(src.layout() == 0 && dst.layout() == 0);
    if (src.numel() == 0) return;
    // Rows: those of whichever side is strided (both 2-d of one shape when both are).
    int64_t rows = 1;
    if (!src.is_contiguous())
      rows = src.size(0);
    else if (!dst.is_contiguous())
      rows = dst.size(0);
    const ByteRows s = byte_rows(src, rows), d = byte_rows(dst, rows);
    TESSERA_CHECK(s.width == d.width && s.height == d.height);
    const cudaMemcpyKind kind = copy_kind(src.device(), dst.device());
    if (capturing_ && kind != cudaMemcpyDeviceToDevice) {
      // The host's side of a copy cannot be recorded: the capture fails, and its ops (recorded,
      // not run) produce nothing anyone reads.
      capture_broken_ = true;
      return;
    }
    if (kind == cudaMemcpyHostToHost) {
      for (size_t r = 0; r < s.height; ++r)
        std::memcpy(d.data + r * d.pitch, s.data + r * s.pitch, s.width);
      return;
    }
    TESSERA_CUDA_CHECK(
        cudaMemcpy2DAsync(d.data, d.pitch, s.data, s.pitch, s.width, s.height, kind, stream_));
    // The host reads what it asked for as soon as copy returns.
    if (kind == cudaMemcpyDeviceToHost) TESSERA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    after_op("copy");
  }

  void fill_zero(const Tensor& dst) override {
    use_device();
    TESSERA_CHECK(dst.is_contiguous() && dst.device() == Device::kCUDA);
    launch_fill_zero(dst.raw(), dst.nbytes(), stream_);
    after_op("fill_zero");
  }

  Tensor prepare_weight(const Tensor& host) override { return upload(host); }
  Tensor prepare_linear_weight(Tensor host) override { return upload(host); }
  void synchronize() override {
    use_device();
    TESSERA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  bool supports_capture() const override { return true; }
  void begin_capture() override {
    use_device();
    TESSERA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    alloc_.set_capturing(true);
    capture_broken_ = false;
    // Relaxed: cudaMalloc (a new block for the pool) is allowed while capturing.
    TESSERA_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
    capturing_ = true;
  }
  std::unique_ptr<CapturedOps> end_capture() override {
    use_device();
    cudaGraph_t graph = nullptr;
    const cudaError_t e = cudaStreamEndCapture(stream_, &graph);
    capturing_ = false;
    alloc_.set_capturing(false);
    if (e != cudaSuccess || capture_broken_ || !graph) {
      (void)cudaGetLastError();
      if (graph) cudaGraphDestroy(graph);
      spdlog::warn("CUDA graph capture failed ({}): running op by op",
                   capture_broken_ ? "an op that needs the host" : cudaGetErrorString(e));
      return nullptr;
    }
    cudaGraphExec_t exec = nullptr;
    const cudaError_t ie = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (ie != cudaSuccess) {
      (void)cudaGetLastError();
      spdlog::warn("CUDA graph instantiation failed ({}): running op by op",
                   cudaGetErrorString(ie));
      return nullptr;
    }
    return std::make_unique<CudaGraph>(exec);
  }
  void replay(const CapturedOps& ops) override {
    use_device();
    TESSERA_CUDA_CHECK(cudaGraphLaunch(static_cast<const CudaGraph&>(ops).exec(), stream_));
    after_op("graph replay");
  }
  int64_t allocated_bytes() const override { return meter_.in_use(); }
  int64_t peak_allocated_bytes() const override { return meter_.peak(); }
  void reset_peak_allocated() override { meter_.reset_peak(); }
  void release_cached_memory() override { alloc_.release_cached(); }
  int64_t memory_in_use_bytes() const override {
    use_device();
    size_t free_bytes = 0, total = 0;
    TESSERA_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
    return static_cast<int64_t>(total - free_bytes);
  }

  void embedding(const Tensor& table, const Tensor& ids, int64_t vocab_start, float scale,
                 const Tensor& out) override {
    use_device();
    check_rows(table, "embedding table");
    check_f32_rows(out, "embedding output");
    check_device(ids, "ids");
    TESSERA_CHECK(ids.dtype() == DType::kI32 && ids.numel() == out.size(0));
    TESSERA_CHECK_EQ(table.size(1), out.size(1));
    launch_embedding(table.raw(), table.dtype(), table.stride(0), table.size(0),
                     ids.data<int32_t>(), out.size(0), vocab_start, scale, out.data<float>(),
                     out.stride(0), out.size(1), stream_);
    after_op("embedding");
  }

  void linear(const Tensor& x, std::span<const LinearSegment> segments,
              const Tensor& out) override {
    use_device();
    check_f32_rows(x, "linear input");
    check_f32_rows(out, "linear output");
    const int64_t m = x.size(0), k = x.size(1);
    TESSERA_CHECK_EQ(out.size(0), m);
    int64_t n_total = 0;
    for (const LinearSegment& seg : segments) {
      check_rows(seg.weight, "linear weight");
      TESSERA_CHECK(seg.weight.is_contiguous()) << "linear weights are uploaded contiguous";
      TESSERA_CHECK(seg.weight.size(1) == k)
          << "weight " << seg.weight.shape_string() << " vs input " << x.shape_string();
      if (seg.bias.defined()) {
        check_device(seg.bias, "bias");
        TESSERA_CHECK(seg.bias.dtype() == DType::kF32 && seg.bias.numel() == seg.weight.size(0));
      }
      n_total += seg.weight.size(0);
    }
    TESSERA_CHECK_EQ(out.size(1), n_total);
    if (m == 0 || n_total == 0) return;
    // 16-bit weights multiply 16-bit activations (rounded once per call and dtype), with f32
    // accumulation and an f32 result; f32 weights use the f32 input in place.
    Tensor converted;
    int64_t seg_start = 0;
    for (const LinearSegment& seg : segments) {
      const DType wt = seg.weight.dtype();
      const void* b = x.raw();
      int64_t ldb = x.stride(0);
      if (wt != DType::kF32) {
        if (!converted.defined() || converted.dtype() != wt) {
          converted = empty({m, k}, wt);
          launch_convert_rows(x.data<float>(), x.stride(0), m, k, converted.raw(), wt, stream_);
        }
        b = converted.raw();
        ldb = k;
      }
      const int64_t n = seg.weight.size(0);
      float* d = out.data<float>() + seg_start;
      matmul(seg.weight.raw(), wt, n, k, b, ldb, m, d, out.stride(0));
      if (seg.bias.defined())
        launch_add_bias(d, out.stride(0), m, n, seg.bias.data<float>(), stream_);
      seg_start += n;
    }
    after_op("linear");
  }

  void rms_norm(const Tensor& x, const Tensor& weight, float eps, bool unit_offset,
                const Tensor& out) override {
    use_device();
    check_device(x, "rms_norm input");
    check_device(out, "rms_norm output");
    check_device(weight, "rms_norm weight");
    TESSERA_CHECK(x.dtype() == DType::kF32 && out.dtype() == DType::kF32);
    TESSERA_CHECK(weight.dtype() == DType::kF32 && weight.is_contiguous());
    const int64_t width = x.size(-1);
    TESSERA_CHECK_EQ(weight.numel(), width);
    TESSERA_CHECK(x.stride(-1) == 1 && out.stride(-1) == 1);
    int64_t heads = 1;
    if (x.dim() == 3) {
      TESSERA_CHECK(out.dim() == 3 && x.size(1) == out.size(1));
      TESSERA_CHECK(x.stride(1) == width && out.stride(1) == width);
      heads = x.size(1);
    } else {
      TESSERA_CHECK(x.dim() == 2 && out.dim() == 2 && out.size(0) == x.size(0) &&
                    out.size(1) == width);
    }
    launch_rms_norm(x.data<float>(), x.stride(0), out.data<float>(), out.stride(0), x.size(0),
                    heads, width, weight.data<float>(), eps, unit_offset, stream_);
    after_op("rms_norm");
  }

  void rope_table(const Tensor& positions, const Tensor& inv_freq, float attention_scaling,
                  const Tensor& table) override {
    use_device();
    check_device(positions, "positions");
    check_device(inv_freq, "inv_freq");
    check_device(table, "rope table");
    TESSERA_CHECK(positions.dtype() == DType::kI32 && inv_freq.dtype() == DType::kF32);
    TESSERA_CHECK(table.is_contiguous() && table.dim() == 2);
    const int rot_half = static_cast<int>(inv_freq.numel());
    TESSERA_CHECK_EQ(table.size(1), 2 * rot_half);
    TESSERA_CHECK_EQ(table.size(0), positions.numel());
    launch_rope_table(positions.data<int32_t>(), positions.numel(), inv_freq.data<float>(),
                      rot_half, attention_scaling, table.data<float>(), stream_);
    after_op("rope_table");
  }

  void rope(const Tensor& x, int head_dim, const Tensor& table) override {
    use_device();
    check_f32_rows(x, "rope input");
    check_device(table, "rope table");
    TESSERA_CHECK(x.size(1) % head_dim == 0);
    TESSERA_CHECK(table.is_contiguous() && table.size(0) == x.size(0));
    const int rot_half = static_cast<int>(table.size(1) / 2);
    TESSERA_CHECK_LE(2 * rot_half, head_dim);
    launch_rope(x.data<float>(), x.stride(0), x.size(0), static_cast<int>(x.size(1) / head_dim),
                head_dim, table.data<float>(), rot_half, stream_);
    after_op("rope");
  }

  void gated_activation(const Tensor& gate_up, Activation act, const Tensor& out) override {
    use_device();
    check_f32_rows(gate_up, "gate_up");
    check_f32_rows(out, "activation output");
    const int64_t width = out.size(1);
    TESSERA_CHECK(gate_up.size(1) == 2 * width && gate_up.size(0) == out.size(0));
    launch_gated_activation(gate_up.data<float>(), gate_up.stride(0), out.data<float>(),
                            out.stride(0), out.size(0), width, act, stream_);
    after_op("gated_activation");
  }

  void activation(const Tensor& x, Activation act, const Tensor& out) override {
    use_device();
    check_f32_rows(x, "activation input");
    check_f32_rows(out, "activation output");
    TESSERA_CHECK(out.size(0) == x.size(0) && out.size(1) == x.size(1));
    launch_activation(x.data<float>(), x.stride(0), out.data<float>(), out.stride(0), x.size(0),
                      x.size(1), act, stream_);
    after_op("activation");
  }

  void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps,
                  const Tensor& out) override {
    use_device();
    check_f32_rows(x, "layer_norm input");
    check_f32_rows(out, "layer_norm output");
    check_device(weight, "layer_norm weight");
    check_device(bias, "layer_norm bias");
    const int64_t width = x.size(1);
    TESSERA_CHECK(out.size(0) == x.size(0) && out.size(1) == width);
    TESSERA_CHECK(weight.dtype() == DType::kF32 && weight.is_contiguous() &&
                  weight.numel() == width);
    TESSERA_CHECK(bias.dtype() == DType::kF32 && bias.is_contiguous() && bias.numel() == width);
    launch_layer_norm(x.data<float>(), x.stride(0), out.data<float>(), out.stride(0), x.size(0),
                      width, weight.data<float>(), bias.data<float>(), eps, stream_);
    after_op("layer_norm");
  }

  void add(const Tensor& a, const Tensor& b, const Tensor& out) override {
    use_device();
    check_f32_rows(a, "add input");
    check_f32_rows(b, "add input");
    check_f32_rows(out, "add output");
    TESSERA_CHECK(a.size(0) == b.size(0) && a.size(1) == b.size(1) && a.size(0) == out.size(0) &&
                  a.size(1) == out.size(1));
    launch_add(a.data<float>(), a.stride(0), b.data<float>(), b.stride(0), out.data<float>(),
               out.stride(0), a.size(0), a.size(1), stream_);
    after_op("add");
  }

  void softcap(const Tensor& x, float cap) override {
    use_device();
    check_f32_rows(x, "softcap input");
    launch_softcap(x.data<float>(), x.stride(0), x.size(0), x.size(1), cap, stream_);
    after_op("softcap");
  }

  void gather_rows(const Tensor& x, const Tensor& rows, const Tensor& out) override {
    use_device();
    check_rows(x, "gather input");
    check_rows(out, "gather output");
    check_device(rows, "gather rows");
    TESSERA_CHECK(rows.dtype() == DType::kI32 && rows.numel() == out.size(0));
    TESSERA_CHECK(x.dtype() == out.dtype() && x.size(1) == out.size(1));
    const int64_t elem = static_cast<int64_t>(dtype_size(x.dtype()));
    launch_gather_rows(x.raw(), x.stride(0) * elem, rows.data<int32_t>(), out.size(0), out.raw(),
                       out.stride(0) * elem, x.size(1) * elem, stream_);
    after_op("gather_rows");
  }

  void argmax_rows(const Tensor& x, const Tensor& out) override {
    use_device();
    check_rows(x, "argmax input");
    check_device(out, "argmax output");
    TESSERA_CHECK(x.dtype() == DType::kF32 && out.dtype() == DType::kI32);
    TESSERA_CHECK(out.numel() == x.size(0) && out.is_contiguous());
    launch_argmax_rows(x.data<float>(), x.stride(0), x.size(0), x.size(1), out.data<int32_t>(),
                       stream_);
    after_op("argmax_rows");
  }

  int max_attention_head_dim() const override { return kMaxHeadDim; }

  void add_rows_scaled(const Tensor& x, const Tensor& rows, const Tensor& scale,
                       const Tensor& out) override {
    use_device();
    check_f32_rows(x, "add_rows_scaled input");
    check_f32_rows(out, "add_rows_scaled output");
    check_device(rows, "add_rows_scaled rows");
    check_device(scale, "add_rows_scaled scale");
    TESSERA_CHECK(rows.dtype() == DType::kI32 && rows.numel() == x.size(0));
    TESSERA_CHECK(scale.dtype() == DType::kF32 && scale.numel() == x.size(0));
    TESSERA_CHECK(out.size(1) == x.size(1));
    launch_add_rows_scaled(x.data<float>(), x.stride(0), rows.data<int32_t>(), scale.data<float>(),
                           x.size(0), x.size(1), out.data<float>(), out.stride(0), stream_);
    after_op("add_rows_scaled");
  }

  void write_kv(const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
                const AttentionMetadata& meta) override {
    use_device();
    check_f32_rows(k, "k");
    check_f32_rows(v, "v");
    check_device(k_cache, "k cache");
    check_device(v_cache, "v cache");
    check_device(meta.slot_mapping, "slot mapping");
    TESSERA_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous());
    TESSERA_CHECK(k_cache.dtype() == v_cache.dtype());
    const int64_t bs = k_cache.size(1), heads = k_cache.size(2), d = k_cache.size(3);
    TESSERA_CHECK(k.size(1) == heads * d && v.size(1) == heads * d);
    TESSERA_CHECK(meta.slot_mapping.numel() == k.size(0));
    launch_write_kv(k.data<float>(), k.stride(0), v.data<float>(), v.stride(0), k.size(0),
                    meta.slot_mapping.data<int32_t>(), k_cache.raw(), v_cache.raw(),
                    k_cache.dtype(), k_cache.size(0) * bs, static_cast<int>(bs),
                    static_cast<int>(heads), static_cast<int>(d), stream_);
    after_op("write_kv");
  }

  void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                       const AttentionMetadata& meta, const AttentionParams& params,
                       const Tensor& out) override {
    use_device();
    check_f32_rows(q, "q");
    check_f32_rows(out, "attention output");
    check_device(k_cache, "k cache");
    check_device(v_cache, "v cache");
    TESSERA_CHECK(params.num_kv_heads > 0 && params.num_heads % params.num_kv_heads == 0);
    TESSERA_CHECK_EQ(q.size(1), static_cast<int64_t>(params.num_heads) * params.head_dim);
    TESSERA_CHECK_EQ(k_cache.size(2), params.num_kv_heads);
    TESSERA_CHECK_EQ(k_cache.size(3), params.head_dim);
    TESSERA_CHECK_EQ(k_cache.size(1), meta.block_size);
    TESSERA_CHECK_LE(params.head_dim, kMaxHeadDim);
    TESSERA_CHECK_GT(meta.max_seq_len, 0) << "AttentionMetadata.max_seq_len must bound seq_lens";
    AttentionLaunch a;
    a.q = q.data<float>();
    a.ldq = q.stride(0);
    a.k_cache = k_cache.raw();
    a.v_cache = v_cache.raw();
    a.kv_dtype = k_cache.dtype();
    a.query_start = meta.query_start.data<int32_t>();
    a.seq_lens = meta.seq_lens.data<int32_t>();
    a.block_tables = meta.block_tables.data<int32_t>();
    a.max_blocks = meta.block_tables.size(1);
    a.block_size = meta.block_size;
    a.num_seqs = meta.num_seqs;
    a.tokens = q.size(0);
    a.max_seq_len = meta.max_seq_len;
    a.out = out.data<float>();
    a.ldo = out.stride(0);
    a.params = params;
    a.tiled = tiled_attention_;
    Tensor scratch;
    if (const size_t bytes = attention_scratch_bytes(a)) {
      scratch = empty({static_cast<int64_t>(bytes)}, DType::kU8);
      a.scratch = scratch.raw();
    }
    launch_paged_attention(a, stream_);
    after_op("paged_attention");
  }

 private:
  static constexpr size_t kWorkspaceBytes = 32u << 20;  // cuBLASLt's workspace (Hopper: 32 MiB)
  static constexpr size_t kStagingBytes = 64u << 20;    // per pinned upload buffer

  // The CUDA runtime's current device belongs to the calling thread, and the engine may call
  // from another thread than the one that built the backend: every op makes its device current.
  void use_device() const {
    thread_local int current = -1;
    if (current != device_) {
      TESSERA_CUDA_CHECK(cudaSetDevice(device_));
      current = device_;
    }
  }

  void check_device(const Tensor& t, const char* what) const {
    TESSERA_CHECK(t.device() == Device::kCUDA) << what << " is not on the GPU";
  }
  void check_rows(const Tensor& t, const char* what) const {
    check_device(t, what);
    TESSERA_CHECK(t.dim() == 2) << what << " must be 2-d, got " << t.shape_string();
    TESSERA_CHECK(t.stride(1) == 1 || t.size(1) <= 1) << what << " rows must be contiguous";
    TESSERA_CHECK(t.layout() == 0) << what << " is in a packed layout";
  }
  void check_f32_rows(const Tensor& t, const char* what) const {
    check_rows(t, what);
    TESSERA_CHECK(t.dtype() == DType::kF32)
        << what << " must be f32, got " << dtype_name(t.dtype());
  }

  // Launch errors surface here, naming the op; TESSERA_CUDA_SYNC=1 also waits for each op, so
  // that a fault inside a kernel is reported at the op that caused it.
  void after_op(const char* op) {
    const cudaError_t e = cudaGetLastError();
    TESSERA_CHECK(e == cudaSuccess) << "CUDA " << op << ": " << cudaGetErrorString(e);
    if (sync_each_op_ && !capturing_) {
      const cudaError_t s = cudaStreamSynchronize(stream_);
      TESSERA_CHECK(s == cudaSuccess)
          << "CUDA " << op << " (synchronised): " << cudaGetErrorString(s);
    }
  }

  // A host tensor (contiguous, or 2-d rows with a stride: a column slice of a checkpoint tensor)
  // as a contiguous device tensor. The bytes go through two pinned buffers in turn: the host
  // fills one (reading the memory-mapped file) while the GPU copies the other.
  Tensor upload(const Tensor& host) {
    use_device();
    TESSERA_CHECK(host.layout() == 0);
    if (host.device() == Device::kCUDA) return host;
    Tensor dev = empty(host.shape(), host.dtype());
    if (host.numel() == 0) return dev;
    const int64_t rows = host.is_contiguous() ? 1 : host.size(0);
    const ByteRows s = byte_rows(host, rows);
    char* dst = static_cast<char*>(dev.raw());
    // Whole rows per chunk (a row longer than a buffer goes in pieces).
    size_t row = 0, row_offset = 0;
    while (row < s.height) {
      Staging& buf = staging_[next_staging_];
      next_staging_ = (next_staging_ + 1) % kStagingBuffers;
      TESSERA_CUDA_CHECK(cudaEventSynchronize(buf.done));  // its previous copy has finished
      size_t filled = 0;
      const size_t dst_offset = row * s.width + row_offset;
      while (row < s.height && filled < kStagingBytes) {
        const size_t n = std::min(s.width - row_offset, kStagingBytes - filled);
        std::memcpy(buf.host + filled, s.data + row * s.pitch + row_offset, n);
        filled += n;
        row_offset += n;
        if (row_offset == s.width) {
          ++row;
          row_offset = 0;
        }
      }
      TESSERA_CUDA_CHECK(
          cudaMemcpyAsync(dst + dst_offset, buf.host, filled, cudaMemcpyHostToDevice, stream_));
      TESSERA_CUDA_CHECK(cudaEventRecord(buf.done, stream_));
    }
    return dev;
  }

  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };

  // Row-major D [m, n] (row stride ldd) = B [m, k] (row stride ldb) x A^T, A [n, k] contiguous.
  // In cuBLAS's column-major terms: D^T (n x m) = op(A^T) (n x k) * B^T (k x m), i.e. "TN".
  void matmul(const void* a, DType a_type, int64_t n, int64_t k, const void* b, int64_t ldb,
              int64_t m, float* d, int64_t ldd) {
    const uint32_t align = std::min({alignment_of(a), alignment_of(b), alignment_of(d)});
    const auto key = std::make_tuple(m, n, k, ldb, ldd, static_cast<int>(a_type), align);
    auto it = plans_.find(key);
    if (it == plans_.end())
      it = plans_.emplace(key, make_plan(a_type, n, k, ldb, m, ldd, align)).first;
    const Plan& p = it->second;
    const float alpha = 1.0f, beta = 0.0f;
    TESSERA_CUBLAS_CHECK(cublasLtMatmul(lt_, p.op, &alpha, a, p.a, b, p.b, &beta, d, p.d, d, p.d,
                                        &p.algo, workspace_.get(), kWorkspaceBytes, stream_));
  }

  Plan make_plan(DType a_type, int64_t n, int64_t k, int64_t ldb, int64_t m, int64_t ldd,
                 uint32_t align) {
    Plan p;
    const cudaDataType_t t = cuda_type(a_type);
    TESSERA_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
    TESSERA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a,
                                                        sizeof trans_a));
    TESSERA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b,
                                                        sizeof trans_b));
    TESSERA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, t, k, n, k));
    TESSERA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, t, k, m, ldb));
    TESSERA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.d, CUDA_R_32F, n, m, ldd));
    cublasLtMatmulPreference_t pref;
    TESSERA_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = kWorkspaceBytes;
    TESSERA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    for (auto attr :
         {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
          CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
      TESSERA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof align));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(lt_, p.op, p.a, p.b, p.d, p.d, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    TESSERA_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0)
        << "cuBLASLt has no algorithm for " << dtype_name(a_type) << " [" << m << ", " << k
        << "] x [" << n << ", " << k << "]^T (status " << static_cast<int>(st) << ")";
    p.algo = result.algo;
    return p;
  }

  static constexpr int kStagingBuffers = 2;
  struct Staging {
    char* host = nullptr;
    cudaEvent_t done = nullptr;
  };

  int device_;
  cudaDeviceProp props_{};
  DeviceAllocator alloc_;
  PinnedPool pinned_;
  MemoryMeter meter_;  // the tensors empty() made (weights, KV cache, activations)
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  std::shared_ptr<void> workspace_;
  Staging staging_[kStagingBuffers];
  int next_staging_ = 0;
  bool sync_each_op_ = false;
  bool capturing_ = false, capture_broken_ = false;
  bool tiled_attention_ = true;  // TESSERA_ATTENTION_TILED=0: the row-per-block kernel only
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int, uint32_t>, Plan> plans_;
};

}  // namespace

bool cuda_backend_built() {
  return true;
}

int cuda_device_count(std::string* why_none) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    if (why_none)
      *why_none = fmt::format("no NVIDIA driver or GPU that this CUDA runtime can use: {}",
                              cudaGetErrorString(e));
    return 0;
  }
  if (n == 0 && why_none) *why_none = "no CUDA device";
  return n;
}

CudaQueue cuda_queue_of(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  TESSERA_CHECK(cuda != nullptr) << "not the CUDA backend: " << backend.name();
  return cuda->queue();
}

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options) {
  std::string why;
  const int n = cuda_device_count(&why);
  if (n == 0) fail(ErrorKind::kUnavailable, "--device cuda: no usable GPU ({})", why);
  if (options.device < 0 || options.device >= n)
    fail(ErrorKind::kUnavailable, "--device cuda: device {} does not exist ({} visible)",
         options.device, n);
  return std::make_unique<CudaBackend>(options.device);
}

}  // namespace tessera
