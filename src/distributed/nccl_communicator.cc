#include "distributed/nccl_communicator.h"

#if TESSERA_HAVE_CUDA

#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nccl.h>

#include <cstring>
#include <deque>
#include <mutex>
#include <set>
#include <type_traits>
#include <utility>

#include "kernels/cuda/cuda_backend.h"

#ifndef TESSERA_NCCL_SONAME
#define TESSERA_NCCL_SONAME "libnccl.so.2"
#endif

namespace tessera {

namespace {

// The NCCL entry points used, resolved from the library once.
struct Nccl {
  decltype(&::ncclGetVersion) get_version = nullptr;
  decltype(&::ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&::ncclCommInitRank) comm_init_rank = nullptr;
  decltype(&::ncclCommDestroy) comm_destroy = nullptr;
  decltype(&::ncclGetErrorString) error_string = nullptr;
  decltype(&::ncclAllReduce) all_reduce = nullptr;
  decltype(&::ncclAllGather) all_gather = nullptr;
  decltype(&::ncclBroadcast) broadcast = nullptr;
  decltype(&::ncclSend) send = nullptr;
  decltype(&::ncclRecv) recv = nullptr;
  decltype(&::ncclGroupStart) group_start = nullptr;
  decltype(&::ncclGroupEnd) group_end = nullptr;
  int version = 0;
};

const Nccl& nccl() {
  static Nccl n;
  static std::string error;
  static std::once_flag once;
  std::call_once(once, [] {
    void* h = dlopen(TESSERA_NCCL_SONAME, RTLD_NOW | RTLD_LOCAL);
#ifdef TESSERA_NCCL_PATH
    if (!h) h = dlopen(TESSERA_NCCL_PATH, RTLD_NOW | RTLD_LOCAL);
#endif
    if (!h) {
      error = dlerror();
      return;
    }
    auto get = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
      if (!fn && error.empty()) error = fmt::format("it has no symbol {}", name);
    };
    get(n.get_version, "ncclGetVersion");
    get(n.get_unique_id, "ncclGetUniqueId");
    get(n.comm_init_rank, "ncclCommInitRank");
    get(n.comm_destroy, "ncclCommDestroy");
    get(n.error_string, "ncclGetErrorString");
    get(n.all_reduce, "ncclAllReduce");
    get(n.all_gather, "ncclAllGather");
    get(n.broadcast, "ncclBroadcast");
    get(n.send, "ncclSend");
    get(n.recv, "ncclRecv");
    get(n.group_start, "ncclGroupStart");
    get(n.group_end, "ncclGroupEnd");
    if (error.empty() && n.get_version(&n.version) != ncclSuccess) error = "ncclGetVersion failed";
  });
  if (!error.empty())
    fail(ErrorKind::kUnavailable,
         "NCCL ({}) could not be loaded: {} (install libnccl2, add its folder to "
         "LD_LIBRARY_PATH, or set TESSERA_NCCL=0 to pass GPU tensors through host memory)",
         TESSERA_NCCL_SONAME, error);
  return n;
}

void check(ncclResult_t r, const char* what) {
  if (r != ncclSuccess)
    throw DistributedError(fmt::format("NCCL {}: {}", what, nccl().error_string(r)));
}

ncclDataType_t sum_type(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kF16:
      return ncclFloat16;
    default:
      TESSERA_CHECK(false) << "all_reduce_sum takes f32, bf16 or f16, not " << dtype_name(dtype);
      return ncclFloat32;
  }
}

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(Communicator& bootstrap, Backend& backend)
      : bootstrap_(bootstrap), backend_(backend) {
    const CudaQueue q = cuda_queue_of(backend);
    stream_ = static_cast<cudaStream_t>(q.stream);
    device_ = q.device;
    const Nccl& n = nccl();
    ncclUniqueId id{};
    if (bootstrap.rank() == 0) check(n.get_unique_id(&id), "ncclGetUniqueId");
    std::string bytes(reinterpret_cast<const char*>(&id), sizeof id);
    bootstrap.broadcast_bytes(bytes, 0);
    TESSERA_CHECK_EQ(bytes.size(), sizeof id);
    std::memcpy(&id, bytes.data(), sizeof id);
    use_device();
    check(n.comm_init_rank(&comm_, bootstrap.size(), id, bootstrap.rank()), "ncclCommInitRank");
  }

  ~NcclCommunicator() override {
    // Queued work first: the group's resources go with it.
    cudaStreamSynchronize(stream_);
    for (auto& [number, event] : sends_) cudaEventDestroy(event);
    if (comm_) nccl().comm_destroy(comm_);
  }

  int rank() const override { return bootstrap_.rank(); }
  int size() const override { return bootstrap_.size(); }

  void all_reduce_sum(const Tensor& t) override {
    if (size() == 1 || t.numel() == 0) return;
    Staged s(*this, t, /*read=*/true);
    use_device();
    check(nccl().all_reduce(s.dev.raw(), s.dev.raw(), t.numel(), sum_type(t.dtype()), ncclSum,
                            comm_, stream_),
          "all_reduce");
    s.write_back();
  }

  void all_gather(const Tensor& in, const Tensor& out) override {
    TESSERA_CHECK_EQ(out.nbytes(), in.nbytes() * static_cast<size_t>(size()));
    Staged i(*this, in, /*read=*/true), o(*this, out, /*read=*/false);
    use_device();
    check(nccl().all_gather(i.dev.raw(), o.dev.raw(), in.nbytes(), ncclUint8, comm_, stream_),
          "all_gather");
    o.write_back();
  }

  void broadcast(const Tensor& t, int root) override {
    if (size() == 1 || t.numel() == 0) return;
    Staged s(*this, t, /*read=*/rank() == root);
    use_device();
    check(nccl().broadcast(s.dev.raw(), s.dev.raw(), t.nbytes(), ncclUint8, root, comm_, stream_),
          "broadcast");
    if (rank() != root) s.write_back();
  }

  void send(const Tensor& t, int dst) override {
    send_async(t, dst);
    wait_sends();
  }

  void recv(const Tensor& t, int src) override {
    Staged s(*this, t, /*read=*/false);
    use_device();
    check(nccl().recv(s.dev.raw(), t.nbytes(), ncclUint8, src, comm_, stream_), "recv");
    s.write_back();
  }

  // Queued on the stream: later kernels that reuse the tensor's memory run after the send. The
  // event marks when the peer has taken it.
  void send_async(const Tensor& t, int dst) override {
    Staged s(*this, t, /*read=*/true);
    use_device();
    check(nccl().send(s.dev.raw(), t.nbytes(), ncclUint8, dst, comm_, stream_), "send");
    cudaEvent_t done = nullptr;
    TESSERA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming) == cudaSuccess);
    TESSERA_CHECK(cudaEventRecord(done, stream_) == cudaSuccess);
    sends_.emplace_back(started_++, done);
    staged_.emplace_back(s.dev);  // a host tensor's device copy lives until the send is done
  }
  using Communicator::wait_sends;
  uint64_t sends_started() const override { return started_; }
  void wait_sends(uint64_t first_n) override {
    while (!sends_.empty() && sends_.front().first < first_n) {
      TESSERA_CHECK(cudaEventSynchronize(sends_.front().second) == cudaSuccess);
      pop_send();
    }
  }
  bool sends_done(uint64_t first_n) override {
    while (!sends_.empty() && sends_.front().first < first_n) {
      if (cudaEventQuery(sends_.front().second) != cudaSuccess) return false;
      pop_send();
    }
    return true;
  }

  void broadcast_bytes(std::string& data, int root) override {
    bootstrap_.broadcast_bytes(data, root);
  }
  void broadcast_bytes_async(std::string& data, int root) override {
    bootstrap_.broadcast_bytes_async(data, root);
  }
  void barrier() override {
    TESSERA_CHECK(cudaStreamSynchronize(stream_) == cudaSuccess);
    bootstrap_.barrier();
  }
  void set_waits_share_cores(bool shared) override { bootstrap_.set_waits_share_cores(shared); }

 private:
  // A tensor as contiguous device memory: itself when it is one, else a device copy (filled from
  // it when `read`), copied back by write_back().
  struct Staged {
    Staged(NcclCommunicator& c, const Tensor& t, bool read) : comm(c), orig(t) {
      if (t.device() == Device::kCUDA && t.is_contiguous()) {
        dev = t;
        return;
      }
      dev = c.backend_.empty(t.shape(), t.dtype());
      if (read) c.backend_.copy(t, dev);
    }
    void write_back() {
      if (dev.raw() != orig.raw()) comm.backend_.copy(dev, orig);
    }
    NcclCommunicator& comm;
    Tensor orig, dev;
  };

  // The calling thread's current device, as the backend's ops make it (it may be another thread
  // than the one that made the group).
  void use_device() const {
    thread_local int current = -1;
    if (current != device_) {
      TESSERA_CHECK(cudaSetDevice(device_) == cudaSuccess);
      current = device_;
    }
  }
  void pop_send() {
    cudaEventDestroy(sends_.front().second);
    sends_.pop_front();
    staged_.pop_front();
  }

  Communicator& bootstrap_;
  Backend& backend_;
  cudaStream_t stream_ = nullptr;
  int device_ = 0;
  ncclComm_t comm_ = nullptr;
  uint64_t started_ = 0;
  std::deque<std::pair<uint64_t, cudaEvent_t>> sends_;  // by send number
  std::deque<Tensor> staged_;                           // one per entry of sends_
};

}  // namespace

bool nccl_built() {
  return true;
}

bool ranks_have_own_gpus(Communicator& world, Backend& backend) {
  if (backend.device() != Device::kCUDA) return false;
  const std::string mine = cuda_queue_of(backend).uuid;
  constexpr int64_t kWidth = 16;
  TESSERA_CHECK_EQ(mine.size(), static_cast<size_t>(kWidth));
  Tensor in = Tensor::empty({kWidth}, DType::kU8);
  std::memcpy(in.raw(), mine.data(), kWidth);
  Tensor all = Tensor::empty({world.size() * kWidth}, DType::kU8);
  world.all_gather(in, all);
  std::set<std::string> seen;
  for (int r = 0; r < world.size(); ++r)
    seen.insert(std::string(static_cast<const char*>(all.raw()) + r * kWidth, kWidth));
  return seen.size() == static_cast<size_t>(world.size());
}

std::string nccl_version() {
  const int v = nccl().version;  // NCCL_VERSION(major, minor, patch) = major * 10000 + ...
  return fmt::format("{}.{}.{}", v / 10000, v / 100 % 100, v % 100);
}

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, Backend& backend) {
  return std::make_unique<NcclCommunicator>(bootstrap, backend);
}

}  // namespace tessera

#else  // no CUDA

namespace tessera {

bool nccl_built() {
  return false;
}

std::unique_ptr<Communicator> make_nccl_communicator(Communicator&, Backend&) {
  fail(ErrorKind::kUnavailable, "this build of tessera has no CUDA backend, so no NCCL");
}

bool ranks_have_own_gpus(Communicator&, Backend&) {
  return false;
}

std::string nccl_version() {
  fail(ErrorKind::kUnavailable, "this build of tessera has no CUDA backend, so no NCCL");
}

}  // namespace tessera

#endif
