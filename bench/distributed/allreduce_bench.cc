// All-reduce latency of one decode step's hidden state between ranks (run under mpirun):
//   mpirun --allow-run-as-root -np 2 build/bench/distributed/allreduce_bench [values] [iters]
// Prints median and p90 microseconds per all_reduce_sum for f32 and bf16, measured on rank 0
// after warm-up, ranks released together by a barrier before every call.
#include <fmt/format.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "distributed/world.h"

using namespace tessera;

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 2048;
  const int iters = argc > 2 ? std::atoi(argv[2]) : 2000;
  DistributedOptions options;
  options.tp = launcher_world_size() > 0 ? launcher_world_size() : 1;
  auto world = DistributedWorld::create(options);
  Communicator& c = world->tp();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    Tensor t = Tensor::zeros({n}, dtype);
    std::vector<double> us;
    for (int i = 0; i < iters + 100; ++i) {
      c.barrier();
      auto start = std::chrono::steady_clock::now();
      c.all_reduce_sum(t);
      auto end = std::chrono::steady_clock::now();
      if (i >= 100) us.push_back(std::chrono::duration<double, std::micro>(end - start).count());
    }
    std::sort(us.begin(), us.end());
    if (c.rank() == 0)
      fmt::print(
          "all_reduce_sum {} x {} over {} ranks (hosts {} .. {}): median {:.1f} us, p90 {:.1f} "
          "us\n",
          dtype_name(dtype), n, c.size(), world->host(0), world->host(c.size() - 1),
          us[us.size() / 2], us[us.size() * 9 / 10]);
  }
  return 0;
}
