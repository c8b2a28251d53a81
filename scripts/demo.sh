#!/usr/bin/env bash
# Builds stoa-gateway (profile release: thin LTO, a few minutes on 2 cores) and runs it on
# conf/demo.yaml, installing only what building and running need (cmake, pkg-config, OpenSSL
# headers; the test toolchain is the test command's):
#   curl -i localhost:8080/   curl localhost:8080/admin/metrics   curl localhost:9901/config
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --run-only
echo "demo: building stoa-gateway (cargo build --release: a few minutes on a fresh machine)" >&2
cargo build --release --bin stoa-gateway
exec ./target/release/stoa-gateway -c conf/demo.yaml "$@"
