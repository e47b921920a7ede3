// A Communicator over NCCL, for the tensor- and pipeline-parallel groups of ranks that each have
// a GPU of their own: device tensors go GPU to GPU (NVLink, PCIe peer copies, or the network NCCL
// finds), ordered on the CUDA backend's stream like its kernels, with no host copies. An MPI
// group with the same ranks (the bootstrap) hands NCCL its unique id and carries the control
// bytes and barriers. Host tensors are staged through the device, so every rank of a call uses
// the same path whatever memory its tensor is in.
//
// libnccl.so.2 is opened when the first communicator is made, not linked, as cuBLASLt is: a
// tessera binary runs without it wherever NCCL is not used.
#pragma once

#include <memory>
#include <string>

#include "distributed/communicator.h"
#include "kernels/backend.h"

namespace tessera {

// Whether this build can make NCCL communicators (it has the CUDA backend); the library itself is
// looked for only when one is made.
bool nccl_built();

// Collective over the ranks of `bootstrap` (each calls it, in the same order), on `backend`,
// which must be the CUDA backend. Both must outlive the result. Throws tessera::Error
// (kUnavailable) when libnccl cannot be loaded or NCCL cannot set the group up, naming why.
//
// Differences from MpiCommunicator: sums are NCCL's (the same bits on every rank, not
// necessarily in rank order); the calls return once queued on the stream, and a peer that stops
// answering stalls the stream rather than raising DistributedError (the world communicator,
// still MPI, notices it).
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, Backend& backend);

// Whether every rank of `world` computes on a GPU of its own (no two share a GPU UUID), where
// NCCL can connect them: it refuses two ranks on one GPU. A collective over `world`; false
// without CUDA.
bool ranks_have_own_gpus(Communicator& world, Backend& backend);

// The NCCL library's version, e.g. "2.28.3", loading it (throws as make_nccl_communicator).
std::string nccl_version();

}  // namespace tessera
