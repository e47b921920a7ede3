// Collectives over a group of ranks. Implementations: SingleCommunicator (one rank, no MPI),
// MpiCommunicator (OpenMPI), and later NCCL for GPUs; the interface takes device tensors so that
// an NCCL implementation fits. Every rank of the group must make the same calls in the same order.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace tessera {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In place: t = sum over ranks of t (f32 or bf16).
  virtual void all_reduce_sum(const Tensor& t) = 0;
  // out (contiguous, size() * in.numel() elements) = the ranks' `in` concatenated in rank order.
  virtual void all_gather(const Tensor& in, const Tensor& out) = 0;
  // t on every rank = t on `root`.
  virtual void broadcast(const Tensor& t, int root) = 0;
  virtual void send(const Tensor& t, int dst) = 0;
  virtual void recv(const Tensor& t, int src) = 0;
  // Variable-length bytes from root to all (control messages: scheduler decisions).
  virtual void broadcast_bytes(std::string& data, int root) = 0;
  virtual void barrier() = 0;
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
