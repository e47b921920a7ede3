"""The alerting rules pass `promtool check rules` and their unit tests, and every metric that the
Grafana dashboard, the alerting rules, the HPAs and the prometheus-adapter rules query is one a
live `tessera serve` exposes on /metrics (with the type the query needs)."""
import json
import os
import re
import subprocess
import tempfile

import yaml

from deploy_util import DEPLOY, Server, check, make_tiny_model, metric_families, get, post_json, skip, work_dir

OBS = os.path.join(DEPLOY, "observability")
K8S = os.path.join(DEPLOY, "kubernetes")
# Series Prometheus makes itself, not the target.
SYNTHETIC = {"up"}


def promtool():
    cache = os.environ.get("TESSERA_PROMTOOL_CACHE", os.path.expanduser("~/.cache/tessera/promtool"))
    for p in (os.path.join(cache, "usr", "bin", "promtool"), "/usr/bin/promtool"):
        if os.access(p, os.X_OK):
            return p
    return None


def names_in(expr):
    """Metric names a PromQL expression reads."""
    found = set(re.findall(r"\b(vllm:[A-Za-z0-9_:]+)", expr))
    found |= {m for m in re.findall(r"\b([a-z_]+)\{", expr) if m in SYNTHETIC}
    return found


def queried():
    """{metric name: where it is used}"""
    used = {}
    dash = json.load(open(os.path.join(OBS, "grafana-dashboard.json")))
    for p in dash["panels"]:
        for t in p["targets"]:
            for n in names_in(t["expr"]):
                used.setdefault(n, f"dashboard panel '{p['title']}'")
    for v in dash["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):
            for n in names_in(q["query"]):
                used.setdefault(n, f"dashboard variable {v['name']}")
    for g in yaml.safe_load(open(os.path.join(OBS, "alerts.yaml")))["groups"]:
        for r in g["rules"]:
            for n in names_in(r["expr"]):
                used.setdefault(n, f"alert {r['alert']}")
    for root, _, files in os.walk(K8S):
        for f in files:
            if not f.endswith(".yaml"):
                continue
            for doc in yaml.safe_load_all(open(os.path.join(root, f))):
                if not doc:
                    continue
                if doc.get("kind") == "HorizontalPodAutoscaler":
                    for m in doc["spec"]["metrics"]:
                        name = m["pods"]["metric"]["name"]
                        if name.startswith("prometheus.googleapis.com|"):
                            _, metric, kind = name.split("|")
                            used.setdefault(metric, f"{f} (GMP {kind})")
                            used[metric + "#type"] = kind
                if doc.get("kind") == "ConfigMap" and "config.yaml" in doc.get("data", {}):
                    for rule in yaml.safe_load(doc["data"]["config.yaml"])["rules"]:
                        for n in names_in(rule["seriesQuery"]):
                            used.setdefault(n, f"{f} adapter rule")
    return used


def main():
    tool = promtool()
    if tool is None:
        skip("promtool is not available (tests/server/fetch_promtool.sh)")
    for args in (["check", "rules", "alerts.yaml"], ["test", "rules", "alerts_test.yaml"]):
        r = subprocess.run([tool, *args], cwd=OBS, capture_output=True, text=True)
        check(r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}{r.stderr}")
        print(f"ok: promtool {' '.join(args)}")
    used = queried()
    check(len(used) >= 12, f"only {len(used)} metrics found in the queries: {sorted(used)}")
    work = work_dir()
    model = make_tiny_model(work)
    with Server(model, ["--served-model-name", "tiny", "--max-model-len", "256"], work=work) as s:
        # One finished request, so that labelled series (finished_reason) exist.
        post_json(s.url("/v1/completions"), {"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 4})
        families = metric_families(get(s.url("/metrics"))[1])
    for name, where in sorted(used.items()):
        if name.endswith("#type") or name in SYNTHETIC:
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base != name:
            check(families.get(base) == "histogram",
                  f"{name} ({where}): /metrics has no histogram {base}")
        else:
            check(name in families, f"{name} ({where}) is not on /metrics")
            if name + "#type" in used:
                check(families[name] == used[name + "#type"],
                      f"{name}: {where} wants a {used[name + '#type']}, /metrics has a {families[name]}")
        print(f"ok: {name} ({where})")


main()
