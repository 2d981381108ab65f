#!/usr/bin/env bash
# Runs the README's Quickstart as a user would, from the README's own text:
#   1. its first command (`cargo run --release --locked -- serve ...`), until
#      GET /healthz answers 200 (the build included: with an empty CARGO_HOME
#      every crate is downloaded, as on a fresh machine);
#   2. the "Send a Check" block (token, then an offline check that allows);
#   3. each curl line against the running server, whose status must be the
#      one its comment names.
# Ports 8080 and 50051 are the README's; if one is taken on this machine, free
# ones replace them (and the substitution is printed).
# Usage: bash scripts/check-readme.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# The fenced ```sh blocks of README.md, numbered from 1, separated by NUL.
blocks=$(awk '/^```sh$/ {f=1; n++; next} /^```$/ && f {f=0; printf "%c", 0; next} f {print}' README.md | tr '\0' '\036')
block() { printf '%s' "$blocks" | awk -v RS=$'\036' -v n="$1" 'NR == n'; }
block_with() { local i=1; while :; do b=$(block "$i"); [ -n "$b" ] || return 1; if grep -q -- "$1" <<<"$b"; then printf '%s\n' "$b"; return 0; fi; i=$((i + 1)); done; }

serve_cmd=$(block_with 'cargo run --release' | grep -m1 '^cargo run --release')
[ -n "$serve_cmd" ] || { echo "check-readme: no 'cargo run --release' command in README.md" >&2; exit 1; }
check_block=$(block_with 'authgate token')
curl_lines=$(block_with 'curl -i http://127.0.0.1:8080/check' | grep '^curl ')

port_free() { python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http=8080; grpc=50051
if ! port_free 8080; then http=$(free_port); echo "port 8080 is taken here: using $http"; fi
if ! port_free 50051; then grpc=$(free_port); echo "port 50051 is taken here: using $grpc"; fi
serve_cmd=${serve_cmd//127.0.0.1:8080/127.0.0.1:$http}
serve_cmd=${serve_cmd//127.0.0.1:50051/127.0.0.1:$grpc}
curl_lines=${curl_lines//127.0.0.1:8080/127.0.0.1:$http}

log=$(mktemp)
pgid=
cleanup() {
  if [ -n "$pgid" ]; then kill -TERM -- "-$pgid" 2>/dev/null || true; fi
  rm -f "$log"
}
trap cleanup EXIT

echo "\$ $serve_cmd"
start=$(date +%s)
setsid bash -c "$serve_cmd" > "$log" 2>&1 &
pgid=$!
ok=1
for _ in $(seq 7200); do     # up to 60 min: the release build comes first
  if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http/healthz")" = 200 ]; then ok=0; break; fi
  kill -0 "$pgid" 2>/dev/null || break
  sleep 0.5
done
if [ "$ok" -ne 0 ]; then echo "the README's first command did not serve /healthz:" >&2; tail -n 50 "$log" >&2; exit 1; fi
echo "GET /healthz: 200, $(( $(date +%s) - start )) s after the command started (build included)"

echo "\$ (Send a Check)"
out=$(TOKEN= bash -c "set -euo pipefail; $check_block"$'\n''printf "\nTOKEN=%s\n" "$TOKEN"')
echo "$out" | grep -v '^TOKEN='
grep -q '"allowed":true' <<<"$out" || { echo "the README's check did not allow" >&2; exit 1; }
TOKEN=$(grep '^TOKEN=' <<<"$out" | cut -d= -f2-)
export TOKEN

while IFS= read -r line; do
  want=$(sed -n 's/.*# *\([0-9][0-9][0-9]\).*/\1/p' <<<"$line")
  cmd=${line%%#*}
  got=$(bash -c "$cmd -s -o /dev/null -w '%{http_code}'")
  echo "\$ $cmd-> $got (README: $want)"
  [ "$got" = "$want" ] || { echo "status $got, the README says $want" >&2; exit 1; }
done <<<"$curl_lines"
echo "README quickstart check passed"
