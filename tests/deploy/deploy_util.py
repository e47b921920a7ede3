"""Shared helpers of the deployment tests: paths, a tiny model, a `tessera serve` process."""
import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(SOURCE, "deploy")
SKIP = 77  # CTest SKIP_RETURN_CODE


def tessera():
    binary = os.environ.get("TESSERA_BINARY", os.path.join(SOURCE, "build", "tessera"))
    if not os.access(binary, os.X_OK):
        fail(f"no tessera binary at {binary} (set TESSERA_BINARY)")
    return binary


def fail(message):
    print("FAIL: " + message, file=sys.stderr)
    sys.exit(1)


def skip(message):
    print("SKIP: " + message)
    sys.exit(SKIP)


def check(condition, message):
    if not condition:
        fail(message)


def work_dir():
    """A temporary folder removed when the test exits."""
    d = tempfile.mkdtemp(prefix="tessera_deploy_")
    atexit.register(shutil.rmtree, d, True)
    return d


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def make_tiny_model(work, arch="llama", dtype="bf16"):
    out = os.path.join(work, f"model-{arch}-{dtype}")
    subprocess.run([tessera(), "make-model", "--arch", arch, "--preset", "tiny", "--dtype", dtype,
                    "--out", out], check=True, stdout=subprocess.DEVNULL)
    return out


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def post_json(url, body, timeout=60):
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.load(r)


def wait_healthy(port, proc, log_path, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            fail(f"the server exited ({proc.returncode}):\n" + open(log_path).read())
        try:
            if get(f"http://127.0.0.1:{port}/health", timeout=2)[0] == 200:
                return
        except Exception:
            pass
        time.sleep(0.1)
    fail("the server did not become healthy:\n" + open(log_path).read())


class Server:
    """`tessera serve MODEL ARGS` on a free port; stops with SIGTERM (graceful) on exit."""

    def __init__(self, model, args=(), work=None, argv=None, port=None, env=None):
        self.port = port or free_port()
        self.work = work or work_dir()
        self.log_path = os.path.join(self.work, f"serve-{self.port}.log")
        self.argv = argv or [tessera(), "serve", model, "--host", "127.0.0.1", "--port",
                             str(self.port), *args]
        self.env = env

    def __enter__(self):
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True)
        wait_healthy(self.port, self.proc, self.log_path)
        return self

    def url(self, path=""):
        return f"http://127.0.0.1:{self.port}{path}"

    def text(self):
        self.log.flush()
        return open(self.log_path).read()

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def metric_families(text):
    """Names in a Prometheus exposition (# TYPE lines) with their type."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M)}


def serve_flag_problems(args, extra=()):
    """Runs `tessera serve ARGS --port=70000`: the out-of-range port stops it right after the
    command line is parsed, so a CLI11 parse error (the only errors ending in "(see --help)")
    means a flag or value tessera serve does not accept. Returns the problem or None."""
    args = [a for a in args if not a.startswith("--port")]
    r = subprocess.run([tessera(), "serve", *args, *extra, "--port=70000"],
                       capture_output=True, text=True, timeout=60)
    last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    if r.returncode == 0:
        return "tessera serve unexpectedly succeeded"
    if last.endswith("(see --help)"):
        return last
    return None
