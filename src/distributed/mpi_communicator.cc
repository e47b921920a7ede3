#include "distributed/mpi_communicator.h"

#if TESSERA_HAVE_MPI

#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "core/dtype.h"
#include "core/logging.h"
#include "distributed/world.h"

namespace tessera {

namespace {

// Tags keep message streams apart: MPI orders messages per (source, tag, communicator).
constexpr int kTagGather = 1, kTagBroadcast = 2, kTagPointToPoint = 3, kTagBytes = 4,
              kTagBarrier = 5;

// Waiting: spin (a decode step's all-reduce arrives within microseconds), then yield, then
// sleep in 0.1 ms naps (an idle server, or oversubscribed cores). Where ranks take turns on
// shared cores a wait is either met at once or lasts the other stage's whole forward pass, and
// every poll takes time from that pass: spin and yield a tenth as long, and nap 1 ms after the
// first ten naps (0.1 ms naps all along slowed the stage computing by ~15%; serving at 16
// concurrent, the shorter spins gave 0.91-1.01x of one rank against 0.86-1.03x;
// docs/performance.md).
class Backoff {
 public:
  explicit Backoff(bool share_cores)
      : spin_(share_cores ? 200 : 2000),
        yield_(share_cores ? 200 : 2000),
        long_naps_(share_cores) {}
  void pause() {
    ++n_;
    if (n_ < spin_) return;
    if (n_ < spin_ + yield_) {
      sched_yield();
      return;
    }
    const bool long_nap = long_naps_ && ++naps_ > kShortNaps;
    timespec ts{0, long_nap ? 1000000 : 100000};
    nanosleep(&ts, nullptr);
  }

 private:
  static constexpr int kShortNaps = 10;
  const int spin_, yield_;
  const bool long_naps_;
  int n_ = 0;
  int naps_ = 0;
};

void check_size(size_t bytes) {
  TESSERA_CHECK(bytes <= static_cast<size_t>(INT_MAX)) << "message of " << bytes << " bytes";
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::vector<int> world_ranks,
                                 std::vector<std::string> hosts, double timeout_s, std::string name)
    : comm_(comm),
      world_ranks_(std::move(world_ranks)),
      hosts_(std::move(hosts)),
      timeout_s_(timeout_s),
      name_(std::move(name)) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  TESSERA_CHECK_EQ(static_cast<int>(world_ranks_.size()), size_);
  TESSERA_CHECK_EQ(static_cast<int>(hosts_.size()), size_);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

std::string MpiCommunicator::describe(int group_rank) const {
  return fmt::format("rank {} (host {})", world_ranks_[group_rank], hosts_[group_rank]);
}

void MpiCommunicator::timed_out(const std::vector<int>& missing, const char* what) {
  std::string who;
  for (int p : missing) who += (who.empty() ? "" : ", ") + describe(p);
  throw DistributedError(fmt::format("{}: no answer from {} within {:.0f} s ({} on the {} group)",
                                     describe(rank_), who, timeout_s_, what, name_));
}

void MpiCommunicator::wait_all(std::vector<MPI_Request>& requests, const std::vector<int>& peers,
                               const char* what) {
  if (requests.empty()) return;
  const auto start = std::chrono::steady_clock::now();
  Backoff backoff(waits_share_cores_);
  for (int iter = 0;; ++iter) {
    int done = 0;
    MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE);
    if (done) return;
    if ((iter & 255) == 255 && timeout_s_ > 0 &&
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >
            timeout_s_) {
      std::vector<int> missing;
      for (size_t i = 0; i < requests.size(); ++i) {
        int flag = 0;
        MPI_Test(&requests[i], &flag, MPI_STATUS_IGNORE);
        if (!flag && std::find(missing.begin(), missing.end(), peers[i]) == missing.end())
          missing.push_back(peers[i]);
      }
      timed_out(missing, what);
    }
    backoff.pause();
  }
}

void MpiCommunicator::all_gather_bytes(const void* in, void* out, size_t bytes, const char* what) {
  check_size(bytes);
  char* dst = static_cast<char*>(out);
  if (dst + rank_ * bytes != in) std::memcpy(dst + rank_ * bytes, in, bytes);
  std::vector<MPI_Request> requests;
  std::vector<int> peers;
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    MPI_Request r;
    MPI_Irecv(dst + p * bytes, static_cast<int>(bytes), MPI_BYTE, p, kTagGather, comm_, &r);
    requests.push_back(r);
    peers.push_back(p);
  }
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    MPI_Request r;
    MPI_Isend(dst + rank_ * bytes, static_cast<int>(bytes), MPI_BYTE, p, kTagGather, comm_, &r);
    requests.push_back(r);
    peers.push_back(p);
  }
  wait_all(requests, peers, what);
}

void MpiCommunicator::all_reduce_sum(const Tensor& t) {
  TESSERA_CHECK(t.is_contiguous());
  TESSERA_CHECK(t.dtype() == DType::kF32 || t.dtype() == DType::kBF16)
      << "all_reduce_sum of " << dtype_name(t.dtype());
  if (size_ == 1) return;
  const int64_t n = t.numel();
  const size_t bytes = t.nbytes();
  // Every rank's contribution, then the same sum in the same order on every rank.
  gathered_.resize(bytes * size_);
  std::vector<char>& gathered = gathered_;
  all_gather_bytes(t.raw(), gathered.data(), bytes, "all_reduce_sum");
  if (t.dtype() == DType::kF32) {
    const float* parts = reinterpret_cast<const float*>(gathered.data());
    float* out = t.data<float>();
    std::memcpy(out, parts, n * sizeof(float));
    for (int r = 1; r < size_; ++r) {
      const float* p = parts + r * n;
      for (int64_t i = 0; i < n; ++i) out[i] += p[i];
    }
  } else {
    const uint16_t* parts = reinterpret_cast<const uint16_t*>(gathered.data());
    uint16_t* out = static_cast<uint16_t*>(t.raw());
    scratch_.resize(n);
    for (int64_t i = 0; i < n; ++i) scratch_[i] = bf16_to_f32(parts[i]);
    for (int r = 1; r < size_; ++r) {
      const uint16_t* p = parts + r * n;
      for (int64_t i = 0; i < n; ++i) scratch_[i] += bf16_to_f32(p[i]);
    }
    for (int64_t i = 0; i < n; ++i) out[i] = f32_to_bf16(scratch_[i]);
  }
}

void MpiCommunicator::all_gather(const Tensor& in, const Tensor& out) {
  TESSERA_CHECK(in.is_contiguous() && out.is_contiguous());
  TESSERA_CHECK_EQ(out.nbytes(), in.nbytes() * size_);
  all_gather_bytes(in.raw(), out.raw(), in.nbytes(), "all_gather");
}

void MpiCommunicator::broadcast(const Tensor& t, int root) {
  TESSERA_CHECK(t.is_contiguous());
  TESSERA_CHECK(root >= 0 && root < size_);
  if (size_ == 1) return;
  check_size(t.nbytes());
  std::vector<MPI_Request> requests;
  std::vector<int> peers;
  const int bytes = static_cast<int>(t.nbytes());
  if (rank_ == root) {
    for (int p = 0; p < size_; ++p) {
      if (p == root) continue;
      MPI_Request r;
      MPI_Isend(t.raw(), bytes, MPI_BYTE, p, kTagBroadcast, comm_, &r);
      requests.push_back(r);
      peers.push_back(p);
    }
  } else {
    MPI_Request r;
    MPI_Irecv(t.raw(), bytes, MPI_BYTE, root, kTagBroadcast, comm_, &r);
    requests.push_back(r);
    peers.push_back(root);
  }
  wait_all(requests, peers, "broadcast");
}

MPI_Request MpiCommunicator::isend(const Tensor& t, int dst) {
  TESSERA_CHECK(t.is_contiguous());
  TESSERA_CHECK(dst >= 0 && dst < size_ && dst != rank_) << "send to " << dst;
  check_size(t.nbytes());
  MPI_Request r;
  MPI_Isend(t.raw(), static_cast<int>(t.nbytes()), MPI_BYTE, dst, kTagPointToPoint, comm_, &r);
  return r;
}

void MpiCommunicator::send(const Tensor& t, int dst) {
  // Waits for this send only: older asynchronous ones may be taken later.
  std::vector<MPI_Request> requests{isend(t, dst)};
  wait_all(requests, {dst}, "send");
}

void MpiCommunicator::send_async(const Tensor& t, int dst) {
  pending_sends_.push_back(isend(t, dst));
  pending_peers_.push_back(dst);
}

void MpiCommunicator::retire_sends(size_t n) {
  pending_sends_.erase(pending_sends_.begin(), pending_sends_.begin() + n);
  pending_peers_.erase(pending_peers_.begin(), pending_peers_.begin() + n);
  sends_retired_ += n;
}

size_t MpiCommunicator::pending_among_first(uint64_t first_n) const {
  return first_n <= sends_retired_
             ? 0
             : std::min<size_t>(first_n - sends_retired_, pending_sends_.size());
}

void MpiCommunicator::wait_sends(uint64_t first_n) {
  const size_t n = pending_among_first(first_n);
  if (n == 0) return;
  std::vector<MPI_Request> requests(pending_sends_.begin(), pending_sends_.begin() + n);
  std::vector<int> peers(pending_peers_.begin(), pending_peers_.begin() + n);
  wait_all(requests, peers, "send");
  retire_sends(n);
}

bool MpiCommunicator::sends_done(uint64_t first_n) {
  const size_t n = pending_among_first(first_n);
  if (n == 0) return true;
  // A copy: MPI_Testall leaves the requests as they were unless all are complete.
  std::vector<MPI_Request> requests(pending_sends_.begin(), pending_sends_.begin() + n);
  int done = 0;
  MPI_Testall(static_cast<int>(n), requests.data(), &done, MPI_STATUSES_IGNORE);
  if (done) retire_sends(n);
  return done != 0;
}

void MpiCommunicator::recv(const Tensor& t, int src) {
  TESSERA_CHECK(t.is_contiguous());
  TESSERA_CHECK(src >= 0 && src < size_ && src != rank_) << "recv from " << src;
  check_size(t.nbytes());
  std::vector<MPI_Request> requests(1);
  MPI_Irecv(t.raw(), static_cast<int>(t.nbytes()), MPI_BYTE, src, kTagPointToPoint, comm_,
            &requests[0]);
  wait_all(requests, {src}, "recv");
}

void MpiCommunicator::broadcast_bytes_async(std::string& data, int root) {
  if (rank_ != root || size_ == 1) return broadcast_bytes(data, root);
  isend_bytes_to_all(data, root, pending_sends_, pending_peers_);
}

void MpiCommunicator::isend_bytes_to_all(const std::string& data, int root,
                                         std::vector<MPI_Request>& requests,
                                         std::vector<int>& peers) {
  check_size(data.size());
  for (int p = 0; p < size_; ++p) {
    if (p == root) continue;
    MPI_Request r;
    MPI_Isend(data.data(), static_cast<int>(data.size()), MPI_BYTE, p, kTagBytes, comm_, &r);
    requests.push_back(r);
    peers.push_back(p);
  }
}

void MpiCommunicator::broadcast_bytes(std::string& data, int root) {
  TESSERA_CHECK(root >= 0 && root < size_);
  if (size_ == 1) return;
  if (rank_ == root) {
    std::vector<MPI_Request> requests;
    std::vector<int> peers;
    isend_bytes_to_all(data, root, requests, peers);
    wait_all(requests, peers, "broadcast_bytes");
    return;
  }
  // The length is not known in advance: probe (without a deadline: the root may be idle), then
  // receive the matched message.
  MPI_Message message;
  MPI_Status status;
  Backoff backoff(waits_share_cores_);
  for (;;) {
    int found = 0;
    MPI_Improbe(root, kTagBytes, comm_, &found, &message, &status);
    if (found) break;
    backoff.pause();
  }
  int count = 0;
  MPI_Get_count(&status, MPI_BYTE, &count);
  data.resize(count);
  MPI_Mrecv(data.data(), count, MPI_BYTE, &message, MPI_STATUS_IGNORE);
}

void MpiCommunicator::barrier() {
  if (size_ == 1) return;
  // Everyone tells everyone: a missing rank is named.
  char token = 0;
  std::vector<char> all(size_);
  (void)token;
  std::vector<MPI_Request> requests;
  std::vector<int> peers;
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    MPI_Request r;
    MPI_Irecv(&all[p], 1, MPI_BYTE, p, kTagBarrier, comm_, &r);
    requests.push_back(r);
    peers.push_back(p);
    MPI_Isend(&all[rank_], 1, MPI_BYTE, p, kTagBarrier, comm_, &r);
    requests.push_back(r);
    peers.push_back(p);
  }
  wait_all(requests, peers, "barrier");
}

// ---- the world ----

namespace {

class MpiWorld : public DistributedWorld {
 public:
  explicit MpiWorld(const DistributedOptions& options) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      // Serialized is enough (one engine thread talks at a time), but abort() may come from
      // another thread.
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
      owns_mpi_ = true;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
    int size = 0, rank = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    // Host names, for messages that name a rank.
    char name[MPI_MAX_PROCESSOR_NAME] = {};
    int len = 0;
    MPI_Get_processor_name(name, &len);
    std::vector<char> all(static_cast<size_t>(size) * MPI_MAX_PROCESSOR_NAME);
    MPI_Allgather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all.data(), MPI_MAX_PROCESSOR_NAME,
                  MPI_CHAR, MPI_COMM_WORLD);
    for (int r = 0; r < size; ++r) hosts_.emplace_back(all.data() + r * MPI_MAX_PROCESSOR_NAME);
    if (options.tp * options.pp != size) {
      // Every rank sees the same mismatch; rank 0 says it.
      if (rank == 0)
        spdlog::error(
            "tensor-parallel size {} x pipeline-parallel size {} = {} ranks, but {} were "
            "launched",
            options.tp, options.pp, options.tp * options.pp, size);
      MPI_Finalize();
      fail("tensor-parallel size {} x pipeline-parallel size {} = {} ranks, but {} were launched",
           options.tp, options.pp, options.tp * options.pp, size);
    }
    config_ = WorldConfig::make(size, rank, options.tp, options.pp);

    std::vector<int> all_ranks(size);
    for (int r = 0; r < size; ++r) all_ranks[r] = r;
    world_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, all_ranks, hosts_, options.timeout_s,
                                               "world");
    // tp group: the ranks of this stage, ordered by tp_rank.
    MPI_Comm tp_comm, pp_comm;
    MPI_Comm_split(MPI_COMM_WORLD, config_.pp_rank(), config_.tp_rank(), &tp_comm);
    std::vector<int> tp_ranks;
    std::vector<std::string> tp_hosts;
    for (int t = 0; t < config_.tp; ++t) {
      tp_ranks.push_back(config_.rank_of(config_.pp_rank(), t));
      tp_hosts.push_back(hosts_[tp_ranks.back()]);
    }
    tp_ = std::make_unique<MpiCommunicator>(tp_comm, tp_ranks, tp_hosts, options.timeout_s,
                                            "tensor-parallel");
    // pp group: one rank per stage with this tp_rank, ordered by stage.
    MPI_Comm_split(MPI_COMM_WORLD, config_.tp_rank(), config_.pp_rank(), &pp_comm);
    std::vector<int> pp_ranks;
    std::vector<std::string> pp_hosts;
    for (int s = 0; s < config_.pp; ++s) {
      pp_ranks.push_back(config_.rank_of(s, config_.tp_rank()));
      pp_hosts.push_back(hosts_[pp_ranks.back()]);
    }
    pp_ = std::make_unique<MpiCommunicator>(pp_comm, pp_ranks, pp_hosts, options.timeout_s,
                                            "pipeline");
  }

  ~MpiWorld() override {
    tp_.reset();
    pp_.reset();
    world_.reset();
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_mpi_ && !finalized) MPI_Finalize();
  }

  Communicator& world() override { return *world_; }
  Communicator& tp() override { return *tp_; }
  Communicator& pp() override { return *pp_; }
  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 private:
  bool owns_mpi_ = false;
  std::unique_ptr<MpiCommunicator> world_, tp_, pp_;
};

}  // namespace

std::unique_ptr<DistributedWorld> create_mpi_world(const DistributedOptions& options) {
  return std::make_unique<MpiWorld>(options);
}

}  // namespace tessera

#endif  // TESSERA_HAVE_MPI
