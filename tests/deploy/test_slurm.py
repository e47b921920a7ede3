"""The SLURM scripts under a fake srun (fake_srun.py) that checks the options: the multi-node
script runs one rank per GPU with tp = GPUs per node and pp = nodes through srun --mpi=pmix; its
command line parses in `tessera serve` and really starts under mpirun here (one rank; several
ranks once MPI launching is in the build). The single-node script starts a server that answers."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

from deploy_util import (DEPLOY, check, fail, free_port, make_tiny_model, serve_flag_problems,
                         tessera, wait_healthy)

HERE = os.path.dirname(os.path.abspath(__file__))


def run_script(name, env_extra, work, mode="record"):
    bin_dir = os.path.join(work, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    shutil.copy(os.path.join(HERE, "fake_srun.py"), os.path.join(bin_dir, "srun"))
    log = os.path.join(work, "srun.json")
    if os.path.exists(log):
        os.remove(log)
    env = dict(os.environ, PATH=bin_dir + ":" + os.environ["PATH"], TESSERA=tessera(),
               FAKE_SRUN_LOG=log, FAKE_SRUN_MODE=mode, OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", **env_extra)
    for k in ("SLURM_JOB_NUM_NODES", "SLURM_NNODES", "SLURM_GPUS_PER_NODE", "SLURM_GPUS"):
        if k not in env_extra:
            env.pop(k, None)
    script = os.path.join(DEPLOY, "slurm", name)
    return env, log, ["bash", script]


def record(name, env_extra, work):
    env, log, argv = run_script(name, env_extra, work)
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    check(r.returncode == 0, f"{name}: exit {r.returncode}\n{r.stdout}{r.stderr}")
    return json.load(open(log))


def serve_until_healthy(name, env_extra, work, mode, port):
    env, log, argv = run_script(name, env_extra, work, mode)
    out = os.path.join(work, f"{name}.log")
    with open(out, "w") as f:
        p = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        wait_healthy(port, p, out, seconds=90)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                fail(f"{name}: did not stop on SIGTERM")
    return json.load(open(log)), open(out).read()


def run_under_mpirun(work, model):
    # The same script and command line under mpirun, one node with one GPU (tp = pp = 1).
    port = free_port()
    rec, log = serve_until_healthy("multi-node.sbatch",
                                   {"MODEL": model, "PORT": str(port),
                                    "SLURM_JOB_NUM_NODES": "1", "SLURM_GPUS_PER_NODE": "1"},
                                   work, "mpirun", port)
    check("--distributed-executor-backend=mpi" in rec["command"], rec["command"])
    print("ok: multi-node script started under mpirun -np 1 and served /health")
    # Several ranks need MPI launching in tessera serve.
    r = subprocess.run([tessera(), "serve", f"--model={model}", "--tensor-parallel-size=2",
                        "--distributed-executor-backend=mpi", "--port=70000"],
                       capture_output=True, text=True, timeout=60)
    if "not available in this build" in r.stderr:
        print("SKIP (part): multi-rank mpirun run: tensor/pipeline parallelism is not in this "
              "build yet (" + r.stderr.strip().splitlines()[-1] + ")")
    else:
        port = free_port()
        serve_until_healthy("multi-node.sbatch",
                            {"MODEL": model, "PORT": str(port), "SLURM_JOB_NUM_NODES": "1",
                             "SLURM_GPUS_PER_NODE": "2"}, work, "mpirun", port)
        print("ok: multi-node script served with 2 MPI ranks (tp=2)")


def main():
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", "-s", "bash", os.path.join(DEPLOY, "slurm", "multi-node.sbatch"),
                            os.path.join(DEPLOY, "slurm", "single-node.sbatch")],
                           capture_output=True, text=True)
        check(r.returncode == 0, "shellcheck:\n" + r.stdout)
        print("ok: shellcheck")
    work = tempfile.mkdtemp()
    try:
        # Two nodes of 8 GPUs (SLURM writes the count with its type).
        rec = record("multi-node.sbatch", {"MODEL": "/models/Llama-3.1-405B-Instruct",
                                           "SLURM_JOB_NUM_NODES": "2",
                                           "SLURM_GPUS_PER_NODE": "h100:8"}, work)
        o, cmd = rec["options"], rec["command"]
        check(o.get("--mpi") == "pmix", f"srun --mpi: {o}")
        check(o.get("--nodes") == "2" and o.get("--ntasks-per-node") == "8", f"srun ranks: {o}")
        check(cmd[:2] == [tessera(), "serve"], f"command: {cmd}")
        args = cmd[2:]
        for want in ("--model=/models/Llama-3.1-405B-Instruct", "--tensor-parallel-size=8",
                     "--pipeline-parallel-size=2", "--distributed-executor-backend=mpi"):
            check(want in args, f"multi-node command lacks {want}: {cmd}")
        problem = serve_flag_problems(args)
        check(problem is None, f"tessera serve rejects the multi-node command line: {problem}")
        print(f"ok: multi-node: srun {' '.join(f'{k}={v}' for k, v in o.items())} "
              f"{' '.join(cmd[1:])}")

        model = make_tiny_model(work)
        if shutil.which("mpirun") is None:
            print("SKIP (part): mpirun is not installed (Debian openmpi-bin); the mpirun runs "
                  "are left out")
        else:
            run_under_mpirun(work, model)

        # Single node: srun runs the server itself.
        port = free_port()
        rec, log = serve_until_healthy("single-node.sbatch",
                                       {"MODEL": model, "PORT": str(port), "SLURM_GPUS": "1"},
                                       work, "exec", port)
        check(rec["options"].get("--ntasks") == "1", rec)
        check("--tensor-parallel-size=1" in rec["command"], rec["command"])
        print("ok: single-node script served /health")
    finally:
        shutil.rmtree(work, ignore_errors=True)


main()
