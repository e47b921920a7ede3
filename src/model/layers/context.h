// What every layer needs: the device to run on and the tensor-parallel group it belongs to.
#pragma once

#include "distributed/communicator.h"
#include "kernels/backend.h"

namespace tessera {

struct ModelContext {
  Backend& backend;
  Communicator& tp;  // tensor-parallel group of this rank (a group of one without TP)
  int tp_rank() const { return tp.rank(); }
  int tp_size() const { return tp.size(); }
};

}  // namespace tessera
