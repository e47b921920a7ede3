// The ranks of one job and the communicators made from its WorldConfig: the whole world, this
// rank's tensor-parallel group (the tp ranks of its stage) and its pipeline group (the ranks
// with its tp_rank, one per stage, so that group rank = pp_rank). With one rank it is made of
// SingleCommunicators and needs no MPI.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "distributed/communicator.h"
#include "distributed/world_config.h"

namespace tessera {

struct DistributedOptions {
  int tp = 1;
  int pp = 1;
  // Seconds a rank waits for a peer inside a step before it declares it dead.
  double timeout_s = 60;
};

class DistributedWorld {
 public:
  // One rank when tp * pp == 1 and the process was not launched by mpirun/srun; otherwise joins
  // the MPI job (MPI_Init) and checks its size against tp * pp. Throws tessera::Error when MPI
  // is needed but this build has none, or the sizes disagree.
  static std::unique_ptr<DistributedWorld> create(const DistributedOptions& options);
  virtual ~DistributedWorld() = default;

  const WorldConfig& config() const { return config_; }
  virtual Communicator& world() = 0;
  virtual Communicator& tp() = 0;
  virtual Communicator& pp() = 0;
  // Host name of a world rank (for messages and the start-up log).
  const std::string& host(int rank) const { return hosts_.at(rank); }
  // "rank 1 (host b)".
  std::string describe_rank(int rank) const;
  // Brings every rank of the job down at once (MPI_Abort); with one rank, exits.
  [[noreturn]] virtual void abort(int code) = 0;

 protected:
  WorldConfig config_;
  std::vector<std::string> hosts_;
};

// True when this build has MPI.
bool mpi_available();
// The world size the launcher (OpenMPI, PMI/PMIx, SLURM) gave this process, or 0 when it was not
// started by one.
int launcher_world_size();
// This process's rank in the launcher's job, or 0.
int launcher_rank();

}  // namespace tessera
