#include "distributed/host_staged_communicator.h"

namespace tessera {

namespace {
bool on_device(const Tensor& t) {
  return t.device() != Device::kCPU;
}
}  // namespace

Tensor HostStagedCommunicator::to_host(const Tensor& t) {
  Tensor host = backend_.empty_host(t.shape(), t.dtype());
  backend_.copy(t, host);
  return host;
}

void HostStagedCommunicator::all_reduce_sum(const Tensor& t) {
  if (inner_.size() == 1) return;
  if (!on_device(t)) return inner_.all_reduce_sum(t);
  Tensor host = to_host(t);
  inner_.all_reduce_sum(host);
  backend_.copy(host, t);
}

void HostStagedCommunicator::all_gather(const Tensor& in, const Tensor& out) {
  if (!on_device(in) && !on_device(out)) return inner_.all_gather(in, out);
  Tensor host_in = on_device(in) ? to_host(in) : in;
  Tensor host_out = on_device(out) ? backend_.empty_host(out.shape(), out.dtype()) : out;
  inner_.all_gather(host_in, host_out);
  if (on_device(out)) backend_.copy(host_out, out);
}

void HostStagedCommunicator::broadcast(const Tensor& t, int root) {
  if (inner_.size() == 1) return;
  if (!on_device(t)) return inner_.broadcast(t, root);
  Tensor host = rank() == root ? to_host(t) : backend_.empty_host(t.shape(), t.dtype());
  inner_.broadcast(host, root);
  if (rank() != root) backend_.copy(host, t);
}

void HostStagedCommunicator::send(const Tensor& t, int dst) {
  inner_.send(on_device(t) ? to_host(t) : t, dst);
}

void HostStagedCommunicator::recv(const Tensor& t, int src) {
  if (!on_device(t)) return inner_.recv(t, src);
  Tensor host = backend_.empty_host(t.shape(), t.dtype());
  inner_.recv(host, src);
  backend_.copy(host, t);
}

void HostStagedCommunicator::send_async(const Tensor& t, int dst) {
  if (!on_device(t)) return inner_.send_async(t, dst);
  Tensor host = to_host(t);  // synchronous: the device tensor may change once this returns
  const uint64_t number = inner_.sends_started();
  inner_.send_async(host, dst);
  in_flight_.emplace_back(number, std::move(host));
}

void HostStagedCommunicator::drop_sent(uint64_t first_n) {
  while (!in_flight_.empty() && in_flight_.front().first < first_n) in_flight_.pop_front();
}

void HostStagedCommunicator::wait_sends(uint64_t first_n) {
  inner_.wait_sends(first_n);
  drop_sent(first_n);
}

bool HostStagedCommunicator::sends_done(uint64_t first_n) {
  if (!inner_.sends_done(first_n)) return false;
  drop_sent(first_n);
  return true;
}

}  // namespace tessera
