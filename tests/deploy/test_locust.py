"""bench/locustfile.py runs headless for a few seconds against a local `tessera serve` with zero
failures (Debian's python3-locust)."""
import csv
import os
import shutil
import subprocess
import tempfile

from deploy_util import SOURCE, Server, check, make_tiny_model, post_json, skip, work_dir


def main():
    locust = shutil.which("locust", path="/usr/bin:" + os.environ.get("PATH", ""))
    if locust is None:
        skip("locust is not installed (Debian package python3-locust, scripts/packages.txt)")
    work = work_dir()
    model = make_tiny_model(work)
    with Server(model, ["--served-model-name", "tiny", "--max-model-len", "512"], work=work) as s:
        # Chat needs the model's tokenizer; builds that serve token ids only get TOKEN_IDS=1.
        try:
            post_json(s.url("/v1/chat/completions"),
                      {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 2})
            mode = {}
        except Exception as e:
            print(f"note: chat is not served here ({e}); Locust sends token-id prompts")
            mode = {"TOKEN_IDS": "1"}
        env = dict(os.environ, MAX_TOKENS="8", **mode)
        r = subprocess.run([locust, "-f", os.path.join(SOURCE, "bench", "locustfile.py"),
                            "--headless", "--host", s.url(), "--users", "4", "--spawn-rate", "4",
                            "--run-time", "4s", "--only-summary", "--csv",
                            os.path.join(work, "run"), "--exit-code-on-error", "1"],
                           capture_output=True, text=True, env=env, timeout=120, cwd=work)
        print(r.stdout[-2000:], r.stderr[-2000:])
    rows = list(csv.DictReader(open(os.path.join(work, "run_stats.csv"))))
    total = [row for row in rows if row["Name"] == "Aggregated"][0]
    requests, failures = int(total["Request Count"]), int(total["Failure Count"])
    check(requests > 0, "locust sent no request")
    check(failures == 0, f"{failures} of {requests} requests failed")
    check(r.returncode == 0, f"locust exited {r.returncode}")
    print(f"ok: {requests} requests, 0 failures")


main()
