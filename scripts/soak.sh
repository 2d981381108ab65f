#!/usr/bin/env bash
# Bounded soak test of the real authgate binary (tests/soak.rs): sustained
# Check load on 127.0.0.1 while the JWKS rotates and the config reloads,
# every decision checked. Stops by itself after SECONDS (default 60, or
# SOAK_SECONDS); the report is printed and written to target/soak-report.json.
#
#   bash scripts/soak.sh [SECONDS] [--debug]      (SECONDS: 10 to 3600)
#
# --debug runs the debug build (reuses `cargo test`'s artifacts; for a short
# CI pass), otherwise the release build. Other knobs: SOAK_SEED (request
# mix), SOAK_LOG (authgate's log level, default info), SOAK_REPORT (path).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=(--release)
seconds="${SOAK_SECONDS:-60}"
for arg in "$@"; do
  case "$arg" in
    --debug) profile=() ;;
    ''|*[!0-9]*) echo "usage: scripts/soak.sh [SECONDS] [--debug]" >&2; exit 2 ;;
    *) seconds="$arg" ;;
  esac
done

export SOAK_SECONDS="$seconds"
# The test bounds itself (run time + 20 s sync + 30 s); this is a backstop
# that also covers the build.
exec timeout --signal=TERM "$((seconds + 1800))" \
  cargo test "${profile[@]}" --test soak -- --ignored --nocapture --test-threads 1
