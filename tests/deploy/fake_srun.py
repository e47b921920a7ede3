#!/usr/bin/python3
"""A stand-in for SLURM's srun in the SLURM script tests: accepts only the srun options the
scripts may use, with valid values, records them and the command in $FAKE_SRUN_LOG (JSON), then
either stops (FAKE_SRUN_MODE=record), runs the command (exec) or runs it under
`mpirun -np nodes x ntasks-per-node` (mpirun), as srun --mpi would start the ranks."""
import json
import os
import sys

KNOWN = {"--mpi": {"pmix", "pmi2", "none"}, "--nodes": int, "--ntasks-per-node": int,
         "--ntasks": int, "--kill-on-bad-exit": int, "--gpus": int, "--cpus-per-task": int,
         "--gpus-per-node": int, "--exclusive": None}


def die(message):
    print(f"fake srun: {message}", file=sys.stderr)
    sys.exit(2)


args = sys.argv[1:]
options = {}
i = 0
while i < len(args) and args[i].startswith("-"):
    name, _, value = args[i].partition("=")
    if name not in KNOWN:
        die(f"unrecognized option '{name}'")
    want = KNOWN[name]
    if want is int:
        if not value.isdigit() or int(value) < (0 if name == "--kill-on-bad-exit" else 1):
            die(f"invalid {name} '{value}'")
    elif isinstance(want, set) and value not in want:
        die(f"invalid {name} '{value}'")
    options[name] = value
    i += 1
command = args[i:]
if not command:
    die("no command")
with open(os.environ["FAKE_SRUN_LOG"], "w") as f:
    json.dump({"options": options, "command": command}, f)
mode = os.environ.get("FAKE_SRUN_MODE", "record")
if mode == "exec":
    os.execvp(command[0], command)
if mode == "mpirun":
    ranks = int(options.get("--nodes", "1")) * int(options.get("--ntasks-per-node", "1"))
    os.execvp("mpirun", ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(ranks),
                         *command])
