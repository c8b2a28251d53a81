#!/usr/bin/env bash
# Installs what building, testing and benchmarking stoa-gateway need, idempotently:
# Debian packages (cmake and OpenSSL headers for Pingora, openssl for test certificates,
# nginx and wrk for the load benchmark, redis-server for the Redis rate-limiting integration
# tests, which start a real redis-server per test, prometheus for `promtool check rules` on
# docker/observability/, valgrind for benches/instructions.sh), the official MCP Python and TypeScript SDKs, openapi-spec-validator
# for the OpenAPI documents shadow mode writes, the Python h2 package for the HTTP/2 attack
# tests, rotel (an OpenTelemetry collector), the OpenTelemetry Python SDK and prometheus-client
# (its OpenMetrics parser) for the tracing tests, the MCP integration tests drive the gateway with, and cargo-nextest when it is missing.
#
#   bash scripts/install-deps.sh             # everything (the test command)
#   bash scripts/install-deps.sh --run-only  # only what building and running need (demo.sh)
set -euo pipefail

RUN_ONLY=0
[[ "${1:-}" == "--run-only" ]] && RUN_ONLY=1
if ((RUN_ONLY)); then
  packages=(cmake pkg-config libssl-dev)
else
  packages=(cmake pkg-config libssl-dev openssl curl nginx-light wrk redis-server prometheus valgrind)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
((RUN_ONLY)) && exit 0
# Python packages, each pinned: `pip_pinned PACKAGE VERSION [MORE==VERSION ...]` installs
# PACKAGE==VERSION (and the others given) unless that version is already installed.
pip_pinned() {
  local name="$1" version="$2"
  shift 2
  if [[ "$(python3 -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null)" != "$version" ]]; then
    echo "install-deps: installing $name==$version $*"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$name==$version" "$@"
  fi
}
# The MCP tests' client: the official Python SDK.
pip_pinned mcp 2.3.0
# The shadow tests validate the OpenAPI documents the gateway writes with a real validator.
pip_pinned openapi-spec-validator 0.9.0
# The HTTP/2 attack tests (tests/attacks_h2.rs) send their frames with the h2 package.
pip_pinned h2 4.3.0
# benches/soak.sh's load generator runs on uvloop (twice the rate of asyncio's own loop).
pip_pinned uvloop 0.23.0
# The tracing tests (tests/telemetry.rs) export to a real OpenTelemetry collector: rotel, a
# Rust collector shipped as a PyPI wheel.
pip_pinned rotel 0.0.1a15
# The federated tracing test's upstream (the Python SDK, which traces what it serves) exports its
# spans with the OpenTelemetry SDK and OTLP/HTTP exporter, pinned to the API the SDK brought.
OTEL_PY_VERSION="1.45.2"
pip_pinned opentelemetry-exporter-otlp-proto-http "$OTEL_PY_VERSION" \
  "opentelemetry-api==$OTEL_PY_VERSION" "opentelemetry-sdk==$OTEL_PY_VERSION"
# The exemplar test parses the gateway's OpenMetrics exposition with the official Python
# Prometheus client's (strict) OpenMetrics parser.
pip_pinned prometheus-client 0.26.0
# ... and the official TypeScript SDK (tests/fixtures/ts, versions pinned by its lock file).
TS_DIR="$(dirname "$0")/../tests/fixtures/ts"
if ! cmp -s "$TS_DIR/package-lock.json" "$TS_DIR/node_modules/.stoa-installed-lock" 2>/dev/null; then
  echo "install-deps: installing the MCP TypeScript SDK (npm ci in tests/fixtures/ts)"
  npm ci --prefix "$TS_DIR" --no-audit --no-fund --loglevel=error >/dev/null
  cp "$TS_DIR/package-lock.json" "$TS_DIR/node_modules/.stoa-installed-lock"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "install-deps: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
