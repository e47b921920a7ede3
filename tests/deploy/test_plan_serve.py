"""`tessera plan` predicts the KV block count that `tessera serve` logs ("# CPU blocks: N") for
the same model and settings: with a fixed KV budget, and with --gpu-memory-utilization of this
machine's memory (the CPU engine's device memory: physical memory or the cgroup limit)."""
import json
import os
import re
import subprocess
import tempfile

from deploy_util import Server, check, make_tiny_model, tessera, work_dir


def machine_memory():
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit != "max" and 0 < int(limit) < total:
            total = int(limit)
    except OSError:
        pass
    return total


def plan(model, args):
    r = subprocess.run([tessera(), "plan", model, "--json", "--devices-per-node", "1", *args],
                       capture_output=True, text=True)
    check(r.returncode == 0, f"tessera plan {' '.join(args)}: {r.stderr}")
    return json.loads(r.stdout)


def main():
    work = work_dir()
    cases = [
        ("llama", "bf16", ["--kv-cache-memory", "5MiB"]),
        ("qwen2", "bf16", ["--kv-cache-memory", "7MiB", "--block-size", "32"]),
        ("llama", "f16", ["--gpu-memory-utilization", "0.003"]),
        ("gemma2", "bf16", ["--gpu-memory-utilization", "0.002", "--max-num-batched-tokens", "256"]),
    ]
    for arch, dtype, settings in cases:
        model = make_tiny_model(work, arch, dtype)
        common = ["--max-model-len", "512", "--kv-cache-dtype", "bfloat16", *settings]
        with Server(model, common, work=work) as s:
            log = s.text()
        m = re.search(r"# CPU blocks: (\d+), block size (\d+), (\d+) per block", log)
        check(m, "serve logged no block count:\n" + log)
        served_blocks, block_bytes = int(m.group(1)), int(m.group(3))
        p = plan(model, ["--device-memory", str(machine_memory()), *common])
        r = p["recommended"]
        check(r is not None and r["tensor_parallel_size"] == 1, f"plan: {p['why']}")
        block_size = int(m.group(2))
        check(r["kv_bytes_per_token_per_rank"] * block_size == block_bytes,
              f"{arch}: plan says {r['kv_bytes_per_token_per_rank']} bytes per token, serve "
              f"{block_bytes} per {block_size}-token block")
        check(r["num_blocks"] == served_blocks,
              f"{arch} {settings}: plan predicts {r['num_blocks']} blocks, serve logged {served_blocks}")
        print(f"ok: {arch} {dtype} {' '.join(settings)}: {served_blocks} blocks of {block_bytes} bytes")


main()
