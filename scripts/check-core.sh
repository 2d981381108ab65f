#!/usr/bin/env bash
# The decision pipeline (crates/core) links no server: no tonic, axum or
# Envoy protos, and hyper only as reqwest's client (docs/design.md, "Crates").
# Reads `cargo tree` as cargo resolves the core alone (as a host that links
# it would). Usage: scripts/check-core.sh
set -euo pipefail
cd "$(dirname "$0")/.."

tree=$(cargo tree -p authgate-core -e normal --prefix none --locked)
crates=$(sed 's/ v[0-9].*//' <<<"$tree" | sort -u)
fail=0
for banned in tonic tonic-health tonic-reflection axum axum-core envoy-types prost clap tracing-subscriber; do
  if grep -qx "$banned" <<<"$crates"; then
    echo "error: authgate-core depends on $banned" >&2
    fail=1
  fi
done
for crate in hyper hyper-util; do
  features=$(cargo tree -p authgate-core -e features -i "$crate" --prefix none --locked 2>/dev/null \
    | sed -n "s/^$crate feature \"\([^\"]*\)\".*/\1/p" | sort -u | tr '\n' ' ')
  echo "$crate features in the core: ${features:-none}"
  if grep -qwE 'server|server-auto|server-graceful' <<<"$features"; then
    echo "error: authgate-core enables $crate's server" >&2
    fail=1
  fi
done
echo "authgate-core: $(wc -l <<<"$crates") crates"
if [ "$fail" = 0 ]; then
  echo "core: ok, no server linked"
else
  exit 1
fi
