#include "engine/distributed_executor.h"

#include <chrono>
#include <thread>

#include "core/logging.h"

namespace tessera {

namespace {
// The first byte of each control message.
constexpr char kStep = 'S', kStop = 'Q', kPing = 'P';
}  // namespace

DistributedExecutor::DistributedExecutor(ModelRunner& runner, DistributedWorld& world,
                                         double grace_s)
    : runner_(runner), world_(world), grace_s_(grace_s) {}

DistributedExecutor::~DistributedExecutor() {
  if (!failed_) shutdown();
}

void DistributedExecutor::fail_job(const DistributedError& e) {
  spdlog::error("{}; stopping every rank", e.what());
  if (!failed_.exchange(true)) {
    DistributedWorld* world = &world_;
    const double grace = grace_s_;
    std::thread([world, grace] {
      std::this_thread::sleep_for(std::chrono::duration<double>(grace));
      world->abort(1);
    }).detach();
  }
  throw e;
}

Tensor DistributedExecutor::execute(const StepInputs& inputs) {
  if (failed_) throw DistributedError("a rank has failed; the job is stopping");
  try {
    std::string message = std::string(1, kStep) + inputs.serialize();
    world_.world().broadcast_bytes(message, 0);
    return runner_.execute(inputs);
  } catch (const DistributedError& e) {
    fail_job(e);
  }
}

void DistributedExecutor::submit(const StepInputs& inputs) {
  if (runner_.pipeline_stages() <= 1) return ModelExecutor::submit(inputs);
  if (failed_) throw DistributedError("a rank has failed; the job is stopping");
  try {
    std::string& message = messages_.emplace_back(std::string(1, kStep) + inputs.serialize());
    world_.world().broadcast_bytes_async(message, 0);
    runner_.begin(inputs);
  } catch (const DistributedError& e) {
    fail_job(e);
  }
}

Tensor DistributedExecutor::complete() {
  if (runner_.pipeline_stages() <= 1) return ModelExecutor::complete();
  if (failed_) throw DistributedError("a rank has failed; the job is stopping");
  try {
    Tensor logits = runner_.finish();
    messages_.pop_front();
    return logits;
  } catch (const DistributedError& e) {
    fail_job(e);
  }
}

void DistributedExecutor::heartbeat() {
  if (failed_) throw DistributedError("a rank has failed; the job is stopping");
  try {
    std::string message(1, kPing);
    world_.world().broadcast_bytes(message, 0);
    world_.world().barrier();
  } catch (const DistributedError& e) {
    fail_job(e);
  }
}

void DistributedExecutor::shutdown() {
  if (stopped_ || failed_) return;
  stopped_ = true;
  std::string message(1, kStop);
  try {
    world_.world().broadcast_bytes(message, 0);
  } catch (const DistributedError& e) {
    spdlog::error("{}", e.what());
    world_.abort(1);
  }
}

void run_worker_loop(ModelRunner& runner, DistributedWorld& world, bool lazy_sends) {
  try {
    for (;;) {
      std::string message;
      world.world().broadcast_bytes(message, 0);
      TESSERA_CHECK(!message.empty());
      // Stop and ping come when the driver has nothing in flight: every output was taken.
      if (message[0] == kStop) {
        if (lazy_sends) runner.retire(0);
        return;
      }
      if (message[0] == kPing) {
        if (lazy_sends) runner.retire(0);
        world.world().barrier();
        continue;
      }
      TESSERA_CHECK_EQ(message[0], kStep);
      StepInputs inputs = StepInputs::deserialize(std::string_view(message).substr(1));
      if (lazy_sends) {
        runner.begin(inputs);
        runner.retire(kMaxPipelineGroups);
      } else {
        runner.execute(inputs);  // with pipeline stages: begin, then wait for its own sends
      }
    }
  } catch (const DistributedError& e) {
    spdlog::error("{}; stopping every rank", e.what());
    world.abort(1);
  }
}

}  // namespace tessera
