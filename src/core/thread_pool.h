// A fixed pool of threads that run one parallel region at a time, OpenMP style: run(fn) calls
// fn(thread_index) on every thread, the caller being thread 0, and returns when all are done.
// Workers spin briefly between regions (decode issues hundreds of short regions per token) and
// then sleep, so an idle pool costs no CPU.
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

  // Runs fn(thread_index) for thread_index in [0, size()). Not reentrant: one region at a time.
  void run(const std::function<void(int)>& fn);

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
  void worker_loop(int index);

  int num_threads_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* task_ = nullptr;
  std::atomic<uint32_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
};

// Physical cores this process may run on (affinity mask, one per core even with SMT).
int physical_core_count();

}  // namespace tessera
