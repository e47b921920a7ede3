// A Communicator for device tensors over one that reads host memory (MpiCommunicator, which
// Debian's OpenMPI builds without CUDA support): each device tensor is copied to the host, passed
// on, and copied back. The MPI path of the CUDA backend (one GPU per rank, or several ranks on one
// GPU); NCCL replaces it where GPUs talk to each other directly. Host tensors and bytes pass
// straight through, so the control messages cost nothing extra.
#pragma once

#include <deque>
#include <utility>

#include "distributed/communicator.h"
#include "kernels/backend.h"

namespace tessera {

class HostStagedCommunicator : public Communicator {
 public:
  // Both must outlive this object.
  HostStagedCommunicator(Communicator& inner, Backend& backend)
      : inner_(inner), backend_(backend) {}

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  void all_reduce_sum(const Tensor& t) override;
  void all_gather(const Tensor& in, const Tensor& out) override;
  void broadcast(const Tensor& t, int root) override;
  void send(const Tensor& t, int dst) override;
  void recv(const Tensor& t, int src) override;
  void send_async(const Tensor& t, int dst) override;
  uint64_t sends_started() const override { return inner_.sends_started(); }
  void wait_sends(uint64_t first_n) override;
  bool sends_done(uint64_t first_n) override;
  void broadcast_bytes(std::string& data, int root) override { inner_.broadcast_bytes(data, root); }
  void broadcast_bytes_async(std::string& data, int root) override {
    inner_.broadcast_bytes_async(data, root);
  }
  void barrier() override { inner_.barrier(); }
  void set_waits_share_cores(bool shared) override { inner_.set_waits_share_cores(shared); }

 private:
  Tensor to_host(const Tensor& t);
  void drop_sent(uint64_t first_n);

  Communicator& inner_;
  Backend& backend_;
  // Host copies of device tensors whose asynchronous sends are in flight, by send number.
  std::deque<std::pair<uint64_t, Tensor>> in_flight_;
};

}  // namespace tessera
