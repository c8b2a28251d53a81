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
# The MCP tests' client: the official Python SDK, pinned.
MCP_SDK_VERSION="2.3.0"
if [[ "$(python3 -c 'import importlib.metadata as m; print(m.version("mcp"))' 2>/dev/null)" != "$MCP_SDK_VERSION" ]]; then
  echo "install-deps: installing the MCP Python SDK (mcp==$MCP_SDK_VERSION)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "mcp==$MCP_SDK_VERSION"
fi
# The shadow tests validate the OpenAPI documents the gateway writes with a real validator.
OPENAPI_VALIDATOR_VERSION="0.9.0"
if [[ "$(python3 -c 'import importlib.metadata as m; print(m.version("openapi-spec-validator"))' 2>/dev/null)" != "$OPENAPI_VALIDATOR_VERSION" ]]; then
  echo "install-deps: installing openapi-spec-validator==$OPENAPI_VALIDATOR_VERSION"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "openapi-spec-validator==$OPENAPI_VALIDATOR_VERSION"
fi
# The HTTP/2 attack tests (tests/attacks_h2.rs) send their frames with the h2 package, pinned.
H2_VERSION="4.3.0"
if [[ "$(python3 -c 'import importlib.metadata as m; print(m.version("h2"))' 2>/dev/null)" != "$H2_VERSION" ]]; then
  echo "install-deps: installing the Python h2 package (h2==$H2_VERSION)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "h2==$H2_VERSION"
fi
# benches/soak.sh's load generator runs on uvloop (twice the rate of asyncio's own loop).
UVLOOP_VERSION="0.23.0"
if [[ "$(python3 -c 'import importlib.metadata as m; print(m.version("uvloop"))' 2>/dev/null)" != "$UVLOOP_VERSION" ]]; then
  echo "install-deps: installing uvloop==$UVLOOP_VERSION"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "uvloop==$UVLOOP_VERSION"
fi
# The tracing tests (tests/telemetry.rs) export to a real OpenTelemetry collector: rotel, a
# Rust collector shipped as a PyPI wheel.
ROTEL_VERSION="0.0.1a15"
if [[ "$(python3 -c 'import importlib.metadata as m; print(m.version("rotel"))' 2>/dev/null)" != "$ROTEL_VERSION" ]]; then
  echo "install-deps: installing the rotel collector (rotel==$ROTEL_VERSION)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "rotel==$ROTEL_VERSION"
fi
# The federated tracing test's upstream (the Python SDK, which traces what it serves) exports its
# spans with the OpenTelemetry SDK and OTLP/HTTP exporter, pinned to the API the SDK brought.
OTEL_PY_VERSION="1.45.2"
if [[ "$(python3 -c 'import importlib.metadata as m; print(m.version("opentelemetry-exporter-otlp-proto-http"))' 2>/dev/null)" != "$OTEL_PY_VERSION" ]]; then
  echo "install-deps: installing the OpenTelemetry Python SDK and OTLP exporter ($OTEL_PY_VERSION)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    "opentelemetry-api==$OTEL_PY_VERSION" "opentelemetry-sdk==$OTEL_PY_VERSION" \
    "opentelemetry-exporter-otlp-proto-http==$OTEL_PY_VERSION"
fi
# The exemplar test parses the gateway's OpenMetrics exposition with the official Python
# Prometheus client's (strict) OpenMetrics parser.
PROM_CLIENT_VERSION="0.26.0"
if [[ "$(python3 -c 'import importlib.metadata as m; print(m.version("prometheus-client"))' 2>/dev/null)" != "$PROM_CLIENT_VERSION" ]]; then
  echo "install-deps: installing prometheus-client==$PROM_CLIENT_VERSION"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "prometheus-client==$PROM_CLIENT_VERSION"
fi
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
