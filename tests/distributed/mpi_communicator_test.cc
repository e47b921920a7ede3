// Every collective of MpiCommunicator against its definition, run by CTest under mpirun with 2
// and 4 ranks (label mpi). Each rank builds the same pseudo-random inputs for every rank, so it
// can compute the expected result itself.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <random>

#include "core/dtype.h"
#include "distributed/comm_test_util.h"
#include "distributed/host_staged_communicator.h"
#include "distributed/world.h"

namespace tessera {
namespace {

DistributedWorld* g_world = nullptr;

using testing::rank_values;

Tensor f32(const std::vector<float>& v) {
  return testing::host_f32(v);
}

Communicator& world() {
  return g_world->world();
}

TEST(MpiCommunicator, AllReduceSumF32InRankOrder) {
  Communicator& c = world();
  for (int64_t n : {1, 7, 2048, 100003}) {
    Tensor t = f32(rank_values(c.rank(), n, n));
    c.all_reduce_sum(t);
    // Definition: ((v0 + v1) + v2) + ... in f32.
    std::vector<float> expect = rank_values(0, n, n);
    for (int r = 1; r < c.size(); ++r) {
      std::vector<float> v = rank_values(r, n, n);
      for (int64_t i = 0; i < n; ++i) expect[i] += v[i];
    }
    for (int64_t i = 0; i < n; ++i)
      ASSERT_EQ(std::memcmp(&t.data<float>()[i], &expect[i], 4), 0) << "n " << n << " i " << i;
  }
}

TEST(MpiCommunicator, AllReduceSumBf16SumsInF32) {
  Communicator& c = world();
  const int64_t n = 4099;
  Tensor t = Tensor::empty({n}, DType::kBF16);
  std::vector<float> mine = rank_values(c.rank(), n, 5);
  for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(t.raw())[i] = f32_to_bf16(mine[i]);
  c.all_reduce_sum(t);
  for (int64_t i = 0; i < n; ++i) {
    float sum = 0;
    for (int r = 0; r < c.size(); ++r) sum += round_to_bf16(rank_values(r, n, 5)[i]);
    ASSERT_EQ(static_cast<uint16_t*>(t.raw())[i], f32_to_bf16(sum)) << i;
  }
}

TEST(MpiCommunicator, EveryRankGetsBitwiseTheSameSum) {
  Communicator& c = world();
  const int64_t n = 2048;
  Tensor t = f32(rank_values(c.rank(), n, 77));
  c.all_reduce_sum(t);
  Tensor all = Tensor::empty({c.size() * n}, DType::kF32);
  c.all_gather(t, all);
  for (int r = 1; r < c.size(); ++r)
    EXPECT_EQ(std::memcmp(all.data<float>(), all.data<float>() + r * n, n * 4), 0) << r;
}

TEST(MpiCommunicator, AllGatherConcatenatesInRankOrder) {
  Communicator& c = world();
  const int64_t n = 333;
  Tensor in = Tensor::empty({n}, DType::kI32);
  for (int64_t i = 0; i < n; ++i) in.data<int32_t>()[i] = c.rank() * 100000 + static_cast<int>(i);
  Tensor out = Tensor::empty({c.size(), n}, DType::kI32);
  c.all_gather(in, out);
  for (int r = 0; r < c.size(); ++r)
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(out.data<int32_t>()[r * n + i], r * 100000 + i);
}

TEST(MpiCommunicator, BroadcastFromEveryRoot) {
  Communicator& c = world();
  for (int root = 0; root < c.size(); ++root) {
    Tensor t = f32(rank_values(c.rank(), 513, 9));
    c.broadcast(t, root);
    std::vector<float> expect = rank_values(root, 513, 9);
    EXPECT_EQ(std::memcmp(t.raw(), expect.data(), 513 * 4), 0) << root;
  }
}

TEST(MpiCommunicator, BroadcastBytesOfAnyLength) {
  Communicator& c = world();
  for (size_t len : {0, 1, 100, 1 << 20}) {
    std::string s;
    if (c.rank() == 0) {
      s.resize(len);
      for (size_t i = 0; i < len; ++i) s[i] = static_cast<char>(i * 31 + 7);
    } else {
      s = "stale";
    }
    c.broadcast_bytes(s, 0);
    ASSERT_EQ(s.size(), len);
    for (size_t i = 0; i < len; ++i) ASSERT_EQ(s[i], static_cast<char>(i * 31 + 7));
  }
}

// The driver hands out several steps without waiting (large ones included, which cannot go
// out eagerly), then one blocking message: every rank receives them all, in order.
TEST(MpiCommunicator, AsyncBroadcastBytesArriveInOrder) {
  Communicator& c = world();
  const std::vector<size_t> lens = {10, 3 << 20, 0, 5000, 1 << 20};
  auto content = [](size_t m, size_t i) { return static_cast<char>(m * 17 + i * 31 + 7); };
  std::vector<std::string> sent(lens.size());
  for (size_t m = 0; m < lens.size(); ++m) {
    if (c.rank() == 0) {
      sent[m].resize(lens[m]);
      for (size_t i = 0; i < lens[m]; ++i) sent[m][i] = content(m, i);
      c.broadcast_bytes_async(sent[m], 0);  // returns at once on the root
    } else {
      std::string got;
      c.broadcast_bytes_async(got, 0);  // a receive elsewhere
      ASSERT_EQ(got.size(), lens[m]) << "message " << m;
      for (size_t i = 0; i < lens[m]; ++i) ASSERT_EQ(got[i], content(m, i)) << m << " " << i;
    }
  }
  std::string last = c.rank() == 0 ? "last" : "";
  c.broadcast_bytes(last, 0);
  EXPECT_EQ(last, "last");
  c.wait_sends();  // the root's asynchronous sends are complete once everyone has them
}

TEST(MpiCommunicator, SendRecvRing) {
  Communicator& c = world();
  const int next = (c.rank() + 1) % c.size(), prev = (c.rank() + c.size() - 1) % c.size();
  Tensor out = f32(rank_values(c.rank(), 1000, 11));
  Tensor in = Tensor::zeros({1000}, DType::kF32);
  c.send_async(out, next);
  c.recv(in, prev);
  c.wait_sends();
  std::vector<float> expect = rank_values(prev, 1000, 11);
  EXPECT_EQ(std::memcmp(in.raw(), expect.data(), 4000), 0);
}

// A pipeline stage waits for one step's sends while the next stage has yet to take a newer
// step's: wait_sends(n) must return once the first n are taken, and sends_done(n) must not
// claim a send that the peer has not received (large messages: no eager copy completes them).
TEST(MpiCommunicator, WaitsForTheFirstSendsOnly) {
  Communicator& c = world();
  const int64_t n = 100000;  // 400 KB, beyond every eager limit
  const bool sender = c.rank() % 2 == 0, paired = sender ? c.rank() + 1 < c.size() : true;
  if (sender && paired) {
    Tensor a = f32(rank_values(c.rank(), n, 21)), b = f32(rank_values(c.rank(), n, 22));
    const uint64_t before = c.sends_started();
    c.send_async(a, c.rank() + 1);
    const uint64_t after_a = c.sends_started();
    c.send_async(b, c.rank() + 1);
    const uint64_t after_b = c.sends_started();
    EXPECT_EQ(after_a, before + 1);
    EXPECT_EQ(after_b, before + 2);
    c.wait_sends(after_a);  // the peer takes a, then waits in the barrier before it takes b
    EXPECT_TRUE(c.sends_done(after_a));
    EXPECT_FALSE(c.sends_done(after_b));
    c.barrier();
    c.wait_sends();
    EXPECT_TRUE(c.sends_done(after_b));
  } else if (!sender) {
    Tensor in = Tensor::zeros({n}, DType::kF32);
    c.recv(in, c.rank() - 1);
    std::vector<float> expect = rank_values(c.rank() - 1, n, 21);
    EXPECT_EQ(std::memcmp(in.raw(), expect.data(), n * 4), 0);
    c.barrier();
    c.recv(in, c.rank() - 1);
    expect = rank_values(c.rank() - 1, n, 22);
    EXPECT_EQ(std::memcmp(in.raw(), expect.data(), n * 4), 0);
  } else {
    c.barrier();
  }
}

TEST(MpiCommunicator, BarrierOrdersPhases) {
  Communicator& c = world();
  // After a barrier every rank has passed the line before it: checked through a later gather of
  // counters that each rank increments before the barrier.
  static int phase = 0;
  ++phase;
  c.barrier();
  Tensor in = Tensor::empty({1}, DType::kI32);
  in.data<int32_t>()[0] = phase;
  Tensor out = Tensor::empty({c.size()}, DType::kI32);
  c.all_gather(in, out);
  for (int r = 0; r < c.size(); ++r) EXPECT_EQ(out.data<int32_t>()[r], phase);
}

TEST(MpiCommunicator, SubGroupsFollowTheWorldConfig) {
  // 4 ranks: tp 2 x pp 2 is built in main; 2 ranks: tp 2.
  const WorldConfig& w = g_world->config();
  Communicator& tp = g_world->tp();
  Communicator& pp = g_world->pp();
  EXPECT_EQ(tp.size(), w.tp);
  EXPECT_EQ(tp.rank(), w.tp_rank());
  EXPECT_EQ(pp.size(), w.pp);
  EXPECT_EQ(pp.rank(), w.pp_rank());
  // The tp group's all-reduce sums only the ranks of this stage.
  Tensor t = Tensor::empty({1}, DType::kF32);
  t.data<float>()[0] = static_cast<float>(w.rank);
  tp.all_reduce_sum(t);
  float expect = 0;
  for (int r = 0; r < w.tp; ++r) expect += static_cast<float>(w.rank_of(w.pp_rank(), r));
  EXPECT_EQ(t.data<float>()[0], expect);
  // Stage to stage: the pp group's neighbour is the same tp_rank of the next stage.
  if (w.pp > 1) {
    Tensor v = Tensor::empty({1}, DType::kI32);
    if (!w.is_last_stage()) {
      v.data<int32_t>()[0] = w.rank;
      pp.send(v, pp.rank() + 1);
    }
    if (!w.is_first_stage()) {
      pp.recv(v, pp.rank() - 1);
      EXPECT_EQ(v.data<int32_t>()[0], w.rank_of(w.pp_rank() - 1, w.tp_rank()));
    }
  }
}

// A "device" whose tensors hold pointers that no host code may touch (real address + 2^62, not
// canonical on x86-64), so a device tensor that reached MPI unstaged would crash the test. Only
// copy() knows how to reach the bytes, as on a GPU.
class FakeDeviceBackend : public Backend {
 public:
  static constexpr uintptr_t kTag = uintptr_t{1} << 62;
  using Backend::empty;
  Device device() const override { return Device::kCUDA; }
  std::string name() const override { return "fake device"; }
  DType activation_dtype() const override { return DType::kF32; }
  DType default_kv_cache_dtype(DType) const override { return DType::kF32; }
  Tensor empty(std::span<const int64_t> shape, DType dtype) override {
    Tensor host = Tensor::empty(shape, dtype);
    void* tagged = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(host.raw()) + kTag);
    return Tensor::wrap(tagged, shape, dtype, host.owner(), Device::kCUDA);
  }
  void copy(const Tensor& src, const Tensor& dst) override {
    TESSERA_CHECK(src.is_contiguous() && dst.is_contiguous() && src.nbytes() == dst.nbytes());
    std::memcpy(real(dst), real(src), src.nbytes());
  }
  static void* real(const Tensor& t) {
    const auto p = reinterpret_cast<uintptr_t>(t.raw());
    return reinterpret_cast<void*>(t.device() == Device::kCPU ? p : p - kTag);
  }
  void fill_zero(const Tensor&) override { unused(); }
  Tensor prepare_weight(const Tensor&) override { unused(); }
  void embedding(const Tensor&, const Tensor&, int64_t, float, const Tensor&) override { unused(); }
  void linear(const Tensor&, std::span<const LinearSegment>, const Tensor&) override { unused(); }
  void rms_norm(const Tensor&, const Tensor&, float, bool, const Tensor&) override { unused(); }
  void rope_table(const Tensor&, const Tensor&, float, const Tensor&) override { unused(); }
  void rope(const Tensor&, int, const Tensor&) override { unused(); }
  void gated_activation(const Tensor&, Activation, const Tensor&) override { unused(); }
  void layer_norm(const Tensor&, const Tensor&, const Tensor&, float, const Tensor&) override {
    unused();
  }
  void activation(const Tensor&, Activation, const Tensor&) override { unused(); }
  void add(const Tensor&, const Tensor&, const Tensor&) override { unused(); }
  void softcap(const Tensor&, float) override { unused(); }
  void gather_rows(const Tensor&, const Tensor&, const Tensor&) override { unused(); }
  void argmax_rows(const Tensor&, const Tensor&) override { unused(); }
  void add_rows_scaled(const Tensor&, const Tensor&, const Tensor&, const Tensor&) override {
    unused();
  }
  void write_kv(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                const AttentionMetadata&) override {
    unused();
  }
  void paged_attention(const Tensor&, const Tensor&, const Tensor&, const AttentionMetadata&,
                       const AttentionParams&, const Tensor&) override {
    unused();
  }

 private:
  [[noreturn]] static void unused() {
    TESSERA_CHECK(false) << "not a collective's op";
    std::abort();
  }
};

Tensor on_device(Backend& b, const Tensor& host) {
  Tensor d = b.empty(host.shape(), host.dtype());
  b.copy(host, d);
  return d;
}
Tensor on_host(Backend& b, const Tensor& dev) {
  Tensor h = Tensor::empty(dev.shape(), dev.dtype());
  b.copy(dev, h);
  return h;
}

// The collectives of a GPU rank over MPI (distributed/host_staged_communicator.h): the same
// definitions, with every tensor on the (fake) device.
TEST(HostStagedCommunicator, CollectivesOfDeviceTensors) {
  FakeDeviceBackend dev;
  HostStagedCommunicator c(world(), dev);
  const int64_t n = 2048;  // one decode step's hidden state
  Tensor t = on_device(dev, f32(rank_values(c.rank(), n, 31)));
  c.all_reduce_sum(t);
  std::vector<float> expect = rank_values(0, n, 31);
  for (int r = 1; r < c.size(); ++r) {
    std::vector<float> v = rank_values(r, n, 31);
    for (int64_t i = 0; i < n; ++i) expect[i] += v[i];
  }
  EXPECT_EQ(std::memcmp(on_host(dev, t).raw(), expect.data(), n * 4), 0);

  Tensor mine = on_device(dev, f32(rank_values(c.rank(), 100, 32)));
  Tensor all = dev.empty({static_cast<int64_t>(c.size()) * 100}, DType::kF32);
  c.all_gather(mine, all);
  Tensor all_host = on_host(dev, all);
  for (int r = 0; r < c.size(); ++r)
    EXPECT_EQ(std::memcmp(all_host.data<float>() + r * 100, rank_values(r, 100, 32).data(), 400),
              0);

  for (int root = 0; root < c.size(); ++root) {
    Tensor b = on_device(dev, f32(rank_values(c.rank(), 300, 33)));
    c.broadcast(b, root);
    EXPECT_EQ(std::memcmp(on_host(dev, b).raw(), rank_values(root, 300, 33).data(), 1200), 0);
  }

  // A ring of asynchronous sends: the staged host copy must live until the send is waited for,
  // though the caller's device tensor goes at once.
  const int next = (c.rank() + 1) % c.size(), prev = (c.rank() + c.size() - 1) % c.size();
  const uint64_t before = c.sends_started();
  c.send_async(on_device(dev, f32(rank_values(c.rank(), 100000, 34))), next);
  Tensor in = dev.empty({100000}, DType::kF32);
  c.recv(in, prev);
  c.wait_sends(before + 1);
  EXPECT_EQ(std::memcmp(on_host(dev, in).raw(), rank_values(prev, 100000, 34).data(), 400000), 0);
  c.barrier();
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int size = tessera::launcher_world_size();
  tessera::DistributedOptions options;
  options.tp = size >= 4 ? 2 : size;
  options.pp = size >= 4 ? size / 2 : 1;
  options.timeout_s = 30;
  auto world = tessera::DistributedWorld::create(options);
  tessera::g_world = world.get();
  // Only rank 0 prints results; every rank runs every test.
  if (world->config().rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int rc = RUN_ALL_TESTS();
  world.reset();
  return rc;
}
