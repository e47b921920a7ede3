"""`tessera plan` predicts the KV block count that `tessera serve` logs ("# CPU blocks: N") for
the same model and settings: with a fixed KV budget, and with --gpu-memory-utilization of this
machine's memory (the CPU engine's device memory: physical memory or the cgroup limit)."""
import json
import os
import re
import shlex
import subprocess
import tempfile

from deploy_util import Server, check, make_tiny_model, serve_flag_problems, tessera, work_dir


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
    if "--devices-per-node" not in args:
        args = ["--devices-per-node", "1", *args]
    r = subprocess.run([tessera(), "plan", model, "--json", *args],
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
        # The command the plan prints is one tessera serve accepts, for this folder.
        argv = shlex.split(p["serve_command"])
        check(argv[:3] == ["tessera", "serve", model], f"plan command: {p['serve_command']}")
        problem = serve_flag_problems(argv[3:], extra=[model])
        check(problem is None, f"tessera serve rejects the planned command: {problem}")
        print(f"ok: {arch} {dtype} {' '.join(settings)}: {served_blocks} blocks of {block_bytes} bytes")
    # Built-in models: the printed commands parse too (flags only; the folders are not here).
    for name in ("Llama-3.1-70B", "Llama-3.1-405B", "DeepSeek-R1", "Mixtral-8x7B"):
        p = plan(name, ["--device-memory", "80GiB", "--devices-per-node", "8"])
        argv = shlex.split(p["serve_command"])
        problem = serve_flag_problems(argv[2:])
        check(problem is None, f"{name}: tessera serve rejects the planned command: {problem}")
        print(f"ok: {name}: {p['serve_command']}")


main()
