#!/usr/bin/env bash
# Checks the Helm chart in helm/authgate (a CI step of .ci/run):
#   1. helm lint (strict, Kubernetes 1.30) of each case below;
#   2. helm template with the defaults, with every optional object enabled
#      (ServiceMonitor with every field, PrometheusRule with additional rules,
#      NetworkPolicy with sources, HPA, PDB, dashboard, headless Service,
#      init and extra containers, extraObjects, image digest and
#      global.imageRegistry) and with an existing Secret (plus a Recreate
#      strategy, a NetworkPolicy naming no source, a one-replica PDB with
#      maxUnavailable 1); every rendered object is validated against the
#      Kubernetes 1.30 OpenAPI schemas (kubernetes-validate, strict: unknown
#      fields are errors). The only kinds without a schema there are the
#      Prometheus Operator's ServiceMonitor and PrometheusRule (CRDs): they
#      are allowed explicitly and checked structurally below instead;
#   3. cross-object checks (selectors, ports, probes, security context,
#      namespaces, the NetworkPolicy admitting only the named sources, the
#      Grafana dashboard matching dashboards/authgate.json, the
#      PrometheusRule's groups matching dashboards/alerts.yaml, ...), the
#      chart README's value table against values.schema.json, and renders
#      that must fail (PodDisruptionBudgets that block every eviction, a
#      rollout that cannot progress, a missing alerts or dashboard file, a
#      SQLite store outside the writable data volume, schema errors);
#   4. the rendered auth.yaml of each case passes `authgate validate`.
#
# helm/authgate/files/alerts.yaml must be a symlink to dashboards/alerts.yaml.
# While it is missing the check fails, but still runs the PrometheusRule
# checks on a copy of the chart holding a minimal rule file.
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
import re
import shutil
import subprocess
import sys
import tempfile

import yaml
import helm_python as helm
import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

CHART = "helm/authgate"
DASHBOARD = "dashboards/authgate.json"
ALERTS = "dashboards/alerts.yaml"
ALERTS_LINK = os.path.join(CHART, "files/alerts.yaml")
KUBE = os.environ["KUBE_VERSION"]
AUTHGATE = os.environ["AUTHGATE_BIN"]
NAMESPACE = "auth"
# Kinds that have no schema in kubernetes-validate (CRDs), allowed on purpose
# and checked by check_servicemonitor() and check_prometheusrule() instead.
ALLOWED_CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"),
                ("monitoring.coreos.com/v1", "PrometheusRule")}
# Used, on a copy of the chart, while files/alerts.yaml does not exist yet.
MINIMAL_ALERTS = """\
groups:
  - name: authgate-minimal
    rules:
      - alert: AuthgateDown
        expr: absent(up{job="authgate"} == 1)
        for: 5m
        labels: {severity: critical}
        annotations: {summary: "No authgate instance is up"}
"""
# The Istio extension provider of envoy/istio/meshconfig.yaml (an IstioOperator).
with open("envoy/istio/meshconfig.yaml") as f:
    ISTIO_PROVIDER = next(p["envoyExtAuthzGrpc"] for p in yaml.safe_load(f)["spec"]["meshConfig"]["extensionProviders"]
                          if p["name"] == "authgate")
ISTIO_SETTINGS = {"timeout": ISTIO_PROVIDER["timeout"], "failOpen": str(ISTIO_PROVIDER["failOpen"]).lower(),
                  "statusOnError": f'"{ISTIO_PROVIDER["statusOnError"]}"'}
ISTIO_LINES = ", ".join(f"{k}: {v}" for k, v in ISTIO_SETTINGS.items())


def istio_settings_in(text):
    """The text shows the provider with envoy/istio/'s timeout, failOpen, statusOnError."""
    return all(re.search(rf"^\s+{k}: {re.escape(v)}\s*$", text, re.M) for k, v in ISTIO_SETTINGS.items())


# Prometheus durations, as the Prometheus Operator's CRDs validate them.
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")

failures = []
case = ""
chart_dir = CHART   # the chart the cases render (a copy while alerts.yaml is missing)
alerts_file = ALERTS


@contextlib.contextmanager
def helm_stderr():
    """Helm's Go logger writes to file descriptor 2, notably an INFO line on
    every chart load about the dashboard and alerts symlinks: drop those, show
    the rest."""
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
        return helm.lint(chart_dir, values, strict=True, kube_version=f"v{KUBE}", namespace=NAMESPACE)


def render(values, release, chart=None):
    """(manifests, merged values) as `helm template RELEASE CHART -n NAMESPACE` makes them."""
    with helm_stderr(), helm.Chart.load(chart or chart_dir) as c:
        return (c.render(values, name=release, namespace=NAMESPACE, is_install=True),
                c.merge_values(values))


def chart_copy(tmp, alerts=None, dashboard=True):
    """A copy of the chart in tmp with the links resolved; files/alerts.yaml
    holds `alerts` (absent when None), dashboards/authgate.json is removed
    unless `dashboard`."""
    dst = os.path.join(tmp, "authgate")
    # Links kept, then replaced by a copy of their target (copytree's own
    # resolution tests relative targets against the working directory).
    shutil.copytree(CHART, dst, symlinks=True)
    for root, _, files in os.walk(dst):
        for name in files:
            copied = os.path.join(root, name)
            if os.path.islink(copied):
                target = os.path.realpath(os.path.join(CHART, os.path.relpath(copied, dst)))
                os.remove(copied)
                if os.path.isfile(target):
                    shutil.copyfile(target, copied)
    path = os.path.join(dst, "files", "alerts.yaml")
    if os.path.lexists(path):
        os.remove(path)
    if alerts is not None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(alerts)
    if not dashboard:
        os.remove(os.path.join(dst, "dashboards", "authgate.json"))
    return dst


def fail(msg):
    failures.append(f"{case}: {msg}" if case else msg)
    print(f"  FAIL {msg}")


def ok(msg):
    print(f"  ok   {msg}")


def check(cond, msg):
    ok(msg) if cond else fail(msg)
    return cond


def seconds(duration):
    units = {"y": 31536000, "w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|y|w|d|h|m|s)", duration))


DIGEST = "sha256:" + "0123456789abcdef" * 4
# Everything optional switched on, as `helm --set` would.
ALL_SET = ",".join([
    "global.imageRegistry=mirror.example.com",
    f"image.digest={DIGEST}",
    "metrics.serviceMonitor.enabled=true",
    "metrics.serviceMonitor.namespace=monitoring",
    "metrics.serviceMonitor.labels.release=prometheus",
    "metrics.serviceMonitor.interval=15s",
    "metrics.serviceMonitor.scrapeTimeout=5s",
    "metrics.serviceMonitor.scheme=https",
    "metrics.serviceMonitor.tlsConfig.caFile=/etc/prom-certs/root-cert.pem",
    "metrics.serviceMonitor.tlsConfig.certFile=/etc/prom-certs/cert-chain.pem",
    "metrics.serviceMonitor.tlsConfig.keyFile=/etc/prom-certs/key.pem",
    "metrics.serviceMonitor.tlsConfig.insecureSkipVerify=true",
    "prometheusRule.enabled=true",
    "prometheusRule.namespace=monitoring",
    "prometheusRule.labels.release=prometheus",
    "autoscaling.enabled=true",
    "autoscaling.targetMemoryUtilizationPercentage=80",
    "podDisruptionBudget.enabled=true",
    "networkPolicy.enabled=true",
    "networkPolicy.allowedNamespaces={istio-system,hasura}",
    "dashboards.enabled=true",
    "dashboards.namespace=monitoring",
    "dashboards.annotations.grafana_folder=Auth",
    "service.headless.enabled=true",
    "priorityClassName=system-cluster-critical",
    "podAnnotations.example\\.com/team=platform",
    "podLabels.example\\.com/tier=edge",
    "deploymentAnnotations.example\\.com/owner=platform",
    "strategy.rollingUpdate.maxSurge=2",
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
HARDENED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}}
ENVOY_GATEWAY = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "envoy-gateway-system"}},
                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": "envoy",
                                                 "app.kubernetes.io/component": "proxy"}}}
PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
              "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
ADDITIONAL_RULES = [
    {"alert": "AuthgateDenyRatioHigh",
     "expr": 'sum(rate(authgate_check_requests_total{decision="deny"}[5m])) '
             '/ sum(rate(authgate_check_requests_total[5m])) > 0.5',
     "for": "10m", "labels": {"severity": "warning"},
     "annotations": {"summary": "More than half of the decisions are denials on {{ $labels.namespace }}"}},
]
EXTRA_STRING_OBJECT = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-extra-string
  namespace: {{ .Release.Namespace }}
data:
  chart: {{ .Chart.Name }}
"""


def all_values(defaults):
    values = helm.parse_set_string(ALL_SET)
    values["topologySpreadConstraints"] = [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
         "whenUnsatisfiable": "ScheduleAnyway"}]
    values["networkPolicy"]["from"] = [ENVOY_GATEWAY]
    values["networkPolicy"]["httpFrom"] = [PROMETHEUS]
    values["metrics"]["serviceMonitor"]["relabelings"] = [
        {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}]
    values["metrics"]["serviceMonitor"]["metricRelabelings"] = [
        {"sourceLabels": ["__name__"], "regex": "go_.*", "action": "drop"}]
    values["prometheusRule"]["additionalRules"] = ADDITIONAL_RULES
    values["extraEnv"] = [{"name": "TZ", "value": "UTC"}]
    values["extraVolumes"] = [{"name": "ca", "emptyDir": {}}]
    values["initContainers"] = [
        {"name": "wait-for-postgres", "image": "docker.io/library/postgres:16-alpine",
         "command": ["sh", "-c", "until pg_isready -h postgres.db; do sleep 2; done"],
         "securityContext": HARDENED}]
    values["extraContainers"] = [
        {"name": "ca-sync", "image": "docker.io/library/busybox:1.36",
         "command": ["sh", "-c", "while true; do sleep 3600; done"],
         "volumeMounts": [{"name": "ca", "mountPath": "/ca"}],
         "securityContext": HARDENED}]
    values["extraObjects"] = [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": '{{ include "authgate.fullname" . }}-extra',
                      "namespace": "{{ .Release.Namespace }}"},
         "data": {"release": "{{ .Release.Name }}"}},
        EXTRA_STRING_OBJECT,
    ]
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


def expected_image(merged, chart_meta):
    image = merged["image"]
    registry = (merged.get("global") or {}).get("imageRegistry") or image.get("registry") or ""
    repo = f"{registry.rstrip('/')}/{image['repository']}" if registry else image["repository"]
    if image.get("digest"):
        return f"{repo}@{image['digest']}"
    return f"{repo}:{image.get('tag') or chart_meta['appVersion']}"


def check_servicemonitor(sm, pod_labels, values):
    spec = sm.get("spec", {})
    check(set(spec) == {"selector", "namespaceSelector", "endpoints"},
          "ServiceMonitor spec: selector, namespaceSelector, endpoints")
    eps = spec.get("endpoints") or []
    check(len(eps) == 1 and eps[0].get("port") == "http" and eps[0].get("path") == "/metrics",
          "ServiceMonitor scrapes port http, path /metrics")
    ep = eps[0] if eps else {}
    known = {"port", "path", "scheme", "interval", "scrapeTimeout", "tlsConfig", "relabelings", "metricRelabelings"}
    check(set(ep) <= known, f"ServiceMonitor endpoint fields are Endpoint fields: {', '.join(sorted(ep))}")
    want = {"scheme": values["scheme"] or "http"}
    for key in ("interval", "scrapeTimeout", "tlsConfig", "relabelings", "metricRelabelings"):
        if values.get(key):
            want[key] = values[key]
    check(all(ep.get(k) == v for k, v in want.items()) and not (set(ep) - {"port", "path"} - set(want)),
          f"ServiceMonitor endpoint carries the values: {', '.join(sorted(want))}")
    for key in ("interval", "scrapeTimeout"):
        if key in ep:
            check(isinstance(ep[key], str) and DURATION.match(ep[key]), f"ServiceMonitor {key} {ep[key]!r} is a Prometheus duration")
    if "interval" in ep and "scrapeTimeout" in ep:
        check(seconds(ep["scrapeTimeout"]) <= seconds(ep["interval"]), "ServiceMonitor scrapeTimeout <= interval")
    check(ep.get("scheme") in ("http", "https"), f"ServiceMonitor scheme {ep.get('scheme')}")
    for key in ("relabelings", "metricRelabelings"):
        check(all(isinstance(r, dict) for r in ep.get(key, [])), f"ServiceMonitor {key} are RelabelConfig objects")
    check(all(sm["metadata"]["labels"].get(k) == v for k, v in (values.get("labels") or {}).items()),
          "ServiceMonitor carries metrics.serviceMonitor.labels")
    sel = spec.get("selector", {}).get("matchLabels", {})
    check(all(pod_labels.get(k) == v for k, v in sel.items() if k != "app.kubernetes.io/component")
          and sel.get("app.kubernetes.io/component") == "server",
          "ServiceMonitor selects the main Service only (not the headless one)")
    check(spec.get("namespaceSelector", {}).get("matchNames") == [NAMESPACE],
          "ServiceMonitor looks in the release namespace")


def check_prometheusrule(pr, values, family_names):
    spec = pr.get("spec", {})
    check(set(spec) == {"groups"}, "PrometheusRule spec holds groups only")
    groups = spec.get("groups")
    if not check(isinstance(groups, list) and len(groups) > 0, "PrometheusRule groups: a non-empty list"):
        return
    names = [g.get("name") for g in groups]
    check(all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names),
          f"PrometheusRule groups named, names unique: {', '.join(map(str, names))}")
    n_rules = 0
    for g in groups:
        rules = g.get("rules")
        check(set(g) <= {"name", "interval", "rules", "limit", "partial_response_strategy"}
              and isinstance(rules, list) and len(rules) > 0,
              f"group {g.get('name')}: known keys, non-empty rules")
        for r in rules or []:
            n_rules += 1
            what = r.get("alert") or r.get("record")
            if not (isinstance(r.get("alert"), str) and r["alert"]) and not (isinstance(r.get("record"), str) and r["record"]):
                fail(f"group {g.get('name')}: a rule without alert (or record): {r}")
            if not (isinstance(r.get("expr"), (str, int, float)) and str(r.get("expr")).strip()):
                fail(f"group {g.get('name')}: rule {what} without expr")
            if set(r) - {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}:
                fail(f"group {g.get('name')}: rule {what} has unknown keys {sorted(set(r) - {'alert', 'record', 'expr', 'for', 'keep_firing_for', 'labels', 'annotations'})}")
            for key in ("for", "keep_firing_for"):
                if key in r and not (isinstance(r[key], str) and DURATION.match(r[key])):
                    fail(f"group {g.get('name')}: rule {what}: {key} {r[key]!r} is not a Prometheus duration")
            for key in ("labels", "annotations"):
                if not all(isinstance(v, str) for v in (r.get(key) or {}).values()):
                    fail(f"group {g.get('name')}: rule {what}: {key} values must be strings")
            for metric in re.findall(r"\bauthgate_[a-z0-9_]+", str(r.get("expr", ""))):
                base = re.sub(r"_(bucket|count|sum)$", "", metric)
                if metric not in family_names and base not in family_names:
                    fail(f"group {g.get('name')}: rule {what} uses {metric}, not a metric of docs/metrics.md")
    ok(f"PrometheusRule: {n_rules} rule(s), each with alert (or record) and expr")
    with open(os.path.join(chart_dir, "files", "alerts.yaml")) as f:
        file_groups = yaml.safe_load(f)["groups"]
    extra = values.get("additionalRules") or []
    rendered_file_groups = groups[:-1] if extra else groups
    check(rendered_file_groups == file_groups, f"PrometheusRule groups equal {alerts_file}'s ({len(file_groups)} group(s))")
    if extra:
        check(groups[-1] == {"name": "authgate-additional", "rules": extra},
              "prometheusRule.additionalRules rendered verbatim as group authgate-additional, last")
    check(all(pr["metadata"]["labels"].get(k) == v for k, v in (values.get("labels") or {}).items()),
          "PrometheusRule carries prometheusRule.labels")


def check_networkpolicy(np, values):
    spec = np["spec"]
    rules = spec.get("ingress")
    check(spec.get("policyTypes") == ["Ingress"], "NetworkPolicy restricts ingress")
    check(isinstance(rules, list) and all(r.get("from") for r in rules),
          "NetworkPolicy: every ingress rule names its sources (none admits any source)")
    both = ([{"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": values["allowedNamespaces"]}]}}]
        if values["allowedNamespaces"] else []) + (values["from"] or [])
    want = []
    if both:
        want.append({"from": both, "ports": [{"port": "grpc", "protocol": "TCP"}, {"port": "http", "protocol": "TCP"}]})
    if values["httpFrom"]:
        want.append({"from": values["httpFrom"], "ports": [{"port": "http", "protocol": "TCP"}]})
    if want:
        check(rules == want, f"NetworkPolicy admits ports grpc and http from {len(both)} peer(s), "
              f"port http only from {len(values['httpFrom'] or [])} peer(s)")
    else:
        check(rules == [], "NetworkPolicy without any source admits no ingress at all")


def run_case(label, values, release, expect_kinds, set_line="", family_names=frozenset(), chart_meta=None):
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
    extra_objs = [o for p, o in objs if p.endswith("extra-objects.yaml")]
    if merged["extraObjects"]:
        check(len(extra_objs) == len(merged["extraObjects"]) and not any("{{" in yaml.safe_dump(o) for o in extra_objs),
              f"{len(extra_objs)} extraObjects rendered through tpl (no template left)")
    # The Istio provider settings in the notes are those of envoy/istio/.
    check(istio_settings_in(notes or ""), f"NOTES.txt Istio provider as envoy/istio/meshconfig.yaml: {ISTIO_LINES}")
    by_kind = {}
    for _, o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
        ns = o["metadata"].get("namespace")
        expected_ns = NAMESPACE
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboards"):
            expected_ns = merged["dashboards"]["namespace"] or NAMESPACE
        elif o["kind"] == "ServiceMonitor":
            expected_ns = merged["metrics"]["serviceMonitor"]["namespace"] or NAMESPACE
        elif o["kind"] == "PrometheusRule":
            expected_ns = merged["prometheusRule"]["namespace"] or NAMESPACE
        if ns != expected_ns:
            fail(f"{o['kind']}/{o['metadata']['name']} namespace {ns!r}, expected {expected_ns!r}")

    dep = by_kind["Deployment"][0]
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    check(all(pod_labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items()),
          "Deployment selector matches its pod labels")
    check(all(pod_labels.get(k) == v for k, v in merged["podLabels"].items())
          and all(pod["metadata"]["annotations"].get(k) == v for k, v in merged["podAnnotations"].items()),
          "podLabels and podAnnotations on the pods")
    check(dep["metadata"].get("annotations", {}) == merged["deploymentAnnotations"]
          and not set(merged["deploymentAnnotations"]) & set(pod["metadata"].get("annotations", {})),
          "deploymentAnnotations on the Deployment only")
    strategy = dep["spec"].get("strategy", {})
    if merged["strategy"].get("type") == "Recreate":
        check(strategy == {"type": "Recreate"}, "strategy Recreate (rollingUpdate dropped)")
    else:
        check(strategy == merged["strategy"], f"strategy {strategy}")
    containers = pod["spec"]["containers"]
    c = containers[0]
    check(c["name"] == "authgate" and [x["name"] for x in containers[1:]] == [x["name"] for x in merged["extraContainers"]]
          and [x["name"] for x in pod["spec"].get("initContainers", [])] == [x["name"] for x in merged["initContainers"]],
          f"containers {[x['name'] for x in containers]}, init containers {[x['name'] for x in pod['spec'].get('initContainers', [])]}")
    image = expected_image(merged, chart_meta)
    check(c["image"] == image, f"image {c['image']}")
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
    for x in containers[1:] + pod["spec"].get("initContainers", []):
        for m in x.get("volumeMounts", []):
            if m["name"] not in vols:
                fail(f"container {x['name']} mounts unknown volume {m['name']}")
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
        check_servicemonitor(sm, pod_labels, merged["metrics"]["serviceMonitor"])
    for pr in by_kind.get("PrometheusRule", []):
        check_prometheusrule(pr, merged["prometheusRule"], family_names)
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        check(hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"] and "replicas" not in dep["spec"],
              "HPA targets the Deployment, which leaves replicas to it")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        check(all(pod_labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items()),
              "PDB selects the pods")
        replicas = merged["autoscaling"]["minReplicas"] if merged["autoscaling"]["enabled"] else merged["replicaCount"]
        budget = {k: v for k, v in pdb["spec"].items() if k in ("minAvailable", "maxUnavailable")}
        check(len(budget) == 1 and (budget.get("maxUnavailable", 1) not in (0, "0%"))
              and (not isinstance(budget.get("minAvailable"), int) or budget["minAvailable"] < replicas),
              f"PDB {budget} lets an eviction through with {replicas} pod(s)")
    for np in by_kind.get("NetworkPolicy", []):
        check_networkpolicy(np, merged["networkPolicy"])
        if not np["spec"].get("ingress"):
            check("WARNING: the NetworkPolicy names no source" in (notes or ""),
                  "NOTES.txt warns that the NetworkPolicy admits nothing")
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


def schema_leaves(schema, prefix=""):
    """Dotted paths of the schema's leaf values (config is one value)."""
    out = []
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        if "properties" in sub and path != "config":
            out += schema_leaves(sub, path + ".")
        else:
            out.append(path)
    return out


def check_readme_table(defaults):
    global case
    case = "README"
    print(f"\n--- {case}")
    with open(os.path.join(CHART, "values.schema.json")) as f:
        leaves = schema_leaves(json.load(f))
    with open(os.path.join(CHART, "README.md")) as f:
        readme = f.read()
    check(istio_settings_in(readme), f"README.md Istio provider as envoy/istio/meshconfig.yaml: {ISTIO_LINES}")
    table = readme.split("\n## Values\n", 1)[-1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \|", table, re.M)

    def has_default(path):
        node = defaults
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    check(not [p for p in leaves if not has_default(p)],
          f"values.yaml sets every value of values.schema.json ({len(leaves)}): "
          f"missing {[p for p in leaves if not has_default(p)]}")
    check(sorted(rows) == sorted(leaves),
          f"README.md lists every value once: missing {sorted(set(leaves) - set(rows))}, "
          f"unknown {sorted(set(rows) - set(leaves))}, repeated {sorted({r for r in rows if rows.count(r) > 1})}")


def refuse(what, values, needle, chart=None):
    try:
        render(values, "authgate", chart)
        fail(f"helm template accepted {what}")
    except helm.HelmError as e:
        last = str(e).strip().splitlines()[-1].strip()
        check(needle in str(e), f"helm template refuses {what}: {last}")


def main():
    global chart_dir, alerts_file, case
    print(f"helm-python-sdk {helm.__version__}: Helm SDK {helm.helm_sdk_version()} (libhelm_c {helm.helm_c_version()})")
    link = os.path.join(CHART, DASHBOARD)
    check(os.path.isfile(DASHBOARD), f"{DASHBOARD} exists")
    check(os.path.islink(link) and os.path.realpath(link) == os.path.realpath(DASHBOARD),
          f"{link} is a symlink to {DASHBOARD} (Helm reads the linked file)")
    if failures:
        return
    with open("docs/metrics.md") as f:
        family_names = frozenset(re.findall(r"\bauthgate_[a-z0-9_]+", f.read()))

    tmp = tempfile.mkdtemp(prefix="check-helm-")
    try:
        if check(os.path.isfile(ALERTS) and os.path.islink(ALERTS_LINK)
                 and os.path.realpath(ALERTS_LINK) == os.path.realpath(ALERTS),
                 f"{ALERTS_LINK} is a symlink to {ALERTS} (Helm reads the linked file)"):
            with open(ALERTS) as f:
                rules = yaml.safe_load(f)
            check(isinstance(rules, dict) and isinstance(rules.get("groups"), list) and rules["groups"],
                  f"{ALERTS} is a Prometheus rule file with a non-empty top-level groups list")
        else:
            chart_dir = chart_copy(tmp, MINIMAL_ALERTS)
            alerts_file = "a minimal rule file"
            print(f"  note {ALERTS_LINK} missing: the cases below render a copy of the chart with {alerts_file}")

        with helm_stderr(), helm.Chart.load(chart_dir) as chart:
            defaults = chart.values
            meta = chart.metadata
        check(meta.get("apiVersion") == "v2" and meta.get("appVersion") == "0.1.0",
              f"Chart.yaml apiVersion v2, appVersion {meta.get('appVersion')}, version {meta.get('version')}")
        check(meta.get("kubeVersion") == ">=1.30.0-0",
              f"Chart.yaml kubeVersion {meta.get('kubeVersion')!r} (the preStop sleep action needs 1.30)")

        base = ["ConfigMap/authgate", "Deployment/authgate", "Secret/authgate", "Service/authgate",
                "ServiceAccount/authgate"]
        run_case("defaults", {}, "authgate", base, chart_meta=meta)

        full = "edge-authgate"
        run_case("everything enabled", all_values(defaults), "edge",
                 [f"ConfigMap/{full}", f"ConfigMap/{full}-dashboards", f"Deployment/{full}",
                  f"HorizontalPodAutoscaler/{full}", f"NetworkPolicy/{full}",
                  f"PodDisruptionBudget/{full}", f"PrometheusRule/{full}", f"Secret/{full}",
                  f"Service/{full}", f"Service/{full}-headless", f"ServiceAccount/{full}",
                  f"ServiceMonitor/{full}", f"ConfigMap/{full}-extra", "ConfigMap/edge-extra-string"],
                 set_line=f" --set {ALL_SET} (+ config with apiKey and elevation, NetworkPolicy peers, "
                          "relabelings, additionalRules, init/extra containers, extraObjects)",
                 family_names=family_names, chart_meta=meta)

        third = ("existingSecret=authgate-env,serviceAccount.create=false,replicaCount=1,preStopSleepSeconds=0,"
                 "strategy.type=Recreate,image.registry=registry.example.com/,image.tag=1.2.3,"
                 "networkPolicy.enabled=true,podDisruptionBudget.enabled=true,podDisruptionBudget.maxUnavailable=1")
        run_case("existing Secret, one replica, no NetworkPolicy source", helm.parse_set_string(third),
                 "authgate", ["ConfigMap/authgate", "Deployment/authgate", "NetworkPolicy/authgate",
                              "PodDisruptionBudget/authgate", "Service/authgate"],
                 set_line=f" --set {third}", chart_meta=meta)

        check_readme_table(defaults)

        case = "values that must be refused"
        print(f"\n--- {case}")
        bad = all_values(defaults)
        bad["config"]["definition"]["elevation"]["store"]["url"] = "sqlite:///data/authgate.db"
        refused = [
            ("a SQLite elevation store outside the writable volume", bad, "/var/lib/authgate"),
            ("a misspelt key (values.schema.json)", {"replicacount": 3}, "replicacount"),
            ("a wrong type (values.schema.json)", helm.parse_set_string("autoscaling.enabled=yes"), "boolean"),
            ("a PDB minAvailable 1 with replicaCount 1",
             helm.parse_set_string("podDisruptionBudget.enabled=true,replicaCount=1"), "keeps every pod"),
            ("a PDB minAvailable 1 with autoscaling.minReplicas 1",
             helm.parse_set_string("podDisruptionBudget.enabled=true,autoscaling.enabled=true,autoscaling.minReplicas=1"),
             "keeps every pod"),
            ("a PDB minAvailable 100%",
             helm.parse_set_string("podDisruptionBudget.enabled=true,podDisruptionBudget.minAvailable=100%"),
             "keeps every pod"),
            ("a PDB minAvailable 50% with replicaCount 1 (rounded up: 1)",
             helm.parse_set_string("podDisruptionBudget.enabled=true,podDisruptionBudget.minAvailable=50%,replicaCount=1"),
             "keeps every pod"),
            ("a PDB maxUnavailable 0",
             helm.parse_set_string("podDisruptionBudget.enabled=true,podDisruptionBudget.maxUnavailable=0"),
             "lets no pod be evicted"),
            ("a PDB maxUnavailable 0%",
             helm.parse_set_string("podDisruptionBudget.enabled=true,podDisruptionBudget.maxUnavailable=0%"),
             "lets no pod be evicted"),
            ("a rolling update with maxSurge and maxUnavailable 0",
             helm.parse_set_string("strategy.rollingUpdate.maxSurge=0"), "cannot both be 0"),
            ("an empty NetworkPolicy peer ({})", {"networkPolicy": {"enabled": True, "from": [{}]}},
             "networkPolicy/from/0"),
            ("an extra container named authgate",
             {"extraContainers": [{"name": "authgate", "image": "busybox"}]}, "extraContainers/0/name"),
            ("an image digest that is not one", helm.parse_set_string("image.digest=latest"), "image/digest"),
        ]
        for what, values, needle in refused:
            refuse(what, values, needle)

        missing = chart_copy(os.path.join(tmp, "missing"))
        refuse("prometheusRule.enabled without files/alerts.yaml",
               helm.parse_set_string("prometheusRule.enabled=true"), "files/alerts.yaml is missing", missing)
        empty = chart_copy(os.path.join(tmp, "empty"), "groups: []\n")
        refuse("prometheusRule.enabled with a rule file without groups",
               helm.parse_set_string("prometheusRule.enabled=true"), "non-empty top-level `groups:`", empty)
        nodash = chart_copy(os.path.join(tmp, "nodash"), MINIMAL_ALERTS, dashboard=False)
        refuse("dashboards.enabled without dashboards/authgate.json",
               helm.parse_set_string("dashboards.enabled=true"), "dashboards/authgate.json is missing", nodash)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


main()
if failures:
    print(f"\nhelm chart check FAILED: {len(failures)} problem(s):")
    for f in failures:
        print(f"  - {f}")
    sys.exit(1)
print("\nhelm chart check passed")
PY
