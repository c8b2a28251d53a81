#!/usr/bin/env bash
# Runs every fuzz target (cargo-fuzz / libFuzzer) for SECONDS each (default 600), from its
# seed corpus in fuzz/corpus/<target> (new inputs found go to a scratch copy, so the committed
# corpus stays small). Prints one line per target: executions, corpus size, and any crash
# (libFuzzer writes the input to fuzz/artifacts/<target>/ and the run fails).
#
#   bash fuzz/run.sh          # 10 minutes per target
#   bash fuzz/run.sh 5        # the test command's smoke run: 5 s per target
#   TARGETS="path_canonical config_loader" bash fuzz/run.sh 60
#   FUZZ_PROFILE=dev bash fuzz/run.sh 5   # unoptimised build: half the build time, for smoke runs
#
# Needs cargo-fuzz (installed here when missing). cargo-fuzz passes nightly-only flags to
# rustc; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH="${1:-600}"
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
ALL=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^stoa-fuzz$')
TARGETS="${TARGETS:-$ALL}"
case "${FUZZ_PROFILE:-release}" in
  release) PROFILE_FLAG=-O ;;
  dev) PROFILE_FLAG=--dev ;;
  *) echo "fuzz: FUZZ_PROFILE is release or dev" >&2; exit 2 ;;
esac
cargo fuzz build "$PROFILE_FLAG" --fuzz-dir . >/dev/null
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
status=0
for t in $TARGETS; do
  mkdir -p "corpus/$t" "$scratch/$t" "artifacts/$t"
  log="$scratch/$t.log"
  if cargo fuzz run "$PROFILE_FLAG" --fuzz-dir . "$t" "$scratch/$t" "corpus/$t" -- \
      -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
      -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    result="ok"
  else
    result="FAILED (see fuzz/artifacts/$t/)"
    status=1
    tail -40 "$log"
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  corpus=$(ls "$scratch/$t" | wc -l)
  printf '%-20s %8ss  %12s execs  cov %6s  corpus %6s  %s\n' \
    "$t" "$SECONDS_EACH" "${execs:-?}" "${cov:-?}" "$corpus" "$result"
done
exit $status
