// NcclCommunicator (distributed/nccl_communicator.h) against the definition of each call, with
// device and host tensors. Run alone (a group of one: the library loads, the group sets up, the
// calls are identities or copies) and by CTest under mpirun with 2 ranks, which needs 2 GPUs
// (labels cuda, mpi). Skips, saying why, without a GPU, or with fewer GPUs than ranks.
#include "distributed/nccl_communicator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <random>

#include "distributed/comm_test_util.h"
#include "distributed/world.h"
#include "kernels/cuda/cuda_backend.h"

namespace tessera {
namespace {

DistributedWorld* g_world = nullptr;

using testing::rank_values;

// Loading the library and resolving its entry points needs no GPU: this runs wherever the build
// has CUDA and libnccl is installed (the CUDA toolkit's folder here).
TEST(NcclLibrary, LoadsAndNamesItsVersion) {
  if (!nccl_built()) GTEST_SKIP() << "this build has no CUDA backend";
  std::string version;
  try {
    version = nccl_version();
  } catch (const Error& e) {
    GTEST_SKIP() << e.what();
  }
  int major = 0, minor = 0, patch = 0;
  ASSERT_EQ(std::sscanf(version.c_str(), "%d.%d.%d", &major, &minor, &patch), 3) << version;
  EXPECT_GE(major, 2) << version;
}

class Nccl : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (cuda_device_count(&why) == 0) GTEST_SKIP() << "no usable CUDA device: " << why;
    Communicator& w = g_world->world();
    CudaBackendOptions o;
    o.device = w.rank() % cuda_device_count();
    backend_ = make_cuda_backend(o);
    if (w.size() > 1 && !ranks_have_own_gpus(w, *backend_))
      GTEST_SKIP() << w.size() << " ranks need " << w.size() << " GPUs (NCCL refuses two "
                   << "ranks on one GPU)";
    comm_ = make_nccl_communicator(w, *backend_);
  }
  Tensor device(const std::vector<float>& v) {
    Tensor host = host_f32(v);
    Tensor d = backend_->empty({static_cast<int64_t>(v.size())}, DType::kF32);
    backend_->copy(host, d);
    return d;
  }
  static Tensor host_f32(const std::vector<float>& v) { return testing::host_f32(v); }
  std::vector<float> read(const Tensor& t) {
    Tensor host = Tensor::empty(t.shape(), DType::kF32);
    backend_->copy(t, host);
    return std::vector<float>(host.data<float>(), host.data<float>() + host.numel());
  }
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Communicator> comm_;
};

TEST_F(Nccl, VersionIsNamed) {
  EXPECT_FALSE(nccl_version().empty());
  EXPECT_EQ(comm_->size(), g_world->world().size());
  EXPECT_EQ(comm_->rank(), g_world->world().rank());
}

TEST_F(Nccl, AllReduceSumsOnDeviceAndHost) {
  const int n = comm_->size(), me = comm_->rank();
  for (int64_t len : {1, 7, 4096, 100003}) {
    std::vector<double> want(len, 0.0);
    for (int r = 0; r < n; ++r) {
      const auto v = rank_values(r, len, len);
      for (int64_t i = 0; i < len; ++i) want[i] += v[i];
    }
    Tensor d = device(rank_values(me, len, len));
    comm_->all_reduce_sum(d);
    Tensor h = host_f32(rank_values(me, len, len));
    comm_->all_reduce_sum(h);
    const auto got = read(d);
    for (int64_t i = 0; i < len; ++i) {
      ASSERT_NEAR(got[i], want[i], 1e-5 * n * 4) << "device, element " << i << " of " << len;
      ASSERT_EQ(h.data<float>()[i], got[i]) << "host and device tensors sum alike";
    }
  }
}

TEST_F(Nccl, AllGatherConcatenatesInRankOrder) {
  const int n = comm_->size(), me = comm_->rank();
  const int64_t len = 1000;
  Tensor out = backend_->empty({n * len}, DType::kF32);
  comm_->all_gather(device(rank_values(me, len, 5)), out);
  const auto got = read(out);
  for (int r = 0; r < n; ++r) {
    const auto v = rank_values(r, len, 5);
    for (int64_t i = 0; i < len; ++i) ASSERT_EQ(got[r * len + i], v[i]) << "rank " << r;
  }
}

TEST_F(Nccl, BroadcastFromEveryRoot) {
  const int n = comm_->size(), me = comm_->rank();
  for (int root = 0; root < n; ++root) {
    Tensor d = device(rank_values(me, 333, 9));
    comm_->broadcast(d, root);
    EXPECT_EQ(read(d), rank_values(root, 333, 9));
  }
}

TEST_F(Nccl, SendAndReceiveAlongARing) {
  const int n = comm_->size(), me = comm_->rank();
  if (n == 1) GTEST_SKIP() << "a ring needs 2 ranks";
  // Even ranks send first, so that blocking sends meet posted receives.
  const int next = (me + 1) % n, prev = (me + n - 1) % n;
  Tensor from_prev = backend_->empty({512}, DType::kF32);
  Tensor host_from_prev = Tensor::empty({512}, DType::kF32);
  Tensor mine = device(rank_values(me, 512, 3));
  if (me % 2 == 0) {
    comm_->send_async(mine, next);
    comm_->recv(from_prev, prev);
  } else {
    comm_->recv(from_prev, prev);
    comm_->send_async(mine, next);
  }
  comm_->wait_sends();
  EXPECT_EQ(read(from_prev), rank_values(prev, 512, 3));
  // A host tensor on one side, a device tensor on the other.
  if (me % 2 == 0) {
    comm_->send(host_f32(rank_values(me, 512, 4)), next);
    comm_->recv(host_from_prev, prev);
  } else {
    comm_->recv(host_from_prev, prev);
    comm_->send(device(rank_values(me, 512, 4)), next);
  }
  const auto v = rank_values(prev, 512, 4);
  EXPECT_EQ(std::vector<float>(host_from_prev.data<float>(), host_from_prev.data<float>() + 512),
            v);
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  tessera::DistributedOptions options;
  options.tp = std::max(1, tessera::launcher_world_size());  // 0: not under a launcher
  options.timeout_s = 60;
  auto world = tessera::DistributedWorld::create(options);
  tessera::g_world = world.get();
  if (world->config().rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  world.reset();
  return rc;
}
