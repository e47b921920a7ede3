// OpsKernels compiled for AVX-512 (see ops_impl.h).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/ops.h"

namespace tessera::cpu {
namespace avx512 {
#include "kernels/cpu/ops_impl.h"
}  // namespace avx512

OpsKernels ops_kernels_avx512() { return avx512::make_ops_kernels(); }

}  // namespace tessera::cpu
