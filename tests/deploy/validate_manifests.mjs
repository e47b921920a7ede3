// Validates Kubernetes objects (a JSON array on stdin) offline: built-in kinds with the schemas
// of the npm package kubernetes-models, prometheus-operator kinds with
// @kubernetes-models/prometheus-operator, and LeaderWorkerSet, PodMonitoring and Route with the
// checked subsets in schemas/ (their pod templates and selectors with the Kubernetes schemas).
// Usage: node validate_manifests.mjs NODE_MODULES_DIR < objects.json. Prints one line per object;
// exits 1 when any is invalid.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const modules = process.argv[2];
const here = dirname(fileURLToPath(import.meta.url));
const objects = JSON.parse(readFileSync(0, "utf8"));
const Ajv = (await import(join(modules, "ajv", "dist", "ajv.js"))).default;
const ajv = new Ajv({ allErrors: true, strict: false });
const schema = (name) => ajv.compile(JSON.parse(readFileSync(join(here, "schemas", name), "utf8")));
const k8s = async (name, pkg = ["kubernetes-models"]) =>
  (await import(join(modules, ...pkg, "_schemas", `${name}.js`))).validate;
const meta = ["@kubernetes-models", "apimachinery"];
const podTemplate = await k8s("IoK8sApiCoreV1PodTemplateSpec");
const labelSelector = await k8s("IoK8sApimachineryPkgApisMetaV1LabelSelector", meta);
const objectMeta = await k8s("IoK8sApimachineryPkgApisMetaV1ObjectMeta", meta);

function check(fn, value, where) {
  if (fn(value)) return [];
  return (fn.errors || []).map((e) => `${where}${e.instancePath} ${e.message || e.keyword}`);
}

const crds = {
  "leaderworkerset.x-k8s.io/v1/LeaderWorkerSet": (o) => [
    ...check(schema("leaderworkerset.json"), o, ""),
    ...check(podTemplate, o.spec?.leaderWorkerTemplate?.leaderTemplate ?? {}, "leaderTemplate"),
    ...check(podTemplate, o.spec?.leaderWorkerTemplate?.workerTemplate ?? {}, "workerTemplate"),
  ],
  "monitoring.googleapis.com/v1/PodMonitoring": (o) => [
    ...check(schema("podmonitoring.json"), o, ""),
    ...check(labelSelector, o.spec?.selector ?? {}, "selector"),
  ],
  "route.openshift.io/v1/Route": (o) => check(schema("route.json"), o, ""),
};

async function modelClass(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const candidates =
    group === "monitoring.coreos.com"
      ? [join(modules, "@kubernetes-models", "prometheus-operator", group, version, `${kind}.js`)]
      : [join(modules, "kubernetes-models", group || "", version, `${kind}.js`)];
  for (const path of candidates) {
    try {
      return (await import(path))[kind];
    } catch {}
  }
  return null;
}

let bad = 0;
for (const o of objects) {
  const id = `${o.apiVersion}/${o.kind} ${o.metadata?.name}`;
  let errors = [];
  const crd = crds[`${o.apiVersion}/${o.kind}`];
  if (crd) {
    errors = crd(o);
  } else {
    const Model = await modelClass(o.apiVersion, o.kind);
    if (!Model) {
      errors = [`no schema for ${o.apiVersion} ${o.kind}`];
    } else {
      try {
        new Model(o).validate();
      } catch (e) {
        errors = [e.message];
      }
    }
  }
  errors.push(...check(objectMeta, o.metadata ?? {}, "metadata"));
  if (!o.metadata?.name) errors.push("metadata.name is missing");
  if (errors.length) {
    bad++;
    console.log(`INVALID ${id}: ${errors.join("; ")}`);
  } else {
    console.log(`valid ${id}`);
  }
}
process.exit(bad ? 1 : 0);
