#!/usr/bin/env bash
# The GPU checks of docs/cuda.md in one call on a lent machine, from what
# bench/cuda/pack_for_device.sh put in .device/ (carry it): the op and model tests against the
# CPU twin, compute-sanitizer on the op tests, the machine's copy and bf16 matrix ceilings (through
# PyTorch, which the image has), the tiny models against Hugging Face transformers on the GPU,
# and tessera's 8b-shape prefill and decode speed. Logs go to
# $OUT; a summary comes last. Each step has its own timeout so that one hang cannot eat the lease.
#   usage: bench/cuda/device_check.sh [quick]   (quick: tests only)
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/tessera-device}
mkdir -p "$out"
dev=.device
summary=()
note() { summary+=("$1"); echo "== $1"; }

# cuBLASLt comes from the image: the toolkit's folder or PyTorch's nvidia-cublas wheel.
cublas_dir=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64; do
  [ -e "$d/libcublasLt.so.13" ] && cublas_dir=$d && break
done
if [ -z "$cublas_dir" ]; then
  cublas_dir=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null || true)
fi
export LD_LIBRARY_PATH="$PWD/$dev/lib:${cublas_dir}:${LD_LIBRARY_PATH:-}"
note "cuBLASLt from: ${cublas_dir:-not found}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv \
  > "$out/nvidia-smi.txt" 2>&1
note "GPU: $(tail -1 "$out/nvidia-smi.txt")"

run_step() {  # name timeout command...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  note "$name: rc=$rc in $((SECONDS - t0)) s ($(grep -E '^\[  (PASSED|FAILED)  \]|tests? (ran|from)' "$out/$name.log" | tail -2 | tr '\n' ' '))"
}

run_step cuda_backend_test 120 "$dev/bin/cuda_backend_test"
run_step cuda_model_test 240 "$dev/bin/cuda_model_test"
# NCCL in a group of one (one GPU: NCCL refuses two ranks on it); libnccl from the image or
# PyTorch's nvidia-nccl wheel.
nccl_dir=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null || true)
LD_LIBRARY_PATH="$LD_LIBRARY_PATH:${nccl_dir}" run_step nccl 120 "$dev/bin/nccl_communicator_test"
run_step hf_compare 240 python3 "$dev/bin/hf_compare.py" "$dev/bin/tessera" "$dev"/models/tiny-*
note "transformers: $(tail -6 "$out/hf_compare.log" | tr '\n' ';')"
if [ "${1:-}" = quick ]; then printf '%s\n' "${summary[@]}"; exit 0; fi
if command -v compute-sanitizer > /dev/null; then
  run_step memcheck 240 compute-sanitizer --tool memcheck --error-exitcode 3 \
    "$dev/bin/cuda_backend_test"
  note "memcheck: $(grep -E 'ERROR SUMMARY' "$out/memcheck.log" | tail -1)"
fi

# The ceilings, measured now (METHOD.md): a device-to-device copy (bytes read + written) and an
# 8192^3 bf16 matrix product on random data.
timeout 120 python3 - > "$out/ceilings.txt" 2>&1 <<'PY'
import torch
torch.manual_seed(0)
x = torch.randn(1 << 30, device="cuda", dtype=torch.bfloat16)  # 2 GiB
y = torch.empty_like(x)
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
def timed(f, n):
    for _ in range(3): f()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(n):
        s.record(); f(); e.record(); torch.cuda.synchronize(); times.append(s.elapsed_time(e) / 1e3)
    return sorted(times)[len(times) // 2]
t = timed(lambda: y.copy_(x), 20)
print(f"copy_bandwidth_GBps {2 * x.numel() * 2 / t / 1e9:.0f}")
t = timed(lambda: a @ b, 20)
print(f"bf16_matmul_TFLOPs {2 * 8192**3 / t / 1e12:.0f}")
PY
note "ceilings: $(tr '\n' ' ' < "$out/ceilings.txt")"

# tessera on Llama-3-8B shapes with random bf16 weights: batch-1 decode (bandwidth-bound: the
# roofline is copy bandwidth / 16 GB per token) and a 2048-token prefill.
run_step bench_8b 300 "$dev/bin/tessera" bench latency --model "$dev/models/8b" \
  --load-format dummy --device cuda --dtype bfloat16 --batch-size 1 --input-len 2048 \
  --output-len 64 --num-iters 2 --num-iters-warmup 1 --max-model-len 4096
note "8b: $(grep -E '^(model load|prefill|decode)' "$out/bench_8b.log" | tr -s ' ' | tr '\n' ';')"
# The same decode op by op (--enforce-eager): what the CUDA graphs gain, in the same call.
run_step bench_8b_eager 240 "$dev/bin/tessera" bench latency --model "$dev/models/8b" \
  --load-format dummy --device cuda --dtype bfloat16 --batch-size 1 --input-len 16 \
  --output-len 64 --num-iters 2 --num-iters-warmup 1 --max-model-len 4096 --enforce-eager
note "8b eager: $(grep -E '^decode' "$out/bench_8b_eager.log" | tr -s ' ' | tr '\n' ';')"
note "8b start: $(grep -oE '(profiling step|# GPU blocks|CUDA graphs).*' "$out/bench_8b.log" | tr '\n' ';')"
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
