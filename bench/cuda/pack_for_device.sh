#!/usr/bin/env bash
# Prepares .device/ for a lent GPU machine (docs/cuda.md): the CUDA test binaries and `tessera`
# built here, the shared libraries they need that a CUDA image may lack (everything but glibc,
# the CUDA driver and cuBLAS, which the image has), and an 8b-shaped model folder with no weights
# (benchmarks load it with --load-format dummy). Pass `.device` in the run tool's `carry`, then
# run bench/cuda/device_check.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${BUILD_DIR:-build}
cmake --build "$build" --target tessera cuda_backend_test cuda_model_test nccl_communicator_test \
  kernels_bench
rm -rf .device
mkdir -p .device/bin .device/lib .device/models
cp "$build/tessera" "$build/tests/kernels/cuda_backend_test" "$build/tests/model/cuda_model_test" \
  "$build/tests/distributed/nccl_communicator_test" "$build/bench/kernels/kernels_bench" \
  .device/bin/
for bin in .device/bin/*; do
  ldd "$bin" | awk '$3 ~ /^\// {print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so* | libm.so* | libdl.so* | librt.so* | libpthread.so* | ld-linux* | libcuda.so* | \
      libcublas* | libcudart* | libnccl*) ;;
    *) cp -L "$lib" .device/lib/ ;;
  esac
done
# The tiny model of every architecture in bf16, for bench/cuda/hf_compare.py.
for arch in llama mistral qwen2 qwen3 gemma2; do
  "$build/tessera" make-model --arch "$arch" --preset tiny --dtype bf16 \
    --out ".device/models/tiny-$arch" >/dev/null
done
cp bench/cuda/hf_compare.py .device/bin/
# Llama-3-8B shapes (hidden 4096, 32 layers, 32 heads, 8 KV heads, FFN 14336, vocab 128256):
# the `8b` preset's config.json over the small preset's files, without weights.
"$build/tessera" make-model --preset small --out .device/models/8b >/dev/null
rm -f .device/models/8b/*.safetensors*
python3 - .device/models/8b/config.json <<'PY'
import json, sys
path = sys.argv[1]
c = json.load(open(path))
c.update(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
         intermediate_size=14336, vocab_size=128256, head_dim=128, max_position_embeddings=8192,
         torch_dtype="bfloat16")
json.dump(c, open(path, "w"), indent=2)
PY
du -sh .device
