#include "distributed/world.h"

#include <unistd.h>

#include <cstdlib>

#include "core/status.h"

namespace tessera {

#if TESSERA_HAVE_MPI
std::unique_ptr<DistributedWorld> create_mpi_world(const DistributedOptions& options);
bool mpi_available() {
  return true;
}
#else
bool mpi_available() {
  return false;
}
#endif

namespace {

std::string local_host() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0) return "unknown";
  return name;
}

class SingleWorld : public DistributedWorld {
 public:
  SingleWorld() {
    config_ = WorldConfig::make(1, 0, 1, 1);
    hosts_ = {local_host()};
  }
  Communicator& world() override { return comm_; }
  Communicator& tp() override { return comm_; }
  Communicator& pp() override { return comm_; }
  [[noreturn]] void abort(int code) override { std::_Exit(code); }

 private:
  SingleCommunicator comm_;
};

int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : 0;
}

}  // namespace

int launcher_world_size() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"})
    if (int n = env_int(name); n > 0) return n;
  return 0;
}

int launcher_rank() {
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"})
    if (const char* v = std::getenv(name); v && *v) return std::atoi(v);
  return 0;
}

std::string DistributedWorld::describe_rank(int rank) const {
  return fmt::format("rank {} (host {})", rank, host(rank));
}

std::unique_ptr<DistributedWorld> DistributedWorld::create(const DistributedOptions& options) {
  const int ranks = options.tp * options.pp;
  if (options.tp < 1) fail("--tensor-parallel-size must be at least 1, got {}", options.tp);
  if (options.pp < 1) fail("--pipeline-parallel-size must be at least 1, got {}", options.pp);
  const int launched = launcher_world_size();
  if (ranks == 1 && launched <= 1) return std::make_unique<SingleWorld>();
#if TESSERA_HAVE_MPI
  return create_mpi_world(options);
#else
  fail(ErrorKind::kUnsupported,
       "--tensor-parallel-size {} x --pipeline-parallel-size {} needs {} ranks, but this build of "
       "tessera has no MPI: install libopenmpi-dev and openmpi-bin and rebuild",
       options.tp, options.pp, ranks);
#endif
}

}  // namespace tessera
