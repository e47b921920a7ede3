// Communicator over an MPI communicator (OpenMPI: shared memory within a node, TCP between
// nodes). Collectives are built from point-to-point messages so that a wait knows which peer is
// missing: after `timeout_s` it throws DistributedError naming that rank and its host. Waits
// spin briefly, then yield, then sleep, so idle ranks do not take the cores from busy ones.
#pragma once

#if TESSERA_HAVE_MPI

#include <mpi.h>

#include <string>
#include <vector>

#include "distributed/communicator.h"

namespace tessera {

class MpiCommunicator : public Communicator {
 public:
  // `world_ranks[i]` and `hosts[i]`: the world rank and host of group rank i (for messages).
  // Takes ownership of `comm` (freed in the destructor unless it is MPI_COMM_WORLD).
  MpiCommunicator(MPI_Comm comm, std::vector<int> world_ranks, std::vector<std::string> hosts,
                  double timeout_s, std::string name);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_reduce_sum(const Tensor& t) override;
  void all_gather(const Tensor& in, const Tensor& out) override;
  void broadcast(const Tensor& t, int root) override;
  void send(const Tensor& t, int dst) override;
  void recv(const Tensor& t, int src) override;
  void send_async(const Tensor& t, int dst) override;
  uint64_t sends_started() const override { return sends_retired_ + pending_sends_.size(); }
  void wait_sends(uint64_t first_n) override;
  bool sends_done(uint64_t first_n) override;
  using Communicator::wait_sends;
  void broadcast_bytes(std::string& data, int root) override;
  void broadcast_bytes_async(std::string& data, int root) override;
  void barrier() override;

  MPI_Comm comm() const { return comm_; }
  void set_timeout(double seconds) { timeout_s_ = seconds; }
  void set_waits_share_cores(bool shared) override { waits_share_cores_ = shared; }

 private:
  // Waits for all of `requests`; peers[i] is the group rank requests[i] talks to.
  void wait_all(std::vector<MPI_Request>& requests, const std::vector<int>& peers,
                const char* what);
  // Starts a point-to-point send of `t` to group rank `dst`.
  MPI_Request isend(const Tensor& t, int dst);
  // How many of the first `first_n` sends started are still pending.
  size_t pending_among_first(uint64_t first_n) const;
  // The first n pending sends are complete: forget them.
  void retire_sends(size_t n);
  // Starts sending `data` from `root` to every other rank, appending the requests and peers.
  void isend_bytes_to_all(const std::string& data, int root, std::vector<MPI_Request>& requests,
                          std::vector<int>& peers);
  void all_gather_bytes(const void* in, void* out, size_t bytes, const char* what);
  [[noreturn]] void timed_out(const std::vector<int>& missing, const char* what);
  std::string describe(int group_rank) const;

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  std::vector<int> world_ranks_;
  std::vector<std::string> hosts_;
  double timeout_s_;
  bool waits_share_cores_ = false;
  std::string name_;
  std::vector<float> scratch_;
  std::vector<char> gathered_;  // every rank's contribution to an all-reduce
  // Asynchronous sends not yet waited for, oldest first; sends_retired_ counts those before.
  std::vector<MPI_Request> pending_sends_;
  std::vector<int> pending_peers_;
  uint64_t sends_retired_ = 0;
};

}  // namespace tessera

#endif  // TESSERA_HAVE_MPI
