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

namespace {
void attention_dispatch(const AttentionArgs& args, int seq, int kv_head, int64_t row_begin,
                        int64_t row_end, float* scratch) {
  if (attention_avx512_supports(args.params, args.block_size)) {
    attention_avx512(args, seq, kv_head, row_begin, row_end, scratch);
  } else {
    avx512::attention(args, seq, kv_head, row_begin, row_end, scratch);
  }
}
}  // namespace

OpsKernels ops_kernels_avx512() {
  OpsKernels k = avx512::make_ops_kernels();
  k.attention = attention_dispatch;
  return k;
}

}  // namespace tessera::cpu
