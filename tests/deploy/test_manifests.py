"""Every kustomization under deploy/kubernetes renders (kubectl kustomize), every object validates
against the Kubernetes schemas offline (validate_manifests.mjs: npm kubernetes-models and checked
CRD subsets), every flag passed to `tessera serve` / `tessera run-batch` is one the binary
accepts, and the pieces agree with one another (Service -> pods, HPA -> adapter rule,
PrometheusRule -> alerts.yaml, probes, /dev/shm)."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import yaml

from deploy_util import DEPLOY, SOURCE, check, fail, serve_flag_problems, skip, tessera

K8S = os.path.join(DEPLOY, "kubernetes")
MODULES = os.path.join(os.environ.get("TESSERA_NPM_CACHE",
                                      os.path.expanduser("~/.cache/tessera/npm")), "node_modules")


def kustomizations():
    found = []
    for root, _, files in os.walk(K8S):
        if "kustomization.yaml" in files:
            text = open(os.path.join(root, "kustomization.yaml")).read()
            if "kind: Component" not in text:
                found.append(root)
    return sorted(found)


def render(path):
    r = subprocess.run(["kubectl", "kustomize", "--load-restrictor=LoadRestrictionsNone", path],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        fail(f"kubectl kustomize {os.path.relpath(path, SOURCE)}:\n{r.stderr}")
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def pod_specs(obj):
    """(where, pod template) of a workload."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        yield kind, spec["template"]
    elif kind == "LeaderWorkerSet":
        lwt = spec["leaderWorkerTemplate"]
        if "leaderTemplate" in lwt:
            yield "leader", lwt["leaderTemplate"]
        yield "worker", lwt["workerTemplate"]


def help_flags(sub):
    text = subprocess.run([tessera(), sub, "--help"], capture_output=True, text=True).stdout
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", text)) | set(re.findall(r"\s(-[a-z]),", text))


def tessera_commands(container):
    """[(subcommand, args)] that a tessera container runs."""
    command, args = container.get("command"), container.get("args", [])
    if not command:
        return [("serve", args)]  # the image's ENTRYPOINT
    if command[:2] == ["tessera", "run-batch"]:
        return [("run-batch", args)]
    if command[0].endswith("sh") and "-c" in command:
        script = " ".join(args).replace("\\\n", " ")
        found = []
        for m in re.finditer(r"tessera (serve|run-batch)((?:\s+--?[A-Za-z0-9=/._:-]+)+)", script):
            found.append((m.group(1), shlex.split(m.group(2))))
        return found
    return []


def check_flags(where, sub, args, accepted):
    for a in args:
        if a.startswith("-"):
            name = a.split("=", 1)[0]
            check(name in accepted, f"{where}: `tessera {sub}` has no flag {name}")
    if sub == "serve":
        problem = serve_flag_problems(args)
    else:
        r = subprocess.run([tessera(), sub, *args], capture_output=True, text=True, timeout=60)
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        problem = last if r.returncode and last.endswith("(see --help)") else None
    check(problem is None, f"{where}: tessera {sub} {' '.join(args)}: {problem}")


def plain_resources():
    """Without kubectl: the complete objects of the resource files (not patches), one group per
    kustomization folder, so that schemas and flags are still checked."""
    groups = {}
    for path in kustomizations() + [os.path.join(K8S, "components", c)
                                    for c in sorted(os.listdir(os.path.join(K8S, "components")))]:
        k = yaml.safe_load(open(os.path.join(path, "kustomization.yaml")))
        objects = []
        for r in k.get("resources", []):
            f = os.path.join(path, r)
            if os.path.isfile(f):
                objects += [d for d in yaml.safe_load_all(open(f)) if d]
        if objects:
            groups[path] = objects
    return groups


def main():
    rendered = shutil.which("kubectl") is not None
    if not rendered:
        print("note: kubectl (with its built-in kustomize) is not installed: checking the resource "
              "files one by one instead of the rendered overlays")
    if not os.path.isdir(os.path.join(MODULES, "kubernetes-models")) or not shutil.which("node"):
        skip("the kubernetes-models npm package is not available (tests/npm/fetch_assets.sh)")
    accepted = {"serve": help_flags("serve"), "run-batch": help_flags("run-batch")}
    alerts = yaml.safe_load(open(os.path.join(DEPLOY, "observability", "alerts.yaml")))
    every = []
    flags_checked = 0
    groups = {p: None for p in kustomizations()} if rendered else plain_resources()
    for path, objects in groups.items():
        name = os.path.relpath(path, K8S)
        if rendered:
            objects = render(path)
        check(objects, f"{name}: renders nothing")
        every += objects
        by_kind = {}
        for o in objects:
            by_kind.setdefault(o["kind"], []).append(o)
        # Containers running tessera: flags, probes, shared memory, resources.
        pods = {}
        for o in objects:
            for where, template in pod_specs(o):
                pods[(o["kind"], o["metadata"]["name"], where)] = template
                for c in template["spec"]["containers"]:
                    if not c.get("image", "").startswith("tessera"):
                        continue
                    cmds = tessera_commands(c)
                    at = f"{name}: {o['kind']} {o['metadata']['name']} {where}"
                    for sub, args in cmds:
                        check_flags(at, sub, args, accepted[sub])
                        flags_checked += 1
                    check("resources" in c and c["resources"].get("requests"),
                          f"{at}: no resource requests")
                    mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                    check("/dev/shm" in mounts, f"{at}: /dev/shm is not mounted")
                    serves = any(sub == "serve" for sub, _ in cmds)
                    if serves:
                        for probe in ("readinessProbe", "startupProbe"):
                            check(c.get(probe, {}).get("httpGet", {}).get("path") == "/health",
                                  f"{at}: {probe} must GET /health")
                        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
                        check(ports.get("http") == 8000, f"{at}: no http port 8000")
                    if where == "leader":
                        check("mpirun" in " ".join(c.get("args", [])),
                              f"{at}: the leader must start the group with mpirun")
                    if where == "worker":
                        check(not serves, f"{at}: workers wait for mpirun, they run no server")
                    sec = template["spec"].get("securityContext", {})
                    check(sec.get("runAsNonRoot") is True or "openshift" in name,
                          f"{at}: runAsNonRoot is not set")
        # Services select pods that serve.
        for svc in by_kind.get("Service", []):
            check(svc["spec"]["ports"][0]["port"] == 8000, f"{name}: Service port is not 8000")
            selector = svc["spec"]["selector"]
            matched = [k for k, t in pods.items()
                       if all(t["metadata"].get("labels", {}).get(a) == b
                              for a, b in selector.items() if not a.startswith("leaderworkerset"))
                       and (k[2] != "worker" or "leaderworkerset.sigs.k8s.io/worker-index" not in selector)]
            check(matched or not pods, f"{name}: Service {svc['metadata']['name']} selects no pod template")
            if "LeaderWorkerSet" in by_kind:
                check(selector.get("leaderworkerset.sigs.k8s.io/worker-index") == "0",
                      f"{name}: the multi-node Service must select only the leader")
        # Autoscalers: a Pods metric on the queue, with behaviour, targeting a rendered Deployment.
        for hpa in by_kind.get("HorizontalPodAutoscaler", []):
            spec = hpa["spec"]
            target = spec["scaleTargetRef"]
            check(not rendered or any(d["metadata"]["name"] == target["name"]
                                      for d in by_kind.get(target["kind"], [])),
                  f"{name}: the HPA targets a missing {target['kind']} {target['name']}")
            metric = spec["metrics"][0]
            check(metric["type"] == "Pods", f"{name}: the HPA metric must be of type Pods")
            metric_name = metric["pods"]["metric"]["name"]
            check("num_requests_waiting" in metric_name, f"{name}: HPA on {metric_name}")
            b = spec.get("behavior", {})
            for direction in ("scaleUp", "scaleDown"):
                check("stabilizationWindowSeconds" in b.get(direction, {}) and
                      b[direction].get("policies"), f"{name}: HPA {direction} lacks a window or policies")
            adapters = [c for c in by_kind.get("ConfigMap", []) if c["metadata"]["name"] == "adapter-config"]
            if not rendered:
                continue
            if metric_name.startswith("prometheus.googleapis.com|"):
                check("PodMonitoring" in by_kind, f"{name}: GMP metric without a PodMonitoring")
            else:
                check(adapters and "ServiceMonitor" in by_kind,
                      f"{name}: {metric_name} needs prometheus-adapter rules and a ServiceMonitor")
                exposed = set()
                for rule in yaml.safe_load(adapters[0]["data"]["config.yaml"])["rules"]:
                    series = re.match(r"'?([A-Za-z_:][A-Za-z0-9_:]*)", rule["seriesQuery"]).group(1)
                    n = rule.get("name", {})
                    as_name = re.sub(n["matches"], n["as"].replace("${", "\\g<").replace("}", ">"),
                                     series) if n else series
                    exposed.add(as_name)
                check(metric_name in exposed,
                      f"{name}: the adapter rules expose {sorted(exposed)}, not {metric_name}")
        for rule in by_kind.get("PrometheusRule", []):
            check(rule["spec"]["groups"] == alerts["groups"],
                  f"{name}: PrometheusRule differs from deploy/observability/alerts.yaml")
        print(f"ok: {name}: {len(objects)} objects")
    if not rendered:
        # The strategic-merge patches carry the storage components' command lines.
        for comp in sorted(os.listdir(os.path.join(K8S, "components"))):
            path = os.path.join(K8S, "components", comp)
            k = yaml.safe_load(open(os.path.join(path, "kustomization.yaml")))
            for patch in k.get("patches", []):
                if "path" not in patch:
                    continue
                doc = yaml.safe_load(open(os.path.join(path, patch["path"])))
                for c in doc["spec"]["template"]["spec"].get("containers", []):
                    if "args" in c:
                        check_flags(f"components/{comp}/{patch['path']}", "serve", c["args"],
                                    accepted["serve"])
                        flags_checked += 1
    check(flags_checked >= 6, f"only {flags_checked} tessera command lines found")
    r = subprocess.run(["node", os.path.join(os.path.dirname(__file__), "validate_manifests.mjs"),
                        MODULES], input=json.dumps(every), capture_output=True, text=True)
    print(r.stdout, end="")
    check(r.returncode == 0, "schema validation failed:\n" + r.stdout + r.stderr)
    kinds = {o["kind"] for o in every}
    for want in ("Deployment", "Service", "HorizontalPodAutoscaler", "LeaderWorkerSet",
                 "PodMonitoring", "ServiceMonitor", "PrometheusRule", "Job", "PersistentVolume",
                 "Route"):
        check(want in kinds, f"no {want} among the manifests")
    print(f"ok: {len(every)} objects valid, {flags_checked} tessera command lines accepted")


main()
