// Collectives over a group of ranks. Implementations: SingleCommunicator (one rank, no MPI),
// MpiCommunicator (OpenMPI), and later NCCL for GPUs; the interface takes device tensors so that
// an NCCL implementation fits. Every rank of the group must make the same calls in the same order.
// A peer that does not answer within the communicator's timeout makes the call throw
// DistributedError naming that peer and its host.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace tessera {

// A rank died or stopped answering; the message names it. Not a user error: callers bring the
// whole job down (DistributedWorld::abort) after reporting it.
class DistributedError : public Error {
 public:
  explicit DistributedError(std::string message)
      : Error(std::move(message), ErrorKind::kInternal) {}
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In place: t = sum over ranks of t (f32 or bf16). The sum is taken in f32 in rank order
  // (((r0 + r1) + r2) + ...), so every rank gets bitwise the same result.
  virtual void all_reduce_sum(const Tensor& t) = 0;
  // out (contiguous, size() * in.numel() elements) = the ranks' `in` concatenated in rank order.
  // Any dtype.
  virtual void all_gather(const Tensor& in, const Tensor& out) = 0;
  // t on every rank = t on `root`.
  virtual void broadcast(const Tensor& t, int root) = 0;
  virtual void send(const Tensor& t, int dst) = 0;
  virtual void recv(const Tensor& t, int src) = 0;
  // Starts a send and returns at once; `t` must stay alive and unchanged until the send has
  // been waited for. Lets pipeline stages hand on a micro-batch while they compute the next.
  virtual void send_async(const Tensor& t, int dst) { send(t, dst); }
  // Asynchronous sends (send_async and the root's broadcast_bytes_async) are numbered in the
  // order they start: sends_started() counts them, wait_sends(n) waits for the first n (so a
  // pipeline step can wait for its own sends, not for newer ones that a peer takes later), and
  // wait_sends() for all.
  virtual uint64_t sends_started() const { return 0; }
  virtual void wait_sends(uint64_t /*first_n*/) {}
  // Whether the first n have completed, without waiting (if so they count as waited for).
  virtual bool sends_done(uint64_t /*first_n*/) { return true; }
  void wait_sends() { wait_sends(sends_started()); }
  // Variable-length bytes from root to all (control messages: scheduler decisions). Receivers
  // may wait indefinitely for the message to start (an idle server sends nothing); once it has
  // started, the usual timeout applies.
  virtual void broadcast_bytes(std::string& data, int root) = 0;
  // On the root: starts sending `data` (which must stay alive and unchanged until waited for)
  // and returns at once; elsewhere the same as broadcast_bytes. Lets the driver hand out the
  // next step while pipeline stages are still busy with the previous one.
  virtual void broadcast_bytes_async(std::string& data, int root) { broadcast_bytes(data, root); }
  virtual void barrier() = 0;
  // Ranks that take turns on shared cores (pipeline stages on one host): a waiting rank then
  // naps longer once a wait has lasted, so that its wake-ups do not take cores from the rank
  // computing. Only a hint; communicators that do not poll ignore it.
  virtual void set_waits_share_cores(bool /*shared*/) {}
};

// The group of one: collectives are identities, point-to-point is an error.
class SingleCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce_sum(const Tensor&) override {}
  void all_gather(const Tensor& in, const Tensor& out) override;
  void broadcast(const Tensor&, int) override {}
  void send(const Tensor&, int) override;
  void recv(const Tensor&, int) override;
  void broadcast_bytes(std::string&, int) override {}
  void barrier() override {}
};

}  // namespace tessera
