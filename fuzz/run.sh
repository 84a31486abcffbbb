#!/usr/bin/env bash
# Fuzzes the Rust core with cargo fuzz (libFuzzer), one target after the other.
#   fuzz/run.sh [seconds] [target...]   each target for `seconds` (default 60); all targets by default
# Inputs go up to libFuzzer's 4096 bytes from the start (-len_control=0: the assembler
# needs long message sequences to get deep); one allocation above 64 MiB is a failure
# (nothing may allocate from a size a message declares), so is a run above 2 GiB or an
# input that takes more than 25 s.
# Installs cargo-fuzz (from crates.io, into cargo's bin dir) when it is missing; needs the
# nightly toolchain. Fails if a target crashes, leaks, times out or breaks an invariant:
# the input is then in fuzz/artifacts/<target>/ (see docs/reliability.md, "Fuzzing").
# New inputs go to a scratch corpus under fuzz/target/, never into the committed
# seeds (fuzz/corpus/<target>) or regression inputs (fuzz/regressions/<target>).
set -euo pipefail
cd "$(dirname "$0")"
FUZZ=$PWD
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(wire_decode assembler)
CARGO_FUZZ_VERSION=0.13.2
# libFuzzer takes -max_total_time=0 as "no limit".
if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
  echo "fuzz/run.sh: seconds must be a whole number >= 1, got '$secs'" >&2
  exit 2
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: needs the nightly Rust toolchain (cargo +nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi

echo "==> building the fuzz targets (nightly, release + debug assertions, AddressSanitizer)" >&2
mkdir -p "$FUZZ/target"
if ! cargo +nightly fuzz build --fuzz-dir "$FUZZ" >"$FUZZ/target/build.log" 2>&1; then
  cat "$FUZZ/target/build.log" >&2
  echo "fuzz/run.sh: building the fuzz targets failed" >&2
  exit 1
fi

status=0
for t in "${targets[@]}"; do
  work=$FUZZ/target/fuzz-work/$t
  mkdir -p "$work/corpus" "$FUZZ/regressions/$t"
  rm -f "$work"/fuzz-*.log
  echo "==> fuzzing $t for ${secs}s" >&2
  # One job, one process: libFuzzer's -jobs=1 runs the fuzzer as a child whose output
  # goes to fuzz-0.log in the working directory, so run from the scratch directory.
  set +e
  (cd "$work" && cargo +nightly fuzz run --fuzz-dir "$FUZZ" "$t" \
    "$work/corpus" "$FUZZ/corpus/$t" "$FUZZ/regressions/$t" -- \
    -max_total_time="$secs" -jobs=1 -len_control=0 -timeout=25 -rss_limit_mb=2048 -malloc_limit_mb=64 \
    -print_final_stats=1) \
    >"$work/cargo-fuzz.out" 2>&1
  rc=$?
  set -e
  log=$work/fuzz-0.log
  [ -f "$log" ] || log=$work/cargo-fuzz.out
  if [ $rc -ne 0 ] || grep -qE '^==[0-9]+== ?ERROR|^SUMMARY: libFuzzer|panicked at' "$log"; then
    echo "fuzz/run.sh: $t FAILED (exit $rc); the end of its log ($log):" >&2
    tail -n 60 "$log" >&2
    ls "$FUZZ/artifacts/$t" 2>/dev/null | sed "s|^|  input: fuzz/artifacts/$t/|" >&2
    status=1
    continue
  fi
  # libFuzzer's closing lines: executions, coverage (cov: edges, ft: features), corpus.
  grep -E '(INITED|DONE) +cov:' "$log" | sed "s/^/  $t: /" >&2
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" | sed "s/^/  $t: /" >&2
done
if [ $status -eq 0 ]; then
  echo "fuzz: ${#targets[@]} targets fuzzed for ${secs}s each, no crash" >&2
fi
exit $status
