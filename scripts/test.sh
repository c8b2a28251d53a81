#!/usr/bin/env bash
# The whole test suite, as CI runs it: dependencies, formatting, lints (clippy with
# --all-targets, which also compiles the benches and examples), unit and integration tests (the
# real binary against real servers on 127.0.0.1), and a short smoke run of every fuzz target
# from its seed corpus (FUZZ_SECONDS each, default 5; FUZZ_SECONDS=0 skips it), built
# unoptimised, which halves its build; the long runs are `bash fuzz/run.sh` (optimised).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo nextest run --workspace --no-fail-fast
# the patched Pingora crates in vendor/ are their own workspaces: their tests, ours included
(cd vendor/pingora-timeout && cargo test --locked --lib --target-dir ../../target/vendor)
if [[ "${FUZZ_SECONDS:-5}" != "0" ]]; then
  (cd fuzz && cargo fmt -- --check)
  FUZZ_PROFILE=dev bash fuzz/run.sh "${FUZZ_SECONDS:-5}"
fi
