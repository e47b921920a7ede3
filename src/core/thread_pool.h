// A fixed pool of threads that run one parallel region at a time, OpenMP style: run(fn) calls
// fn(slot) once for every slot in [0, size()) and returns when all are done. Slots are claimed,
// not assigned: the caller runs slot 0 and then any slot no worker has started, so a worker that
// the OS has not scheduled (cores shared with HTTP threads, another rank, other programs) never
// holds up a region it has not joined. Workers spin briefly between regions (decode issues
// hundreds of short regions per token) and then sleep, so an idle pool costs no CPU.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

namespace tessera {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return num_threads_; }

  // Runs fn(slot) once for each slot in [0, size()), concurrently on up to size() threads; a
  // thread may run several slots in turn. Not reentrant: one region at a time.
  void run(const std::function<void(int)>& fn);

  // Sends idle workers to sleep now instead of after their spin (until the next run()).
  void park() { parked_.store(true, std::memory_order_relaxed); }

  // Splits [0, n) into size() contiguous ranges and calls fn(begin, end) for each non-empty one.
  template <typename F>
  void parallel_for(int64_t n, F&& fn) {
    if (n <= 0) return;
    if (num_threads_ == 1 || n == 1) {
      fn(int64_t{0}, n);
      return;
    }
    run([&](int t) {
      int64_t begin = n * t / num_threads_;
      int64_t end = n * (t + 1) / num_threads_;
      if (begin < end) fn(begin, end);
    });
  }

 private:
  void worker_loop();
  // Claims and runs the current region's unclaimed slots; region is its generation.
  void run_slots(uint32_t region);

  int num_threads_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* task_ = nullptr;
  std::atomic<uint32_t> generation_{0};  // bumped per region; workers sleep on it
  std::atomic<uint64_t> next_slot_{0};   // generation << 32 | next unclaimed slot
  std::atomic<int> done_{0};             // slots of the current region finished
  std::atomic<bool> stop_{false};
  std::atomic<bool> parked_{false};
};

// Physical cores this process may run on (affinity mask, one per core even with SMT).
int physical_core_count();

}  // namespace tessera
