// OpsKernels for any x86-64 CPU (see ops_impl.h).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/ops.h"

namespace tessera::cpu {
namespace generic {
#include "kernels/cpu/ops_impl.h"
}  // namespace generic

OpsKernels ops_kernels_generic() {
  return generic::make_ops_kernels();
}

int64_t attention_scratch_floats(const AttentionParams& params, int64_t rows) {
  int64_t nq = rows * (params.num_heads / params.num_kv_heads);
  return 4 * nq + 2 * nq * params.head_dim + 2 * kAttentionTile * params.head_dim;
}

}  // namespace tessera::cpu
