// Counts the bytes of a backend's live tensors, and the most that were alive at once since the
// last reset: what a profiling step measures (engine/profile_run.h) to size the KV cache.
// Tensors may outlive the backend that made them: each holds the counters through a shared
// pointer.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

namespace tessera {

class MemoryMeter {
 public:
  MemoryMeter() : state_(std::make_shared<State>()) {}

  // An owner for the same memory as `owner` that counts `bytes` as in use until it, and every
  // copy of it, is gone.
  std::shared_ptr<void> track(std::shared_ptr<void> owner, int64_t bytes) {
    std::shared_ptr<State> state = state_;
    state->add(bytes);
    void* p = owner.get();
    return std::shared_ptr<void>(p, [state, owner = std::move(owner), bytes](void*) mutable {
      owner.reset();
      state->in_use.fetch_sub(bytes, std::memory_order_relaxed);
    });
  }

  int64_t in_use() const { return state_->in_use.load(std::memory_order_relaxed); }
  int64_t peak() const { return state_->peak.load(std::memory_order_relaxed); }
  // The peak starts again from what is in use now.
  void reset_peak() { state_->peak.store(in_use(), std::memory_order_relaxed); }

 private:
  struct State {
    std::atomic<int64_t> in_use{0}, peak{0};
    void add(int64_t bytes) {
      const int64_t now = in_use.fetch_add(bytes, std::memory_order_relaxed) + bytes;
      int64_t seen = peak.load(std::memory_order_relaxed);
      while (now > seen && !peak.compare_exchange_weak(seen, now, std::memory_order_relaxed)) {
      }
    }
  };
  std::shared_ptr<State> state_;
};

}  // namespace tessera
