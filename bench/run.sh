#!/usr/bin/env bash
# authgate vs. a no-op ext_authz baseline on the same tonic stack, driven by
# the same closed-loop gRPC load generator, in one run. Prints, per scenario
# and concurrency, requests/s, p50/p99/p99.9 latency, server CPU per request
# and the ratio to the baseline's requests/s.
#
#   bash bench/run.sh            # release build, 10 s per point
#   bash bench/run.sh --smoke    # debug build, 1 s per point (CI: keeps it from rotting)
#
# Env: BENCH_SECONDS, BENCH_DISTINCT (distinct RS256 tokens, default 2000).
# Servers are pinned to core 0 and the load generator to core 1 (taskset).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
secs=${BENCH_SECONDS:-10}
distinct=${BENCH_DISTINCT:-2000}
if [ "${1:-}" = "--smoke" ]; then
  profile=debug
  secs=1
  distinct=50
fi
if [ "$profile" = release ]; then
  cargo build --release --quiet --bins
else
  cargo build --quiet --bins
fi
bin="target/$profile"
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

secret=bench-secret-0123456789abcdef0123456789abcdef
claims='{"sub":"u1","claims.jwt.hasura.io":{"x-hasura-allowed-roles":["user"],"x-hasura-default-role":"user","x-hasura-user-id":"u1"}}'
"$bin/authgate" token --alg HS256 --key "$secret" --claims "$claims" > "$tmp/hs.txt"
"$bin/authgate" token --alg HS256 --key "wrong-secret-0123456789abcdef0123456789" --claims "$claims" > "$tmp/bad.txt"
: > "$tmp/rs.txt"
for i in $(seq "$distinct"); do
  "$bin/authgate" token --alg RS256 --key @tests/fixtures/rsa.key \
    --claims "{\"sub\":\"u$i\",\"claims.jwt.hasura.io\":{\"x-hasura-allowed-roles\":[\"user\"],\"x-hasura-default-role\":\"user\",\"x-hasura-user-id\":\"u$i\"}}" >> "$tmp/rs.txt"
done
cat > "$tmp/hs.yaml" <<YAML
definition:
  modes:
    - mode: jwt
      key: {algorithm: HS256, key: {value: "$secret"}}
      claimsConfig: {namespace: {location: '"claims.jwt.hasura.io"'}}
YAML
python3 - "$tmp/rs.yaml" <<'PY'
import json, sys
pem = open("tests/fixtures/rsa.pub.pem").read()
open(sys.argv[1], "w").write(f"""definition:
  settings: {{tokenCacheMaxEntries: 0}}   # every request verifies the signature
  modes:
    - mode: jwt
      key: {{algorithm: RS256, key: {{value: {json.dumps(pem)}}}}}
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}
""")
PY

start_noop() {
  local port; port=$(free_port)
  "${core0[@]}" "$bin/authgate-bench-noop" "127.0.0.1:$port" 2>/dev/null &
  pids+=($!); server_pid=$!; wait_port "$port"; server_url="http://127.0.0.1:$port"
}
start_authgate() { # CONFIG
  local port http; port=$(free_port); http=$(free_port)
  RUST_LOG=error "${core0[@]}" "$bin/authgate" serve --config "$1" --grpc-addr "127.0.0.1:$port" --http-addr "127.0.0.1:$http" 2>/dev/null &
  pids+=($!); server_pid=$!; wait_port "$port"; server_url="http://127.0.0.1:$port"
}

results="$tmp/results.jsonl"
run_point() { # NAME STREAMS EXPECTED TOKENS
  local before after out
  before=$(cpu_ticks "$server_pid")
  out=$("${core1[@]}" "$bin/authgate-bench-load" "$server_url" "$2" "$secs" "$3" "$4")
  after=$(cpu_ticks "$server_pid")
  python3 - "$1" "$2" "$before" "$after" "$out" >> "$results" <<'PY'
import json, os, sys
name, streams, before, after, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
tck = os.sysconf("SC_CLK_TCK")
out.update(scenario=name, streams=streams,
           cpu_us_per_req=round((after - before) / tck * 1e6 / max(out["requests"], 1), 1))
print(json.dumps(out))
PY
}

for streams in 1 64; do
  start_noop
  run_point baseline "$streams" 0 "$tmp/hs.txt"
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true

  start_authgate "$tmp/hs.yaml"
  run_point "a_hs256_cached" "$streams" 0 "$tmp/hs.txt"
  run_point "e_denied_bad_signature" "$streams" 16 "$tmp/bad.txt"
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true

  start_authgate "$tmp/rs.yaml"
  run_point "c_rs256_distinct_uncached" "$streams" 0 "$tmp/rs.txt"
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
base = {r["streams"]: r["rps"] for r in rows if r["scenario"] == "baseline"}
print(f"{'scenario':28} {'streams':>7} {'req/s':>9} {'p50us':>7} {'p99us':>7} {'p999us':>7} {'cpu_us/req':>10} {'ratio':>6} {'wrong':>5} {'err':>4}")
bad = 0
for r in rows:
    ratio = r["rps"] / base[r["streams"]] if base.get(r["streams"]) else 0
    bad += r["wrong_decisions"] + r["errors"]
    print(f"{r['scenario']:28} {r['streams']:>7} {r['rps']:>9.0f} {r['p50_us']:>7} {r['p99_us']:>7} {r['p999_us']:>7} {r['cpu_us_per_req']:>10} {ratio:>6.2f} {r['wrong_decisions']:>5} {r['errors']:>4}")
if bad:
    print(f"{bad} wrong decisions or errors", file=sys.stderr)
    sys.exit(1)
PY
