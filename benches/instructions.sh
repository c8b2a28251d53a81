#!/usr/bin/env bash
# Instructions per proxied request, under valgrind's callgrind: repeatable on a noisy machine
# where req/s move by ±15% between runs, so it is what a change to the request path is judged
# by. Measures bare Pingora (benches/bare_pingora.rs) and stoa-gateway (one router route, the
# same work) proxying to a local nginx, `wrk -t1 -c10` for CGDUR (default 15s) with the
# instrumentation on only during that run; prints instructions per request for each and their
# ratio, and keeps the callgrind files (callgrind_annotate FILE) in OUT (default /tmp/stoa-cg).
#
#   cargo build --profile dist --bin stoa-gateway --example bare_pingora
#   bash benches/instructions.sh
#   STOA_EXTRA=$'telemetry:\n  endpoint: http://127.0.0.1:4318\n  sampler_arg: 0.01' \
#     SKIP_BARE=1 bash benches/instructions.sh    # stoa with a section added (here: tracing)
#
# Needs valgrind, nginx, wrk, curl.
set -u -o pipefail
{
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STOA_BIN="${STOA_BIN:-$ROOT/target/dist/stoa-gateway}"
BARE_BIN="${BARE_BIN:-$ROOT/target/dist/examples/bare_pingora}"
OUT="${OUT:-/tmp/stoa-cg}"
CGDUR="${CGDUR:-15s}"
for t in valgrind callgrind_control callgrind_annotate nginx wrk curl; do
  command -v "$t" >/dev/null || { echo "instructions.sh: missing $t" >&2; exit 1; }
done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mkdir -p "$OUT"
UP="$(free_port)"
cat >"$OUT/up.conf" <<NG
worker_processes 1; daemon off; pid $OUT/up.pid; error_log $OUT/up.err;
events { worker_connections 20000; }
http { access_log off; keepalive_requests 1000000; server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; } } }
NG
nginx -c "$OUT/up.conf" -p "$OUT" & UPPID=$!
trap 'kill $UPPID 2>/dev/null' EXIT

measure() { # measure NAME PORT CMD... -> instructions per request
  local name="$1" port="$2" vg reqs ir file; shift 2
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/$name.cg" "$@" >"$OUT/$name.log" 2>&1 &
  vg=$!
  for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.2; done
  wrk -t1 -c10 -d3s "http://127.0.0.1:$port/" >/dev/null 2>&1   # warm up: pools, caches
  callgrind_control -i on "$vg" >/dev/null
  wrk -t1 -c10 -d"$CGDUR" "http://127.0.0.1:$port/" >"$OUT/$name.wrk" 2>&1
  callgrind_control -i off "$vg" >/dev/null
  callgrind_control -d "$vg" >/dev/null
  sleep 1
  kill -INT "$vg"; sleep 2; kill -9 "$vg" 2>/dev/null; wait "$vg" 2>/dev/null
  reqs="$(awk '/requests in/ {print $1}' "$OUT/$name.wrk")"
  file="$(ls -S "$OUT/$name.cg"* | head -1)"
  ir="$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')"
  echo $(( ir / reqs ))
}
BP="$(free_port)"
if [ "${SKIP_BARE:-0}" = 1 ]; then
  BARE=""
else
  BARE="$(measure bare "$BP" "$BARE_BIN" "127.0.0.1:$UP" "127.0.0.1:$BP")"
fi
SP="$(free_port)"; AP="$(free_port)"
cat >"$OUT/stoa.yaml" <<YAML
server: { threads: 1, pid_file: $OUT/stoa.pid, upgrade_sock: $OUT/stoa.sock, watch_config: false }
admin: { address: "127.0.0.1:$AP" }
listeners:
  - { name: bench, address: "127.0.0.1:$SP", chains: [routes] }
chains:
  routes:
    - type: router
      routes: [{ name: all, match: { path_prefix: / }, cluster: upstream }]
clusters:
  upstream: { endpoints: ["127.0.0.1:$UP"] }
${STOA_EXTRA:-}
YAML
STOA="$(measure stoa "$SP" "$STOA_BIN" -c "$OUT/stoa.yaml")"
if [ -n "$BARE" ]; then
  echo "instructions per proxied request: bare Pingora $BARE, stoa (router only${STOA_EXTRA:+, plus STOA_EXTRA}) $STOA, stoa/bare $(awk -v a="$STOA" -v b="$BARE" 'BEGIN {printf "%.2f", a / b}')"
else
  echo "instructions per proxied request: stoa (router only${STOA_EXTRA:+, plus STOA_EXTRA}) $STOA"
fi
echo "callgrind files: $OUT/bare.cg*, $OUT/stoa.cg* (callgrind_annotate --inclusive=yes FILE)"
exit 0
}
