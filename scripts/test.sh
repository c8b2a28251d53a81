#!/usr/bin/env bash
# The whole test suite, as CI runs it: dependencies, formatting, lints, unit and integration
# tests (the real binary against real servers on 127.0.0.1), and a compile check of the benches.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets
cargo nextest run --workspace --no-fail-fast
