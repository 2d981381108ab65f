#!/usr/bin/env bash
# authgate vs. a no-op ext_authz baseline on the same tonic stack, driven by
# the same closed-loop HTTP/2 gRPC load generator, in one run. Prints, per
# scenario and concurrency, requests/s, p50/p99/p99.9 latency, server CPU per
# request and the ratio to the baseline's requests/s; then memory (RSS idle
# and with BENCH_DISTINCT tokens cached); then, unless BENCH_ENVOY=0, the
# paired runs through a real Envoy (bench/envoy.sh).
#
#   bash bench/run.sh            # release build, 10 s per point
#   bash bench/run.sh --smoke    # debug build, 1 s per point (CI: keeps it from rotting)
#
# Env: BENCH_SECONDS (10), BENCH_ROUNDS (paired rounds, 3), BENCH_DISTINCT
#      (distinct tokens for c/d, 100000), BENCH_ENVOY (1), BENCH_SCENARIOS
#      (space-separated subset of a-g, default all).
# Servers are pinned to core 0 and the load generator to core 1 (taskset).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
secs=${BENCH_SECONDS:-10}
rounds=${BENCH_ROUNDS:-3}
distinct=${BENCH_DISTINCT:-100000}
smoke=
if [ "${1:-}" = "--smoke" ]; then
  profile=debug
  secs=1
  rounds=1
  distinct=300
  smoke=1
fi
if [ "$profile" = release ]; then
  cargo build --release --quiet --workspace --bins --lib
else
  cargo build --quiet --workspace --bins --lib
fi
bin="target/$profile"
load="$bin/authgate-bench-load"
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# Pinning prefixes (a plain command, so `$!` is the server's own pid).
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  core0=(taskset -c 0); core1=(taskset -c 1)
else
  core0=(env); core1=(env)
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 never opened" >&2; return 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
metric() { # PORT PATTERN: sum of matching sample values
  python3 - "$1" "$2" <<'PY'
import re, sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if re.match(sys.argv[2], l))))
PY
}

# --- Credentials -------------------------------------------------------------
# Distinct tokens are minted in-process on every core and kept for a day in
# target/bench-cache (RS256 signing is ~1 ms a token).
secret=bench-secret-0123456789abcdef0123456789abcdef
printf '%s' "$secret" > "$tmp/secret"
printf '%s' "wrong-secret-0123456789abcdef0123456789" > "$tmp/wrong"
cache_dir="target/bench-cache"
mkdir -p "$cache_dir"
minted() { # NAME ALG KEY COUNT [KID] [GRANT_KEY]: prints the path of the file
  local f="$cache_dir/$1-$4.txt"
  if [ -z "$(find "$f" -mmin -1440 2>/dev/null)" ]; then
    "$load" mint "$2" "$3" "$4" "${5:--}" ${6:+"$6"} > "$f.part" && mv "$f.part" "$f"
  fi
  echo "$f"
}
"$load" mint HS256 "$tmp/secret" 1 > "$tmp/hs.txt"
"$load" mint HS256 "$tmp/wrong" 1 > "$tmp/bad.txt"
"$load" mint RS256 tests/fixtures/rsa.key 1 bench > "$tmp/jwks-token.txt"
"$load" mint HS256 "$tmp/secret" 1 - tests/fixtures/ec256.key > "$tmp/grant.txt"
rs_tokens=$(minted rs256 RS256 tests/fixtures/rsa.key "$distinct" bench)
es_tokens=$(minted es256 ES256 tests/fixtures/ec256.key "$distinct")

# A real JWKS endpoint for scenario b.
mkdir -p "$tmp/www"
"$load" jwks RS256 tests/fixtures/rsa.key bench > "$tmp/www/jwks.json"
jwks_port=$(free_port)
(cd "$tmp/www" && exec python3 -m http.server "$jwks_port" --bind 127.0.0.1) >/dev/null 2>&1 &
pids+=($!)
wait_port "$jwks_port"

# --- Configs -----------------------------------------------------------------
ns="claimsConfig: {namespace: {location: '\"claims.jwt.hasura.io\"'}}"
cat > "$tmp/hs.yaml" <<YAML
definition:
  modes:
    - mode: jwt
      key: {algorithm: HS256, key: {value: "$secret"}}
      $ns
YAML
# Scenario g: scenario a's config with policies the token satisfies, one
# selected by a route (every request) and one with claims and a role.
cat > "$tmp/policy.yaml" <<YAML
definition:
  modes:
    - id: users
      mode: jwt
      key: {algorithm: HS256, key: {value: "$secret"}}
      $ns
  policies:
    graphql: {modes: [users], roles: [user]}
    members: {claims: {'"claims.jwt.hasura.io"."x-hasura-default-role"': user, sub: [u0, u1]}}
  policyRoutes:
    - {pathPrefix: /v1/, policy: graphql}
    - {methods: [POST], path: /v1/graphql, policy: members}
YAML
# Scenario h: scenario g's policies, and an upstream token signed for every
# allow (kept with the token's cache entry, so repeats sign nothing).
upstream_key=$(awk '{printf "%s\\n", $0}' tests/fixtures/ec256.key)
cat "$tmp/policy.yaml" > "$tmp/upstream.yaml"
cat >> "$tmp/upstream.yaml" <<YAML
  upstreamToken:
    signingKey: {value: "$upstream_key"}
    issuer: http://authgate.bench
    audience: hasura
YAML
cat > "$tmp/jwks.yaml" <<YAML
definition:
  modes:
    - mode: jwt
      key: {algorithm: RS256, jwkFromUrl: {value: "http://127.0.0.1:$jwks_port/jwks.json"}}
      $ns
YAML
python3 - "$tmp" "$ns" "$secret" <<'PY'
import json, sys
tmp, ns, secret = sys.argv[1], sys.argv[2], sys.argv[3]
def fixed(name, alg, pem):
    key = json.dumps(open(f"tests/fixtures/{pem}").read())
    open(f"{tmp}/{name}.yaml", "w").write(f"""definition:
  modes:
    - mode: jwt
      key: {{algorithm: {alg}, key: {{value: {key}}}}}
      {ns}
""")
fixed("rs", "RS256", "rsa.pub.pem")
fixed("es", "ES256", "ec256.pub.pem")
grant_key = json.dumps(open("tests/fixtures/ec256.key").read())
open(f"{tmp}/elev.yaml", "w").write(f"""definition:
  modes:
    - mode: jwt
      key: {{algorithm: HS256, key: {{value: "{secret}"}}}}
      {ns}
  elevation:
    mode: required
    routes: [{{pathPrefix: /admin/}}]
    webauthn: {{rpId: localhost, rpName: bench, origins: ["http://localhost"]}}
    grant: {{signingKey: {{algorithm: ES256, key: {{value: {grant_key}}}}}}}
    store: {{url: "sqlite://{tmp}/elevation.db"}}
""")
PY

# --- Servers and points --------------------------------------------------------
start_noop() {
  local port; port=$(free_port)
  "${core0[@]}" "$bin/authgate-bench-noop" "127.0.0.1:$port" 2>/dev/null &
  pids+=($!); server_pid=$!; wait_port "$port"; server_url="http://127.0.0.1:$port"; http_port=
}
start_authgate() { # CONFIG
  local port; port=$(free_port); http_port=$(free_port)
  RUST_LOG=error "${core0[@]}" "$bin/authgate" serve --config "$1" --grpc-addr "127.0.0.1:$port" --http-addr "127.0.0.1:$http_port" 2>/dev/null &
  pids+=($!); server_pid=$!; wait_port "$port"; server_url="http://127.0.0.1:$port"
  for _ in $(seq 100); do   # ready: JWKS fetched
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$http_port/readyz', timeout=1)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "authgate never became ready ($1)" >&2; return 1
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; }

results="$tmp/results.jsonl"
run_point() { # NAME STREAMS EXPECTED REQUESTS [PATH] [ROUND]
  local before after out hits=0 misses=0
  if [ -n "$http_port" ]; then
    hits=$(metric "$http_port" 'authgate_token_cache_lookups_total\{result="hit"')
    misses=$(metric "$http_port" 'authgate_token_cache_lookups_total\{result="miss"')
  fi
  before=$(cpu_ticks "$server_pid")
  out=$("${core1[@]}" "$load" run "$server_url" "$2" "$secs" "$3" "$4" "${5:-/v1/graphql}")
  after=$(cpu_ticks "$server_pid")
  if [ -n "$http_port" ]; then
    hits=$(( $(metric "$http_port" 'authgate_token_cache_lookups_total\{result="hit"') - hits ))
    misses=$(( $(metric "$http_port" 'authgate_token_cache_lookups_total\{result="miss"') - misses ))
  fi
  python3 - "$1" "$2" "$before" "$after" "$out" "$hits" "$misses" "${6:-1}" >> "$results" <<'PY'
import json, os, sys
name, streams, before, after, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
hits, misses = int(sys.argv[6]), int(sys.argv[7])
tck = os.sysconf("SC_CLK_TCK")
out.update(scenario=name, streams=streams, round=int(sys.argv[8]),
           cpu_us_per_req=round((after - before) / tck * 1e6 / max(out["requests"], 1), 1),
           cache_miss_pct=(round(100 * misses / (hits + misses)) if hits + misses else None))
print(json.dumps(out))
PY
}

want() { [ -z "${BENCH_SCENARIOS:-}" ] || [[ " $BENCH_SCENARIOS " == *" $1 "* ]]; }

# Paired rounds: each round measures the baseline and every scenario back to
# back, in an order that alternates between rounds, so drift of this shared
# machine hits all of them alike; ratios are taken within a round, then the
# median over rounds is reported.
point() { # SCENARIO STREAMS ROUND
  case $1 in
    baseline) start_noop; run_point baseline "$2" 0 "$tmp/hs.txt" "" "$3";;
    a) start_authgate "$tmp/hs.yaml"; run_point a_hs256_cached "$2" 0 "$tmp/hs.txt" "" "$3";;
    e) start_authgate "$tmp/hs.yaml"; run_point e_denied_bad_signature "$2" 16 "$tmp/bad.txt" "" "$3";;
    b) start_authgate "$tmp/jwks.yaml"; run_point b_rs256_jwks_cached "$2" 0 "$tmp/jwks-token.txt" "" "$3";;
    # Distinct tokens: a fresh server per point, so every token is new to it.
    # BENCH_NO_REPEAT: the point ends early rather than send a token twice.
    c) start_authgate "$tmp/rs.yaml"; BENCH_NO_REPEAT=1 run_point c_rs256_distinct "$2" 0 "$rs_tokens" "" "$3";;
    d) start_authgate "$tmp/es.yaml"; BENCH_NO_REPEAT=1 run_point d_es256_distinct "$2" 0 "$es_tokens" "" "$3";;
    f) start_authgate "$tmp/elev.yaml"; run_point f_elevated_route_grant "$2" 0 "$tmp/grant.txt" /admin/users "$3";;
    g) start_authgate "$tmp/policy.yaml"; run_point g_hs256_cached_policies "$2" 0 "$tmp/hs.txt" "" "$3";;
    h) start_authgate "$tmp/upstream.yaml"; run_point h_policies_upstream_token "$2" 0 "$tmp/hs.txt" "" "$3";;
  esac
  stop_server
}
order=(baseline)
for s in a e b c d f g h; do if want "$s"; then order+=("$s"); fi; done
for streams in 1 64; do
  for round in $(seq "$rounds"); do
    if [ $((round % 2)) = 0 ]; then
      for ((i = ${#order[@]} - 1; i >= 0; i--)); do point "${order[$i]}" "$streams" "$round"; done
    else
      for s in "${order[@]}"; do point "$s" "$streams" "$round"; done
    fi
  done
done

python3 - "$results" "$rounds" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rounds = int(sys.argv[2])
base = {(r["streams"], r["round"]): r for r in rows if r["scenario"] == "baseline"}
med = statistics.median
print(f"median of {rounds} paired round(s); ratio = req/s over the baseline's of the same round, "
      f"cpu ratio = the baseline's server CPU per request over the scenario's")
print(f"{'scenario':26} {'streams':>7} {'req/s':>8} {'p50us':>7} {'p99us':>7} {'p999us':>7} {'cpu_us/req':>10} {'ratio':>6} {'cpu_r':>6} {'+p99us':>7} {'miss%':>5} {'wrong':>5} {'err':>4}")
bad = sum(r["wrong_decisions"] + r["errors"] for r in rows)
groups = {}
for r in rows:
    groups.setdefault((r["scenario"], r["streams"]), []).append(r)
for (name, streams), rs in groups.items():
    pairs = [(r, base.get((streams, r["round"]))) for r in rs]
    ratio = med([r["rps"] / b["rps"] if b and b["rps"] else 0 for r, b in pairs])
    cpu_r = med([b["cpu_us_per_req"] / r["cpu_us_per_req"] if b and r["cpu_us_per_req"] else 0 for r, b in pairs])
    dp99 = med([r["p99_us"] - b["p99_us"] if b else 0 for r, b in pairs])
    m = lambda k: med([r[k] for r in rs])
    miss = [r["cache_miss_pct"] for r in rs if r.get("cache_miss_pct") is not None]
    miss = "" if not miss else round(med(miss))
    print(f"{name:26} {streams:>7} {m('rps'):>8.0f} {m('p50_us'):>7.0f} {m('p99_us'):>7.0f} {m('p999_us'):>7.0f} "
          f"{m('cpu_us_per_req'):>10.1f} {ratio:>6.2f} {cpu_r:>6.2f} {dp99:>7.0f} {miss:>5} "
          f"{sum(r['wrong_decisions'] for r in rs):>5} {sum(r['errors'] for r in rs):>4}")
if bad:
    print(f"{bad} wrong decisions or errors", file=sys.stderr)
    sys.exit(1)
PY

# --- Memory ------------------------------------------------------------------
start_authgate "$tmp/rs.yaml"
sleep 1
idle=$(rss_kb "$server_pid")
out=$("${core1[@]}" "$load" run "$server_url" 64 0 0 "$rs_tokens")
cached=$(metric "$http_port" 'authgate_token_cache_lookups_total\{result="miss"')
full=$(rss_kb "$server_pid")
stop_server
python3 - "$idle" "$full" "$cached" "$out" <<'PY'
import json, sys
idle, full, cached, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
print(f"\nmemory: RSS idle {idle / 1024:.1f} MiB; after {cached} distinct RS256 tokens verified and cached "
      f"{full / 1024:.1f} MiB ({(full - idle) * 1024 / max(cached, 1):.0f} bytes/token); "
      f"wrong={out['wrong_decisions']} errors={out['errors']}")
if out["wrong_decisions"] or out["errors"]:
    sys.exit(1)
PY

if [ "${BENCH_ENVOY:-1}" != 0 ]; then
  BENCH_BIN="$bin" BENCH_SECONDS="$secs" BENCH_ROUNDS="$rounds" BENCH_SMOKE="$smoke" bash bench/envoy.sh "$tmp" "$rs_tokens"
fi
