// MemoryMeter: bytes in use follow the owners' lifetimes (copies included), the peak is the most
// at once, and a reset starts it again from what is in use.
#include "core/memory_meter.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace tessera {
namespace {

std::shared_ptr<void> buffer(bool* freed) {
  return std::shared_ptr<void>(new char[8], [freed](void* p) {
    delete[] static_cast<char*>(p);
    *freed = true;
  });
}

TEST(MemoryMeter, CountsLiveOwnersAndThePeak) {
  MemoryMeter m;
  EXPECT_EQ(m.in_use(), 0);
  bool a_freed = false, b_freed = false;
  std::shared_ptr<void> a = m.track(buffer(&a_freed), 100);
  std::shared_ptr<void> b = m.track(buffer(&b_freed), 30);
  EXPECT_EQ(m.in_use(), 130);
  EXPECT_EQ(m.peak(), 130);
  std::shared_ptr<void> a_copy = a;  // a copy holds the same count, not another
  a.reset();
  EXPECT_EQ(m.in_use(), 130);
  EXPECT_FALSE(a_freed);
  a_copy.reset();
  EXPECT_TRUE(a_freed) << "the memory goes with its last owner";
  EXPECT_EQ(m.in_use(), 30);
  EXPECT_EQ(m.peak(), 130);
  m.reset_peak();
  EXPECT_EQ(m.peak(), 30);
  std::shared_ptr<void> c = m.track(std::shared_ptr<void>(), 50);
  EXPECT_EQ(m.peak(), 80);
  b.reset();
  c.reset();
  EXPECT_EQ(m.in_use(), 0);
  EXPECT_EQ(m.peak(), 80);
}

TEST(MemoryMeter, OwnersMayOutliveTheMeter) {
  bool freed = false;
  std::shared_ptr<void> p;
  {
    MemoryMeter m;
    p = m.track(buffer(&freed), 10);
  }
  p.reset();
  EXPECT_TRUE(freed);
}

TEST(MemoryMeter, ThreadsCountExactly) {
  MemoryMeter m;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        std::shared_ptr<void> p = m.track(std::shared_ptr<void>(), 3);
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(m.in_use(), 0);
  EXPECT_GE(m.peak(), 3);
  EXPECT_LE(m.peak(), 12);
}

}  // namespace
}  // namespace tessera
