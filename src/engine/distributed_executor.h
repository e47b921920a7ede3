// Multi-rank execution: rank 0 (the driver) runs the one scheduler; every step it broadcasts the
// step's inputs to all ranks, and every rank runs the same forward pass on its share of the
// model. Only the driver samples. A DistributedError (a rank that died or stopped answering)
// brings the whole job down: workers at once, the driver after a short grace period in which
// the server reports itself unhealthy and fails the open requests.
#pragma once

#include <deque>
#include <string>

#include <atomic>

#include "distributed/world.h"
#include "engine/model_runner.h"

namespace tessera {

class DistributedExecutor : public ModelExecutor {
 public:
  // `grace_s`: seconds between a failure and the abort of the job.
  DistributedExecutor(ModelRunner& runner, DistributedWorld& world, double grace_s = 2.0);
  ~DistributedExecutor() override;
  const ModelConfig& config() const override { return runner_.config(); }
  Tensor execute(const StepInputs& inputs) override;
  // With pipeline stages: the control message goes out without waiting, this rank runs its
  // stage and hands the hidden states on; complete() collects the oldest step's logits.
  void submit(const StepInputs& inputs) override;
  Tensor complete() override;
  // Every rank meets rank 0 in a barrier (bounded by the communicator's timeout).
  void heartbeat() override;
  // Tells the workers to leave their loop (once; also done by the destructor).
  void shutdown();

 private:
  [[noreturn]] void fail_job(const DistributedError& e);

  ModelRunner& runner_;
  DistributedWorld& world_;
  double grace_s_;
  bool stopped_ = false;
  std::atomic<bool> failed_{false};
  std::deque<std::string> messages_;  // control messages of the steps in flight
};

// The most steps a pipeline-parallel driver keeps in flight (its groups of sequences).
constexpr int kMaxPipelineGroups = 8;

// A worker rank: runs each step the driver broadcasts until it says stop. With `lazy_sends`
// (pipeline stages only), a step's sends complete in the background (it retires steps whose sends
// completed, and waits only past kMaxPipelineGroups), so it starts the next step before the
// driver has taken this one's output: needed when the driver keeps more groups in flight than
// there are stages. Otherwise each step waits for its own sends, which keeps a transport
// without a progress thread (TCP) moving them: nothing progresses while a stage computes.
void run_worker_loop(ModelRunner& runner, DistributedWorld& world, bool lazy_sends = false);

}  // namespace tessera
