#include "core/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "core/status.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define TESSERA_PAUSE() _mm_pause()
#else
#define TESSERA_PAUSE() ((void)0)
#endif

namespace tessera {

namespace {
// About 50-100 microseconds of spinning before sleeping: longer than the gap between two regions
// of one forward pass, shorter than a human-visible cost when idle.
constexpr int kSpinIterations = 20000;
}  // namespace

ThreadPool::ThreadPool(int num_threads) : num_threads_(num_threads < 1 ? 1 : num_threads) {
  workers_.reserve(num_threads_ - 1);
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::run(const std::function<void(int)>& fn) {
  if (num_threads_ == 1) {
    fn(0);
    return;
  }
  TESSERA_CHECK(task_ == nullptr) << "ThreadPool::run is not reentrant";
  task_ = &fn;
  parked_.store(false, std::memory_order_relaxed);
  done_.store(0, std::memory_order_relaxed);
  const uint32_t region = generation_.load(std::memory_order_relaxed) + 1;
  // Slot 0 is the caller's; the slot counter is published before the generation that wakes
  // workers, so a worker that sees the new generation sees its slots.
  next_slot_.store(uint64_t{region} << 32 | 1, std::memory_order_release);
  generation_.store(region, std::memory_order_release);
  generation_.notify_all();
  fn(0);
  done_.fetch_add(1, std::memory_order_acq_rel);
  run_slots(region);
  // Only slots that some thread has started remain: wait for them, spinning while they are
  // likely running and sleeping if one's thread was descheduled (it then has our core).
  for (int spin = 0;; ++spin) {
    int d = done_.load(std::memory_order_acquire);
    if (d == num_threads_) break;
    if (spin < kSpinIterations) {
      TESSERA_PAUSE();
    } else {
      done_.wait(d, std::memory_order_acquire);
    }
  }
  task_ = nullptr;
}

void ThreadPool::run_slots(uint32_t region) {
  uint64_t cur = next_slot_.load(std::memory_order_acquire);
  while (static_cast<uint32_t>(cur >> 32) == region) {
    const int slot = static_cast<int>(cur & 0xffffffffu);
    if (slot >= num_threads_) return;
    if (!next_slot_.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel,
                                          std::memory_order_acquire))
      continue;
    // The region cannot finish (nor task_ change) before this claimed slot is done.
    (*task_)(slot);
    if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == num_threads_) done_.notify_one();
    cur = next_slot_.load(std::memory_order_acquire);
  }
}

void ThreadPool::worker_loop() {
  uint32_t seen = 0;
  while (true) {
    uint32_t gen;
    for (int spin = 0;; ++spin) {
      gen = generation_.load(std::memory_order_acquire);
      if (gen != seen) break;
      if (spin < kSpinIterations && !parked_.load(std::memory_order_relaxed)) {
        TESSERA_PAUSE();
      } else {
        generation_.wait(seen, std::memory_order_acquire);
      }
    }
    seen = gen;
    if (stop_.load(std::memory_order_acquire)) return;
    run_slots(gen);
  }
}

int physical_core_count() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) {
    unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : static_cast<int>(n);
  }
  std::set<std::pair<std::string, std::string>> cores;
  int cpus = 0;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &set)) continue;
    ++cpus;
    std::string base = fmt::format("/sys/devices/system/cpu/cpu{}/topology/", cpu);
    std::ifstream core_file(base + "core_id"), package_file(base + "physical_package_id");
    std::string core, package;
    if (!(core_file >> core) || !(package_file >> package)) {
      core = std::to_string(cpu);  // no topology: count logical CPUs
      package = "?";
    }
    cores.emplace(package, core);
  }
  int n = cores.empty() ? cpus : static_cast<int>(cores.size());
  // A container's CPU quota (cgroup v2 cpu.max, e.g. a Kubernetes limit) caps what we may use.
  std::ifstream quota_file("/sys/fs/cgroup/cpu.max");
  std::string quota, period;
  if (quota_file >> quota >> period && quota != "max") {
    long q = std::stol(quota), p = std::stol(period);
    if (q > 0 && p > 0) n = std::min<int>(n, static_cast<int>((q + p - 1) / p));
  }
  return n < 1 ? 1 : n;
}

}  // namespace tessera
