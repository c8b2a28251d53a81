#!/usr/bin/env bash
# Builds stoa-gateway (release) and runs it on conf/demo.yaml:
#   curl -i localhost:8080/   curl localhost:8080/admin/metrics   curl localhost:9901/config
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --bin stoa-gateway
exec ./target/release/stoa-gateway -c conf/demo.yaml "$@"
