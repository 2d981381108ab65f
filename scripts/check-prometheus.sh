#!/usr/bin/env bash
# Checks the alert rules and the Grafana dashboard against a real Prometheus
# scraping a running authgate (a CI step):
#   1. promtool check rules dashboards/alerts.yaml, and its unit tests
#      (promtool test rules dashboards/alerts.test.yaml);
#   2. authgate serve (examples/quickstart/auth.yaml) and Prometheus (Debian's)
#      on free ports, scraping it every second with the alert rules loaded;
#   3. mixed traffic for TRAFFIC_SECONDS: a valid JWT, a broken one, no
#      credential, a good and a wrong API key, on /check and /auth/hasura;
#   4. every expression of dashboards/authgate.json, with the dashboard's
#      variables replaced by concrete values ($__rate_interval = 5s), through
#      /api/v1/query: none may fail; while traffic runs, each one over metric
#      families that have live samples (counters above 0, gauges present,
#      `up`) must return data; the others are listed with the reason;
#   5. traffic stops; once the 5 s rate windows are empty, no expression may
#      return NaN, neither now nor at any second of the run (range queries);
#   6. every rule is healthy in /api/v1/rules, and no alert is pending or
#      firing against this healthy instance;
#   7. real failures raise their alerts (pending, as `for:` has not passed):
#      a rejected configuration edit AuthgateConfigReloadFailing, a stopped
#      authgate AuthgateDown.
# The static NaN guards (scripts/check-dashboard.py) are checked first.
#
# Panels over the process_* families and authgate_config_last_reload_successful,
# and the AuthgateConfigReloadFailing check, need a build that exports them;
# with an older binary the panels are listed as "no data" and that check is
# skipped, rather than failing.
#
# Environment: AUTHGATE_BIN (default target/debug/authgate), PROMETHEUS_BIN
# and PROMTOOL_BIN (default: prometheus and promtool on PATH, Debian's
# `prometheus` package), TRAFFIC_SECONDS (default 12), DASHBOARD (default
# dashboards/authgate.json).
# Usage: bash scripts/check-prometheus.sh
set -euo pipefail
cd "$(dirname "$0")/.."

AUTHGATE_BIN=${AUTHGATE_BIN:-target/debug/authgate}
PROMETHEUS_BIN=${PROMETHEUS_BIN:-prometheus}
PROMTOOL_BIN=${PROMTOOL_BIN:-promtool}
TRAFFIC_SECONDS=${TRAFFIC_SECONDS:-12}
RATE_INTERVAL=5s
DASHBOARD=${DASHBOARD:-dashboards/authgate.json}
RULES=dashboards/alerts.yaml
RULE_TESTS=dashboards/alerts.test.yaml
# The chart's default container memory limit (256Mi), the dashboard's default.
MEMORY_LIMIT_BYTES=268435456

step() { printf '\n==> %s\n' "$*"; }
die() { echo "check-prometheus: $*" >&2; exit 1; }

for tool in "$PROMTOOL_BIN" "$PROMETHEUS_BIN" curl python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (Debian: apt-get install prometheus curl python3)"
done
[ -x "$AUTHGATE_BIN" ] || die "$AUTHGATE_BIN not found: build authgate first (cargo build) or set AUTHGATE_BIN"

tmp=$(mktemp -d)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
export SUMMARY_FILE="$tmp/summary"

step "promtool check rules $RULES"
"$PROMTOOL_BIN" check rules "$RULES"
step "promtool test rules $RULE_TESTS"
"$PROMTOOL_BIN" test rules "$RULE_TESTS"
n_tests=$(grep -c '^  - name:' "$RULE_TESTS" || true)
echo "promtool: $RULES valid, $n_tests unit tests of $RULE_TESTS pass" >> "$SUMMARY_FILE"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() {  # URL, what, pid: up to 20 s for a 200
  local i
  for i in $(seq 100); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ]; then return 0; fi
    kill -0 "$3" 2>/dev/null || break
    sleep 0.2
  done
  return 1
}

http_port=$(free_port)
prom_port=$(free_port)
target="127.0.0.1:$http_port"
prom="http://127.0.0.1:$prom_port"

# A copy of the quickstart's configuration, so that a rejected edit can be tried.
cp examples/quickstart/auth.yaml "$tmp/auth.yaml"
step "authgate serve on $target ($AUTHGATE_BIN, examples/quickstart/auth.yaml)"
"$AUTHGATE_BIN" serve --config "$tmp/auth.yaml" --http-addr "$target" \
  --grpc-addr 127.0.0.1:0 > "$tmp/authgate.log" 2>&1 &
ag_pid=$!
pids+=("$ag_pid")
wait_http "http://$target/healthz" authgate "$ag_pid" || { cat "$tmp/authgate.log" >&2; die "authgate did not become healthy"; }
new_metrics=0
if curl -s "http://$target/metrics" | grep -q '^authgate_config_last_reload_successful '; then
  new_metrics=1
  echo "this build exports the process_* families and authgate_config_last_reload_successful"
else
  echo "this build predates authgate_config_last_reload_successful: panels over it may have no data"
fi

step "prometheus on $prom, scraping $target every 1 s, rules from $RULES"
cat > "$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/$RULES
scrape_configs:
  - job_name: authgate
    static_configs:
      - targets: ["$target"]
EOF
"$PROMETHEUS_BIN" --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn > "$tmp/prometheus.log" 2>&1 &
prom_pid=$!
pids+=("$prom_pid")
wait_http "$prom/-/ready" prometheus "$prom_pid" || { cat "$tmp/prometheus.log" >&2; die "prometheus did not become ready"; }

token=$("$AUTHGATE_BIN" token --alg HS256 --key quickstart-secret-change-me-0123456789abcdef \
  --claims '{"sub":"user-1","claims.jwt.hasura.io":{"x-hasura-allowed-roles":["user","editor"],"x-hasura-default-role":"user"}}')

step "traffic for ${TRAFFIC_SECONDS} s: valid and broken JWTs, no credential, good and wrong API keys (/check, /auth/hasura)"
traffic() {
  local path url args=() h
  for path in check auth/hasura; do
    url="http://$target/$path"
    for h in "Authorization: Bearer $token" "Authorization: Bearer broken" "X-Request: none" \
             "X-API-Key: quickstart-service-key" "X-API-Key: wrong"; do
      args+=(--next -s -o /dev/null -H "$h" "$url")
    done
  done
  while :; do
    curl "${args[@]:1}" || true
    sleep 0.05
  done
}
traffic_start=$(date +%s)
traffic &
traffic_pid=$!
pids+=("$traffic_pid")

# The evaluator: dashboard expressions through Prometheus' HTTP API.
cat > "$tmp/evaluate.py" <<'PY'
import importlib.util, json, os, re, sys, time, urllib.parse, urllib.request

phase, prom, dashboard, metrics_url, subst_json = sys.argv[1:6]
since_arg = sys.argv[6] if len(sys.argv) > 6 else ""
since = float(since_arg) if phase == "idle" else None
subst = json.loads(subst_json)
spec = importlib.util.spec_from_file_location("check_dashboard", "scripts/check-dashboard.py")
cd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cd)


def get(path, **params):
    url = prom + path + "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def expand(expr):
    for name, value in subst.items():
        expr = expr.replace("${%s}" % name, value).replace("$" + name, value)
    if "$" in expr:
        raise ValueError("unknown variable in " + expr)
    return expr


def live_families():
    """Families with a sample worth a panel: counters/histograms above 0, gauges present."""
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    types = cd.exported_families(text)
    live, sampled = {"up"}, set()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\S*\s+(\S+)", line).groups()
        family = name
        for suffix in ("_bucket", "_count", "_sum"):
            if name.endswith(suffix) and types.get(name[: -len(suffix)]) == "histogram":
                family = name[: -len(suffix)]
        sampled.update({family, name})
        if types.get(family) == "gauge" or float(value) > 0:
            live.update({family, name})
    return live, sampled, types


def metrics_of(expr):
    names = set(cd.METRIC_RE.findall(expr))
    if re.search(r"\bup\s*\{", expr):
        names.add("up")
    return names


dash = json.load(open(dashboard))
targets = []
for panel in cd.walk_panels(dash.get("panels")):
    for t in panel.get("targets") or []:
        where = "panel {} {!r} {}".format(panel.get("id"), panel.get("title"), t.get("refId"))
        targets.append((where, t["expr"]))
variables = [v for v in dash["templating"]["list"] if v.get("type") == "query"]

failures, notes, summary = [], [], []
if phase == "traffic":
    live, sampled, types = live_families()
    for v in variables:
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q.strip())
        if not m:
            failures.append("variable {}: cannot read {!r}".format(v["name"], q))
            continue
        res = get("/api/v1/label/{}/values".format(m.group(2)), **{"match[]": expand(m.group(1))})
        if res.get("status") != "success" or not res.get("data"):
            failures.append("variable {}: {} returned {}".format(v["name"], q, res.get("error") or "no values"))
        else:
            print("  variable {}: {}".format(v["name"], ", ".join(res["data"])))
    with_data = 0
    for where, expr in targets:
        res = get("/api/v1/query", query=expand(expr))
        if res.get("status") != "success":
            failures.append("{}: {}".format(where, res.get("error")))
            continue
        if res["data"]["result"]:
            with_data += 1
            continue
        idle = sorted(n for n in metrics_of(expr) if n not in live)
        if not idle:
            failures.append("{}: no data under traffic: {}".format(where, expr))
        else:
            why = ", ".join(n + (" (all zero)" if n in sampled else
                                 " (announced, no samples)" if cd.is_exported(n, types) else
                                 " (not exported by this build)") for n in idle)
            notes.append("{}: no data; {}".format(where, why))
    print("  {} of {} expressions returned data under traffic".format(with_data, len(targets)))
    summary.append("dashboard: {} variables resolve; {} of {} expressions return data under traffic, "
                   "the {} others read families without live samples (listed above)".format(
                       len(variables), with_data, len(targets), len(notes)))
elif phase == "idle":
    now = time.time()
    for where, expr in targets:
        q = expand(expr)
        inst = get("/api/v1/query", query=q, time=now)
        rng = get("/api/v1/query_range", query=q, start=since, end=now, step=1)
        for kind, res in (("now", inst), ("over the run", rng)):
            if res.get("status") != "success":
                failures.append("{} ({}): {}".format(where, kind, res.get("error")))
                continue
            data, samples = res["data"], []
            if data["resultType"] in ("scalar", "string"):
                samples.append(data["result"][1])
            else:
                for s in data["result"]:
                    if "value" in s:
                        samples.append(s["value"][1])
                    samples.extend(v[1] for v in s.get("values", []))
            if "NaN" in samples:
                failures.append("{} ({}): NaN: {}".format(where, kind, expr))
            if any(v in ("+Inf", "-Inf") for v in samples):
                notes.append("{} ({}): infinite values".format(where, kind))
    print("  {} expressions checked now and at every second since the traffic started: {}".format(
        len(targets), "no NaN" if not failures else "{} problem(s)".format(len(failures))))
    summary.append("dashboard: no NaN in {} expressions, at any second from the traffic's start to rest".format(len(targets)))
elif phase == "rules":
    res = get("/api/v1/rules")
    rules = [r for g in res["data"]["groups"] for r in g["rules"]]
    for r in rules:
        if r.get("health") != "ok" or r.get("lastError"):
            failures.append("rule {}: health {} {}".format(r.get("name"), r.get("health"), r.get("lastError", "")))
    print("  {} rules loaded, {} healthy".format(len(rules), sum(r.get("health") == "ok" for r in rules)))
    summary.append("prometheus: {} rules healthy, no alert against a healthy instance".format(len(rules)))
    for a in get("/api/v1/alerts")["data"]["alerts"]:
        name = a["labels"].get("alertname")
        line = "alert {} is {} against a healthy instance: {}".format(name, a["state"], a["labels"])
        # Latency depends on this machine's load, not on the rules.
        (notes if name == "AuthgateSlowDecisions" else failures).append(line)
elif phase == "alert":
    # Rules run every second: the alert must turn pending within 20 s.
    name, deadline, state = since_arg, time.time() + 20, None
    while time.time() < deadline and not state:
        for a in get("/api/v1/alerts")["data"]["alerts"]:
            if a["labels"].get("alertname") == name:
                state = "{} {}".format(a["state"], a["labels"])
        time.sleep(0.5)
    if state:
        print("  {}: {}".format(name, state))
        summary.append("alert {} raised by a real failure".format(name))
    else:
        failures.append("{} did not turn pending within 20 s".format(name))
for n in notes:
    print("  note: " + n)
for f in failures:
    print("  FAIL " + f)
if not failures:
    with open(os.environ["SUMMARY_FILE"], "a") as out:
        out.writelines(line + "\n" for line in summary)
sys.exit(1 if failures else 0)
PY

subst=$(python3 -c 'import json,sys; print(json.dumps({"job": "authgate", "instance": sys.argv[1], "__rate_interval": sys.argv[2], "__interval": "1s", "memory_limit_bytes": sys.argv[3]}))' \
  "$target" "$RATE_INTERVAL" "$MEMORY_LIMIT_BYTES")
evaluate() { python3 "$tmp/evaluate.py" "$1" "$prom" "$DASHBOARD" "http://$target/metrics" "$subst" "${2:-}"; }
ok=0

step "static NaN guards of the dashboard's expressions"
python3 - "$DASHBOARD" <<'PY' || ok=1
import importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("check_dashboard", "scripts/check-dashboard.py")
cd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cd)
problems = [p for p in cd.check_dashboard(json.load(open(sys.argv[1])))[0]]
for p in problems:
    print("  FAIL " + p)
print("  dashboard structure and NaN guards: {}".format("problems above" if problems else "OK"))
if not problems:
    with open(os.environ["SUMMARY_FILE"], "a") as out:
        out.write("dashboard: structure and static NaN guards OK (scripts/check-dashboard.py)\n")
sys.exit(1 if problems else 0)
PY

# Rate windows full of traffic (5 s) plus a few scrapes.
sleep 8
step "every dashboard expression under traffic"
evaluate traffic || ok=1

elapsed=$(( $(date +%s) - traffic_start ))
[ "$elapsed" -ge "$TRAFFIC_SECONDS" ] || sleep $(( TRAFFIC_SECONDS - elapsed ))
kill "$traffic_pid" 2>/dev/null || true
wait "$traffic_pid" 2>/dev/null || true
sent=$(curl -s "http://$target/metrics" | awk '/^authgate_check_requests_total/ {n += $2} END {print n + 0}')
echo "traffic stopped: $sent decisions in total"

step "waiting until the ${RATE_INTERVAL} rate windows hold no traffic"
idle=1
for _ in $(seq 60); do
  got=$(curl -s "$prom/api/v1/query" --data-urlencode \
    "query=sum(rate(authgate_check_requests_total{job=\"authgate\"}[$RATE_INTERVAL])) == 0 and sum(rate(authgate_check_requests_total{job=\"authgate\"}[1m])) > 0" |
    python3 -c 'import json,sys; print(len(json.load(sys.stdin)["data"]["result"]))')
  if [ "$got" = 1 ]; then idle=0; break; fi
  sleep 0.5
done
[ "$idle" -eq 0 ] || die "the decision rate did not fall to 0 within 30 s"
sleep 2   # two more scrapes and rule evaluations at rest

step "no NaN once traffic stopped"
evaluate idle "$((traffic_start - 2))" || ok=1

step "alert rules evaluated by prometheus"
evaluate rules || ok=1

step "alerts on real failures"
if [ "$new_metrics" -eq 1 ]; then
  echo "rejected edit of $tmp/auth.yaml (the file watcher reloads it)"
  printf 'definition: [unclosed\n' >> "$tmp/auth.yaml"
  evaluate alert AuthgateConfigReloadFailing || ok=1
else
  echo "  skipped AuthgateConfigReloadFailing: this build has no authgate_config_last_reload_successful"
fi
echo "authgate stopped"
kill "$ag_pid" 2>/dev/null || true
wait "$ag_pid" 2>/dev/null || true
evaluate alert AuthgateDown || ok=1

echo
echo "Summary:"
sed 's/^/  /' "$SUMMARY_FILE"
if [ "$ok" -eq 0 ]; then
  echo "check-prometheus: OK ($sent decisions; $(( $(date +%s) - traffic_start )) s since the traffic started)"
else
  echo "authgate log (tail):"; tail -n 20 "$tmp/authgate.log"
  echo "prometheus log (tail):"; tail -n 20 "$tmp/prometheus.log"
  die "FAILED (details above)"
fi
