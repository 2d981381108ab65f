#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time and reports, per
# target, the executions, coverage (libFuzzer's final cov/ft) and crashes.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, all targets)
#
# Works on the stable toolchain: cargo-fuzz passes -Z flags to rustc, which
# RUSTC_BOOTSTRAP=1 allows, and no sanitizer is used (AddressSanitizer needs
# nightly). Safe Rust needs no ASan; without it there is no LeakSanitizer
# either, so leaks show up as RSS growth, which -rss_limit_mb turns into a
# failure.
#
# Each input has FUZZ_TIMEOUT seconds (default 10) before it counts as a
# hang, and the process FUZZ_RSS_MB (default 2048) of memory. A crash, a
# hang (timeout), running out of memory, or a run that does not finish
# makes the script exit 1; its reproducer is in fuzz/artifacts/<target>/:
#
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none <target> fuzz/artifacts/<target>/<file>
#
# The committed seeds (fuzz/corpus/<target>/seed-*) are read only; what a run
# discovers goes to fuzz/target/corpus/<target> (not in git) and is reused by
# the next local run.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
case "$secs" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 2 ;;
esac
timeout_s=${FUZZ_TIMEOUT:-10}
rss_mb=${FUZZ_RSS_MB:-2048}

export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
flags=(--sanitizer none)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version "${CARGO_FUZZ_VERSION:-0.13.2}"
fi

echo "==> building the fuzz targets (release, debug assertions, no sanitizer)"
cargo fuzz build "${flags[@]}"

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

logs=fuzz/target/logs
mkdir -p "$logs"
rows=()
failed=0
for t in "${targets[@]}"; do
  work=fuzz/target/corpus/$t
  artifacts=fuzz/artifacts/$t
  mkdir -p "$work" "$artifacts" "fuzz/corpus/$t"
  before=$(find "$artifacts" -type f | wc -l)
  log=$logs/$t.log
  echo "==> $t: ${secs}s"
  status=0
  (exec cargo fuzz run "${flags[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -timeout="$timeout_s" -rss_limit_mb="$rss_mb" \
    -print_final_stats=1) >"$log" 2>&1 &
  pid=$!
  # A guard in case libFuzzer itself does not stop (its -timeout runs in a
  # signal handler, which a hang inside malloc can defeat): the fuzzer's
  # thread stacks go to the log (with gdb), then it is killed.
  deadline=$((SECONDS + secs * 2 + 300))
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then
    children=$(pgrep -P "$pid" || true)
    echo "==> $t did not stop by itself" >>"$log"
    if command -v gdb >/dev/null 2>&1; then
      for c in $children; do
        gdb -batch -p "$c" -ex 'thread apply all bt 30' >>"$log" 2>&1 || true
      done
    fi
    # shellcheck disable=SC2086
    kill -KILL $children "$pid" 2>/dev/null || true
  fi
  wait "$pid" || status=$?
  after=$(find "$artifacts" -type f | wc -l)
  crashes=$((after - before))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  # libFuzzer's last status line (DONE, or the last pulse before a crash).
  cov=$( (grep -oE ' cov: [0-9]+' "$log" || true) | tail -n 1 | tr -dc '0-9')
  ft=$( (grep -oE ' ft: [0-9]+' "$log" || true) | tail -n 1 | tr -dc '0-9')
  corpus=$(find "$work" -type f | wc -l)
  verdict=ok
  if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    verdict="FAILED (exit $status)"
    failed=1
    echo "---- $t: last lines of $log"
    tail -n 40 "$log"
    ls -l "$artifacts"
  fi
  rows+=("$(printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |' \
    "$t" "$secs" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$corpus" "$crashes" "$verdict")")
done

echo
echo "| target | seconds | execs | exec/s | cov | ft | corpus | crashes | result |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
printf '%s\n' "${rows[@]}"
if [ "$failed" -ne 0 ]; then
  echo "fuzzing found a problem: see the logs in $logs and the inputs in fuzz/artifacts/" >&2
  exit 1
fi
