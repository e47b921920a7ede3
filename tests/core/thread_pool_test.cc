#include "core/thread_pool.h"

#include <sched.h>
#include <time.h>

#include <atomic>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace tessera {
namespace {

TEST(ThreadPool, EverySlotRunsOncePerRegion) {
  ThreadPool pool(4);
  ASSERT_EQ(pool.size(), 4);
  for (int region = 0; region < 2000; ++region) {
    std::vector<std::atomic<int>> runs(4);
    pool.run([&](int slot) {
      ASSERT_GE(slot, 0);
      ASSERT_LT(slot, 4);
      runs[slot].fetch_add(1);
    });
    for (int s = 0; s < 4; ++s) ASSERT_EQ(runs[s].load(), 1) << "region " << region;
  }
}

TEST(ThreadPool, ParallelForCoversTheRangeOnce) {
  ThreadPool pool(3);
  for (int64_t n : {0, 1, 2, 3, 7, 100, 1001}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    pool.parallel_for(n, [&](int64_t begin, int64_t end) {
      ASSERT_LT(begin, end);
      for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n " << n << " i " << i;
  }
}

TEST(ThreadPool, SlotsRunConcurrentlyWhenThreadsAreFree) {
  // Each slot waits until both have started: this finishes only if two threads run the
  // region's slots at the same time (a caller running both in turn would wait forever).
  ThreadPool pool(2);
  std::atomic<int> started{0};
  pool.run([&](int) {
    started.fetch_add(1);
    while (started.load() < 2) std::this_thread::yield();
  });
  EXPECT_EQ(started.load(), 2);
}

// On one CPU with four pool threads the workers are mostly not running when a region starts;
// the caller then runs their slots instead of waiting for each to be scheduled. (With slots
// bound to threads, every region would take a context switch per worker.)
TEST(ThreadPool, CallerRunsSlotsThatNoWorkerStarted) {
  cpu_set_t saved;
  ASSERT_EQ(sched_getaffinity(0, sizeof saved, &saved), 0);
  cpu_set_t one;
  CPU_ZERO(&one);
  int first = -1;
  for (int c = 0; c < CPU_SETSIZE && first < 0; ++c)
    if (CPU_ISSET(c, &saved)) first = c;
  CPU_SET(first, &one);
  ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);  // threads made now inherit it
  int regions_with_shared_thread = 0;
  {
    ThreadPool pool(4);
    for (int region = 0; region < 500; ++region) {
      std::mutex mu;
      std::vector<std::thread::id> ran_by(4);
      std::vector<std::atomic<int>> runs(4);
      pool.run([&](int slot) {
        runs[slot].fetch_add(1);
        std::lock_guard<std::mutex> lock(mu);
        ran_by[slot] = std::this_thread::get_id();
      });
      for (int s = 0; s < 4; ++s) ASSERT_EQ(runs[s].load(), 1);
      std::set<std::thread::id> threads(ran_by.begin(), ran_by.end());
      if (threads.size() < 4) ++regions_with_shared_thread;
    }
  }
  ASSERT_EQ(sched_setaffinity(0, sizeof saved, &saved), 0);
  EXPECT_GT(regions_with_shared_thread, 0);
}

// Parked workers sleep at once instead of spinning after a region (a pipeline stage handing its
// cores to the next): over many short regions, each followed by an idle gap, the workers burn
// far less CPU time; and the regions after park() still run every slot once.
TEST(ThreadPool, ParkedWorkersSleepInsteadOfSpinning) {
  auto cpu_seconds = [] {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
  };
  ThreadPool pool(3);
  auto burn = [&](bool park) {
    const double t0 = cpu_seconds();
    for (int region = 0; region < 100; ++region) {
      std::vector<std::atomic<int>> runs(3);
      pool.run([&](int slot) { runs[slot].fetch_add(1); });
      for (int s = 0; s < 3; ++s) EXPECT_EQ(runs[s].load(), 1);
      if (park) pool.park();
      timespec gap{0, 1000000};  // 1 ms idle
      nanosleep(&gap, nullptr);
    }
    return cpu_seconds() - t0;
  };
  const double spinning = burn(false), parked = burn(true);
  EXPECT_LT(parked, spinning * 0.5) << "spinning " << spinning << " s, parked " << parked << " s";
}

}  // namespace
}  // namespace tessera
