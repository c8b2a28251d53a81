#!/usr/bin/env bash
# Soak benchmark: one stoa-gateway process under an hour of mixed traffic at half its capacity,
# with slow clients throughout and an upstream that keeps restarting; the gateway's RSS sampled
# every minute. Target (hardening issue): RSS flat within 10%.
#
#   benches/soak.sh                                   # 1 hour; writes benches/results/soak-latest.md
#   DURATION=3m SAMPLE_EVERY=20s benches/soak.sh      # a smoke run
#   STOA_BIN=target/debug/stoa-gateway DURATION=3m SAMPLE_EVERY=20s benches/soak.sh
#
# What runs (2-core machine: the gateway alone on PROXY_CPU, everything else on LOAD_CPU):
#   gateway   STOA_BIN -c $TMP/stoa-soak.yaml (written by this script, checked with --check;
#             copied into the results): threads 1, three listeners:
#               proxy   router -> cluster `upstream` (nginx answering "ok\n")
#               mcp     the `mcp` filter, one REST-backed tool get_user -> nginx /users/{id}
#               mirror  router -> cluster `primary` (nginx, a small JSON order) + the `mirror`
#                       filter copying every request (percent 100) to a candidate (the same
#                       order with its keys reversed, so each copy is compared for real)
#             every listener with http.header_read_timeout HEADER_READ_TIMEOUT and
#             http.keepalive_timeout KEEPALIVE_TIMEOUT
#   nginx     two instances (1 worker each): "flaky" serves the proxied upstream and the MCP
#             tool's backend and is stopped every RESTART_EVERY for RESTART_DOWN, then started
#             again on the same ports; "stable" serves the mirror's primary and candidate
#   capacity  first, before anything else: wrk -t1 -c CAP_CONNECTIONS -d CAP_DURATION on the
#             proxied route (after a 2 s warm-up) -> req/s at saturation
#   load      then RATE req/s in total (default CAP_FRACTION x capacity), open loop at a fixed
#             rate, split by MIX between proxy GETs, MCP tools/call POSTs (one session,
#             initialized once, its Mcp-Session-Id reused) and mirrored GETs. GEN=python (the
#             default) uses the asyncio generator embedded below (soak.py: keep-alive
#             connections per kind, requests started on a 1 ms tick or as soon as a connection
#             is free, more than 1 s of backlog skipped and counted, latency measured from the
#             send; per interval: sent, 2xx/4xx/5xx, transport errors, MCP tool errors in 200
#             answers, p50/p99/max, reconnects). GEN=oha runs one `oha -q --latency-correction`
#             per kind instead (client figures only at the end, and oha keeps every result in
#             memory for the whole run: per-interval counts then come from /metrics only)
#   slow      throughout: SLOW_CONNS slowloris connections spread over the three listeners
#             (a request line, then one header byte every SLOW_DRIP, never finishing the
#             header) and IDLE_CONNS idle keep-alive connections (proxy and mirror listeners:
#             one request, then silence), each reconnecting when the gateway cuts it; cuts
#             and connection lifetimes are counted per interval
#   samples   every SAMPLE_EVERY from the start of the soak: the gateway's VmRSS, VmHWM, open
#             fds and threads (/proc/PID), its CPU share and LOAD_CPU's, and its admin /metrics
#             (stoa_requests_total per listener and status, open client connections,
#             header-timeout closes, mirror copies and skips); WARN/ERROR lines of its log
#             are counted at the end
# At the end: benches/results/soak-latest.md (RESULTS) with the config, capacity and offered
# rate, one row per sample, first/last/min/max RSS, the least-squares slope (MiB/hour) and the
# drift (last sample vs. the first after WARMUP, %) over the samples after WARMUP, and
# PASS/FAIL against "RSS flat within 10%" (PASS: drift <= 10% and the fitted line rises by
# <= 10% over the post-warm-up window, and the gateway stayed up). The same summary is printed.
#
# Exit status: 0 PASS, 2 FAIL, 1 the run could not be made (missing tool, gateway not starting).
#
# Needs: nginx, wrk, curl, taskset, python3. For the dist binary's rates also uvloop
# (python3 -m pip install uvloop): the generator uses it when importable, and reaches 30k+
# req/s on one core with it against 15-20k without. The binary:
#   cargo build --profile dist --bin stoa-gateway
#
# Environment (defaults in brackets):
#   DURATION [1h]         length of the soak (after the capacity run); 90s, 3m, 1h or seconds
#   SAMPLE_EVERY [60s]    RSS / metrics / client-stats interval
#   WARMUP [DURATION/12]  samples before this are not used for drift and slope (5 min of 1 h)
#   STOA_BIN [target/dist/stoa-gateway]   NGINX [/usr/sbin/nginx]
#   CAP_DURATION [10s]  CAP_CONNECTIONS [50]   the capacity run
#   CAP_FRACTION [0.5]    share of the capacity offered during the soak
#   RATE [CAP_FRACTION x capacity]  total req/s offered (set it to skip the capacity run)
#   MIX ["60 20 20"]      shares (%) of proxy GETs, MCP tools/call, mirrored GETs
#   CONNECTIONS [60]      load connections, split by MIX (at least 2 per kind)
#   GEN [python]          python or oha;  OHA [oha on PATH, else target/tools/bin/oha]
#   SLOW_CONNS [200]  SLOW_DRIP [1s] (or 500ms)  IDLE_CONNS [100]
#   HEADER_READ_TIMEOUT [10s]  KEEPALIVE_TIMEOUT [60s]   the listeners' http limits
#   RESTART_EVERY [5m; DURATION/3 when DURATION < 15m]  RESTART_DOWN [10s]
#                         the flaky upstream's cycle (RESTART_EVERY=0: never)
#   FLAT_PCT [10]         the PASS threshold
#   PROXY_CPU [0]  LOAD_CPU [1]  STARTUP_TIMEOUT [20] s  KEEP_TMP [0]  LOCK [/tmp/stoa-load.lock]
#   RESULTS [benches/results/soak-latest.md]
set -u -o pipefail

# The whole script is one compound command, so bash parses it completely
# before running anything: editing this file during a run cannot corrupt it.
{

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

secs() { # 90 | 90s | 3m | 1h | 1.5h -> whole seconds
  awk -v v="$1" 'BEGIN {
    m = 1
    if (v ~ /ms$/) { sub(/ms$/, "", v); m = 0.001 }
    else if (v ~ /s$/) { sub(/s$/, "", v) }
    else if (v ~ /m$/) { sub(/m$/, "", v); m = 60 }
    else if (v ~ /h$/) { sub(/h$/, "", v); m = 3600 }
    if (v !~ /^[0-9]+(\.[0-9]+)?$/) { print "bad"; exit }
    printf "%d", v * m + 0.5 }'
}

DURATION="${DURATION:-1h}"
SAMPLE_EVERY="${SAMPLE_EVERY:-60s}"
STOA_BIN="${STOA_BIN:-$ROOT/target/dist/stoa-gateway}"
NGINX="${NGINX:-/usr/sbin/nginx}"
CAP_DURATION="${CAP_DURATION:-10s}"
CAP_CONNECTIONS="${CAP_CONNECTIONS:-50}"
CAP_FRACTION="${CAP_FRACTION:-0.5}"
RATE="${RATE:-}"
MIX="${MIX:-60 20 20}"
CONNECTIONS="${CONNECTIONS:-60}"
GEN="${GEN:-python}"
OHA="${OHA:-$(command -v oha || echo "$ROOT/target/tools/bin/oha")}"
SLOW_CONNS="${SLOW_CONNS:-200}"
SLOW_DRIP="${SLOW_DRIP:-1s}"
IDLE_CONNS="${IDLE_CONNS:-100}"
HEADER_READ_TIMEOUT="${HEADER_READ_TIMEOUT:-10s}"
KEEPALIVE_TIMEOUT="${KEEPALIVE_TIMEOUT:-60s}"
RESTART_EVERY="${RESTART_EVERY:-}"
RESTART_DOWN="${RESTART_DOWN:-10s}"
FLAT_PCT="${FLAT_PCT:-10}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
STARTUP_TIMEOUT="${STARTUP_TIMEOUT:-20}"
KEEP_TMP="${KEEP_TMP:-0}"
RESULTS="${RESULTS:-$ROOT/benches/results/soak-latest.md}"

log() { printf '[soak %(%T)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

DURATION_S="$(secs "$DURATION")"; EVERY_S="$(secs "$SAMPLE_EVERY")"
[ "$DURATION_S" = bad ] && die "bad DURATION: $DURATION"
# a short (smoke) run still sees the upstream restart: every third of it, under 15 min
[ -n "$RESTART_EVERY" ] || { [ "$DURATION_S" -ge 900 ] && RESTART_EVERY=5m || RESTART_EVERY="$((DURATION_S / 3))s"; }
RESTART_EVERY_S="$(secs "$RESTART_EVERY")"; RESTART_DOWN_S="$(secs "$RESTART_DOWN")"
DRIP_MS="$(awk -v v="$SLOW_DRIP" 'BEGIN { m = 1000; if (v ~ /ms$/) { sub(/ms$/, "", v); m = 1 } else sub(/s$/, "", v)
  if (v !~ /^[0-9]+(\.[0-9]+)?$/) print "bad"; else printf "%d", v * m }')"
WARMUP_S="$(secs "${WARMUP:-$((DURATION_S / 12))}")"
for v in DURATION_S EVERY_S RESTART_EVERY_S RESTART_DOWN_S WARMUP_S DRIP_MS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "bad duration in ${v%_S}"
done
[ "$EVERY_S" -gt 0 ] && [ "$DURATION_S" -ge "$EVERY_S" ] || die "need SAMPLE_EVERY > 0 and DURATION >= SAMPLE_EVERY"
[ "$RESTART_EVERY_S" -eq 0 ] || [ "$RESTART_DOWN_S" -lt "$RESTART_EVERY_S" ] || die "RESTART_DOWN must be shorter than RESTART_EVERY"
case "$GEN" in python|oha) ;; *) die "GEN: python or oha" ;; esac
read -r MIX_PROXY MIX_MCP MIX_MIRROR <<<"$MIX"
[[ "${MIX_PROXY:-x}${MIX_MCP:-x}${MIX_MIRROR:-x}" =~ ^[0-9.]+$ ]] || die "MIX: three numbers (proxy mcp mirror)"

for tool in "$NGINX" wrk curl taskset python3; do
  command -v "$tool" >/dev/null 2>&1 || die "missing tool: $tool"
done
if [ "$GEN" = python ] && ! python3 -c 'import uvloop' 2>/dev/null; then
  log "note: uvloop not importable: the plain asyncio generator tops out near 15-20k req/s on one core (pip install uvloop: 30k+)"
fi
[ "$GEN" = python ] || [ -x "$OHA" ] || die "GEN=oha but no oha at $OHA (cargo install --locked oha --root target/tools)"
# The binary may be replaced by a build while we start: wait a little for it.
for ((i = 0; i < 30; i++)); do [ -x "$STOA_BIN" ] && break; sleep 1; done
[ -x "$STOA_BIN" ] || die "no gateway binary at $STOA_BIN (cargo build --profile dist --bin stoa-gateway)"

# Client sockets: load + slow + idle, and the gateway's upstream side of each.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# One benchmark at a time on this machine (shared with load.sh): concurrent runs share the
# pinned cores and ruin each other's figures.
LOCK="${LOCK:-/tmp/stoa-load.lock}"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$LOCK"
  if ! flock -n 9; then
    log "another benchmark holds $LOCK; waiting (up to 15 min)"
    flock -w 900 9 || die "still locked after 15 min"
  fi
fi

TMP="$(mktemp -d /tmp/stoa-soak.XXXXXX)"
PIDS=()

# ---------------------------------------------------------------- processes --
children_of() { cat /proc/"$1"/task/*/children 2>/dev/null | tr -s " " "\n" | grep .; }
alive() { kill -0 "$1" 2>/dev/null; }

# stop_pid PID [SIGNAL]: signal, wait up to 5 s, then SIGKILL (and its children).
stop_pid() {
  local pid="$1" sig="${2:-TERM}" i kids
  alive "$pid" || { wait "$pid" 2>/dev/null; return 0; }
  kids="$(children_of "$pid")"
  kill -"$sig" "$pid" 2>/dev/null
  for ((i = 0; i < 50; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    log "pid $pid ignored SIG$sig for 5s; killing"
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
  for k in $kids; do alive "$k" && kill -KILL "$k" 2>/dev/null; done
  return 0
}

forget_pid() {
  local p keep=()
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

cleanup() {
  local p
  # SIGINT: fast shutdown for nginx and Pingora (Pingora's SIGTERM waits out a grace period);
  # the Python helpers stop on it too.
  for p in "${PIDS[@]}"; do stop_pid "$p" INT; done
  if [ "$KEEP_TMP" = 1 ]; then log "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Ports: random unused loopback ports below the kernel's ephemeral range (the clients' sockets
# take ephemeral ports; a listener there could fail to bind, or be taken while nginx is down).
EPH_LOW="$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null)"
[ "${EPH_LOW:-0}" -gt 12000 ] 2>/dev/null || EPH_LOW=32768
USED_PORTS=" "
free_port() {
  local i p
  for ((i = 0; i < 200; i++)); do
    p=$((10000 + RANDOM % (EPH_LOW - 10000)))
    case "$USED_PORTS" in *" $p "*) continue ;; esac
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    if command -v ss >/dev/null 2>&1 && [ -n "$(ss -Htan "( sport = :$p or dport = :$p )" 2>/dev/null)" ]; then
      continue
    fi
    USED_PORTS="$USED_PORTS$p "
    echo "$p"
    return 0
  done
  die "no free port found"
}
# (called in the main shell, not in $(...), so USED_PORTS is kept)
UP="$(free_port)"; USED_PORTS+="$UP "; BACKEND="$(free_port)"; USED_PORTS+="$BACKEND "
PRIMARY="$(free_port)"; USED_PORTS+="$PRIMARY "; CANDIDATE="$(free_port)"; USED_PORTS+="$CANDIDATE "
GW_PROXY="$(free_port)"; USED_PORTS+="$GW_PROXY "; GW_MCP="$(free_port)"; USED_PORTS+="$GW_MCP "
GW_MIRROR="$(free_port)"; USED_PORTS+="$GW_MIRROR "; ADMIN="$(free_port)"; USED_PORTS+="$ADMIN "

now_us() { echo "${EPOCHREALTIME/./}"; }
sleep_until_us() { # sleep_until_us EPOCH_US (returns at once when past)
  local d=$(($1 - $(now_us)))
  [ "$d" -gt 0 ] && sleep "$(awk -v d="$d" 'BEGIN { printf "%.3f", d / 1e6 }')"
  return 0
}

vm_kb() { awk -v k="$2:" '$1 == k {print $2}' /proc/"$1"/status 2>/dev/null; }

# -------------------------------------------------------------------- nginx --
nginx_conf() { # nginx_conf DIR SERVER_BLOCKS
  local dir="$1"
  mkdir -p "$dir/logs"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 8192; multi_accept on; }
http {
  access_log off;
  keepalive_timeout 75s;
  keepalive_requests 1000000;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  types { application/json json; }
$2
}
EOF
  "$NGINX" -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" \
    || die "nginx config test failed for $dir (see $dir/logs/error.log)"
}

start_nginx() { # start_nginx DIR -> sets LAST_PID
  local dir="$1"
  taskset -c "$LOAD_CPU" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" \
    >>"$dir/logs/stdout.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

wait_http() { # wait_http URL [EXPECTED_CODE]: up to STARTUP_TIMEOUT s
  local i
  for ((i = 0; i < STARTUP_TIMEOUT * 20; i++)); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" 2>/dev/null)" = "${2:-200}" ] && return 0
    sleep 0.05
  done
  return 1
}

# The mirror's answers: a small JSON order; the candidate's has its keys reversed and a later
# timestamp (each copy is parsed and compared, and matches with normalize_timestamps).
mkdir -p "$TMP/www/primary" "$TMP/www/candidate"
python3 - "$TMP/www" <<'PY'
import json, sys
order = {"id": "ord_9f8e7d6c5b4a", "status": "shipped", "currency": "EUR",
         "customer": {"id": "cus_123456", "name": "Ada Lovelace"},
         "items": [{"sku": f"SKU-{i:04}", "quantity": 1 + i % 3, "unit_price": 19.99 + i} for i in range(4)],
         "total": 101.96, "updated_at": "2026-11-23T09:20:11.512Z"}
def rev(v):
    if isinstance(v, dict):
        return {k: rev(v[k]) for k in reversed(list(v))}
    if isinstance(v, list):
        return [rev(x) for x in v]
    return "2026-11-23T10:00:00.125Z" if v == "2026-11-23T09:20:11.512Z" else v
json.dump(order, open(sys.argv[1] + "/primary/order.json", "w"))
json.dump(rev(order), open(sys.argv[1] + "/candidate/order.json", "w"))
PY
chmod a+x "$TMP"; chmod -R a+rX "$TMP/www"   # nginx's workers may run as www-data

nginx_conf "$TMP/flaky" "  server {
    listen 127.0.0.1:$UP backlog=4096 reuseport;
    location / { default_type text/plain; return 200 \"ok\n\"; }
  }
  server {
    listen 127.0.0.1:$BACKEND backlog=4096 reuseport;
    location /users/ { default_type application/json; return 200 '{\"id\": 1, \"name\": \"Ada Lovelace\", \"email\": \"ada@example.com\"}'; }
  }"
nginx_conf "$TMP/stable" "  server { listen 127.0.0.1:$PRIMARY backlog=4096 reuseport; root $TMP/www/primary; location / { try_files /order.json =404; } }
  server { listen 127.0.0.1:$CANDIDATE backlog=4096 reuseport; root $TMP/www/candidate; location / { try_files /order.json =404; } }"
start_nginx "$TMP/flaky"; FLAKY_PID="$LAST_PID"
start_nginx "$TMP/stable"; STABLE_PID="$LAST_PID"
wait_http "http://127.0.0.1:$UP/" && wait_http "http://127.0.0.1:$BACKEND/users/1" \
  || die "flaky nginx did not come up: $(cat "$TMP/flaky/logs/"*.log)"
wait_http "http://127.0.0.1:$PRIMARY/order" && wait_http "http://127.0.0.1:$CANDIDATE/order" \
  || die "stable nginx did not come up: $(cat "$TMP/stable/logs/"*.log)"
log "upstreams: flaky nginx (proxy :$UP, MCP backend :$BACKEND), stable nginx (primary :$PRIMARY, candidate :$CANDIDATE) on cpu $LOAD_CPU"

# ------------------------------------------------------------------ gateway --
CONFIG="$TMP/stoa-soak.yaml"
listener() { # listener NAME PORT
  cat <<YAML
  - name: $1
    address: "127.0.0.1:$2"
    chains: [$1]
    http: { header_read_timeout: $HEADER_READ_TIMEOUT, keepalive_timeout: $KEEPALIVE_TIMEOUT }
YAML
}
{
  cat <<YAML
# stoa-gateway config of benches/soak.sh (ports and paths of one run).
server: { threads: 1, pid_file: $TMP/gw.pid, upgrade_sock: $TMP/gw.sock, watch_config: false }
admin: { address: "127.0.0.1:$ADMIN" }
listeners:
YAML
  listener proxy "$GW_PROXY"
  listener mcp "$GW_MCP"
  listener mirror "$GW_MIRROR"
  cat <<YAML
chains:
  proxy:
    - type: router
      routes:
        - { name: proxy, match: { path_prefix: / }, cluster: upstream }
  mcp:
    - type: mcp
      path: /mcp
      session_secret: "soak-benchmark-session-secret-0123"
      tools:
        - name: get_user
          description: Look a user up
          input_schema: { type: object, required: [id], properties: { id: { type: integer } } }
          backend: { url: "http://127.0.0.1:$BACKEND/users/{id}", timeout: 5s }
  mirror:
    - type: router
      routes:
        - { name: mirrored, match: { path_prefix: / }, cluster: primary }
    - type: mirror
      url: "http://127.0.0.1:$CANDIDATE"
      percent: 100
      timeout: 5s
      max_concurrency: 256
      compare: { normalize_timestamps: true }
clusters:
  upstream: { endpoints: ["127.0.0.1:$UP"] }
  primary: { endpoints: ["127.0.0.1:$PRIMARY"] }
YAML
} >"$CONFIG"
"$STOA_BIN" --check -c "$CONFIG" >"$TMP/check.log" 2>&1 || die "config check failed: $(cat "$TMP/check.log")"

taskset -c "$PROXY_CPU" "$STOA_BIN" -c "$CONFIG" >"$TMP/gw.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
wait_http "http://127.0.0.1:$ADMIN/ready" || die "gateway not ready: $(tail -20 "$TMP/gw.log")"
wait_http "http://127.0.0.1:$GW_PROXY/" || die "proxy route not answering 200: $(tail -20 "$TMP/gw.log")"
wait_http "http://127.0.0.1:$GW_MIRROR/order" || die "mirror route not answering 200: $(tail -20 "$TMP/gw.log")"
log "gateway pid $GW_PID on cpu $PROXY_CPU: proxy :$GW_PROXY, mcp :$GW_MCP, mirror :$GW_MIRROR, admin :$ADMIN"

MCP_H=(-H "content-type: application/json" -H "accept: application/json, text/event-stream")
SID="$(curl -s -D - -o /dev/null "${MCP_H[@]}" "http://127.0.0.1:$GW_MCP/mcp" \
  -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"soak","version":"1"}}}' \
  | awk -F': ' 'tolower($1)=="mcp-session-id" {print $2}' | tr -d '\r')"
[ -n "$SID" ] || die "MCP initialize failed: $(tail -20 "$TMP/gw.log")"
CALL='{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_user","arguments":{"id":1}}}'
check="$(curl -s "${MCP_H[@]}" -H "mcp-session-id: $SID" "http://127.0.0.1:$GW_MCP/mcp" -d "$CALL")"
echo "$check" | grep -q '"isError":false' || die "tools/call failed: $check"
log "MCP session open; tools/call get_user answers"

# ----------------------------------------------------------------- capacity --
CAPACITY=""
if [ -z "$RATE" ]; then
  log "capacity: wrk -t1 -c$CAP_CONNECTIONS -d$CAP_DURATION http://127.0.0.1:$GW_PROXY/ (after a 2s warm-up)"
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CAP_CONNECTIONS" -d2s "http://127.0.0.1:$GW_PROXY/" >/dev/null 2>&1
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CAP_CONNECTIONS" -d"$CAP_DURATION" --latency "http://127.0.0.1:$GW_PROXY/" >"$TMP/wrk-capacity.txt" 2>&1
  CAPACITY="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$TMP/wrk-capacity.txt")"
  [ -n "$CAPACITY" ] && [ "$CAPACITY" -gt 0 ] || die "capacity run failed: $(cat "$TMP/wrk-capacity.txt")"
  RATE="$(awk -v c="$CAPACITY" -v f="$CAP_FRACTION" 'BEGIN { printf "%.0f", c * f }')"
  log "capacity: $CAPACITY req/s at saturation -> soak at $RATE req/s ($CAP_FRACTION)"
fi
[[ "$RATE" =~ ^[0-9]+$ ]] && [ "$RATE" -gt 0 ] || die "RATE must be a positive integer"
alive "$GW_PID" || die "gateway died during the capacity run: $(tail -20 "$TMP/gw.log")"

# Rates and connections per kind, by MIX.
read -r R_PROXY R_MCP R_MIRROR C_PROXY C_MCP C_MIRROR <<<"$(awk -v r="$RATE" -v c="$CONNECTIONS" \
  -v a="$MIX_PROXY" -v b="$MIX_MCP" -v m="$MIX_MIRROR" 'BEGIN { t = a + b + m; if (t <= 0) t = 1
  n = split(a " " b " " m, s, " ")
  for (i = 1; i <= 3; i++) { rate[i] = r * s[i] / t; conn[i] = (rate[i] > 0) ? int(c * s[i] / t + 0.5) : 0; if (rate[i] > 0 && conn[i] < 2) conn[i] = 2 }
  printf "%.1f %.1f %.1f %d %d %d\n", rate[1], rate[2], rate[3], conn[1], conn[2], conn[3] }')"
log "offered: $RATE req/s = proxy $R_PROXY + mcp $R_MCP + mirror $R_MIRROR req/s over $C_PROXY + $C_MCP + $C_MIRROR connections"

# ----------------------------------------------------------------- helpers --
cat >"$TMP/soak.py" <<'SOAKPY'
# soak.py: the soak's traffic, on one core, no dependencies (uvloop used when importable).
#   soak.py load  SPEC_JSON   open-loop fixed-rate mixed traffic (proxy GET, MCP tools/call POST,
#                             mirrored GET), stats per interval as JSON lines
#   soak.py slow  SPEC_JSON   slowloris connections dripping header bytes, and idle keep-alive
#                             connections, reconnecting whenever the gateway cuts them (counted)
import asyncio, json, math, os, random, signal, sys, time

try:
    import uvloop  # optional: about twice the requests per CPU second
    uvloop.install()
    LOOP = "uvloop"
except ImportError:
    LOOP = "asyncio"

mode, spec = sys.argv[1], json.loads(sys.argv[2])
# Reports cover intervals 1..duration/every; traffic goes on GRACE s longer, so the last sample
# (taken by soak.sh at t0 + duration) still sees it, until soak.sh stops us.
GRACE = 30
T0, EVERY = spec["t0"], spec["every"]
LAST = T0 + spec["duration"]
END = LAST + GRACE
OUT = open(spec["out"], "a", buffering=1)
HOST = "127.0.0.1"


def wall_to_mono(t):
    return time.monotonic() + (t - time.time())


# ----------------------------------------------------------------------------------- load --
NB = 8  # histogram buckets per power of two (~9% wide)


class Interval:
    __slots__ = ("sent", "s2", "s3", "s4", "s5", "err", "tool_err", "skipped", "late",
                 "conn_err", "reconnects", "hist", "max_us")

    def __init__(self):
        self.sent = self.s2 = self.s3 = self.s4 = self.s5 = self.err = self.tool_err = 0
        self.skipped = self.late = self.conn_err = self.reconnects = 0
        self.hist = [0] * (NB * 32)
        self.max_us = 0.0

    def pct(self, q):
        n = sum(self.hist)
        if not n:
            return None
        want, acc = q * n, 0
        for b, c in enumerate(self.hist):
            acc += c
            if acc >= want:
                return round(2 ** ((b + 0.5) / NB), 1)
        return None

    def dump(self):
        return {"sent": self.sent, "2xx": self.s2, "3xx": self.s3, "4xx": self.s4, "5xx": self.s5,
                "err": self.err, "tool_err": self.tool_err, "skipped": self.skipped,
                "late": self.late, "conn_err": self.conn_err, "reconnects": self.reconnects,
                "p50_us": self.pct(0.5), "p99_us": self.pct(0.99), "max_us": round(self.max_us, 1)}


class Kind:
    """One stream of identical requests at a fixed rate over a pool of keep-alive connections."""

    def __init__(self, name, port, request, rate, conns, tool):
        self.name, self.port, self.req, self.rate = name, port, request, rate
        self.nconns, self.tool = conns, tool
        self.issued = 0          # requests started (or skipped) so far
        self.start = None        # monotonic time of request 0
        self.idle = []
        self.iv = Interval()
        self.max_backlog = max(1, int(rate))  # more than 1 s behind: skip (counted)

    def pump(self, conn=None, now=None):
        """Start every request that is due, on idle connections (or on `conn`, just freed)."""
        if self.start is None:
            if conn is not None:
                self.idle.append(conn)
            return
        now = now or time.monotonic()
        due = int((now - self.start) * self.rate) - self.issued
        if due > self.max_backlog:
            self.iv.skipped += due - self.max_backlog
            self.issued += due - self.max_backlog
            due = self.max_backlog
        if conn is not None:
            if due > 0:
                self._send(conn, now)
                due -= 1
            else:
                self.idle.append(conn)
                return
        while due > 0 and self.idle:
            self._send(self.idle.pop(), now)
            due -= 1

    def _send(self, conn, now):
        intended = self.start + self.issued / self.rate
        self.issued += 1
        if now - intended > 0.01:
            self.iv.late += 1
        conn.send(now)


class Conn(asyncio.Protocol):
    def __init__(self, kind):
        self.kind, self.t, self.buf, self.busy, self.sent_at = kind, None, bytearray(), False, 0.0

    def connection_made(self, transport):
        self.t = transport
        self.kind.pump(self)

    def send(self, now):
        self.busy, self.sent_at = True, now
        self.kind.iv.sent += 1
        self.t.write(self.kind.req)

    def data_received(self, data):
        self.buf += data
        while self.busy:
            done = self._parse()
            if done is None:
                return
            status, body, close = done
            self._record(status, body)
            if close:
                self.t.close()
                return
            self.kind.pump(self)

    def _parse(self):
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end]).lower()
        try:
            status = int(head[9:12])
        except ValueError:
            status = 0
        close = b"\r\nconnection: close" in head
        start = end + 4
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            n = int(head[i + 17:j if j >= 0 else len(head)])
            if len(buf) < start + n:
                return None
            body = bytes(buf[start:start + n])
            del buf[:start + n]
            return status, body, close
        if b"\r\ntransfer-encoding: chunked" in head:
            pos, parts = start, []
            while True:
                k = buf.find(b"\r\n", pos)
                if k < 0:
                    return None
                size = int(bytes(buf[pos:k]).split(b";")[0], 16)
                if size == 0:  # (no trailers expected)
                    if len(buf) < k + 4:
                        return None
                    del buf[:k + 4]
                    return status, b"".join(parts), close
                if len(buf) < k + 2 + size + 2:
                    return None
                parts.append(bytes(buf[k + 2:k + 2 + size]))
                pos = k + 2 + size + 2
        if status in (204, 304) or 100 <= status < 200:
            del buf[:start]
            return status, b"", close
        return None  # body until close: finished in connection_lost

    def _record(self, status, body):
        self.busy = False
        iv = self.kind.iv
        us = (time.monotonic() - self.sent_at) * 1e6
        b = int(math.log2(us) * NB) if us >= 1 else 0
        iv.hist[min(b, len(iv.hist) - 1)] += 1
        if us > iv.max_us:
            iv.max_us = us
        c = status // 100
        if c == 2:
            iv.s2 += 1
            if self.kind.tool and (b'"isError":true' in body or b'"error":' in body):
                iv.tool_err += 1
        elif c == 3:
            iv.s3 += 1
        elif c == 4:
            iv.s4 += 1
        elif c == 5:
            iv.s5 += 1
        else:
            iv.err += 1

    def connection_lost(self, exc):
        if self.busy:
            if self.buf.find(b"\r\n\r\n") >= 0:   # a body delimited by the close
                end = self.buf.find(b"\r\n\r\n")
                try:
                    status = int(bytes(self.buf[9:12]))
                except ValueError:
                    status = 0
                self._record(status, bytes(self.buf[end + 4:]))
            else:
                self.busy = False
                self.kind.iv.err += 1
        if self in self.kind.idle:
            self.kind.idle.remove(self)
        if time.time() < END:
            asyncio.get_running_loop().create_task(open_conn(self.kind, reconnect=True))


async def open_conn(kind, reconnect=False):
    loop = asyncio.get_running_loop()
    if reconnect:
        kind.iv.reconnects += 1
    while time.time() < END:
        try:
            await loop.create_connection(lambda: Conn(kind), HOST, kind.port)
            return
        except OSError:
            kind.iv.conn_err += 1
            await asyncio.sleep(0.05 + random.random() * 0.05)


async def load():
    kinds = []
    for k in spec["kinds"]:
        if k["rate"] > 0:
            kinds.append(Kind(k["name"], k["port"], k["request"].encode("latin-1"), k["rate"],
                              k["conns"], k.get("tool", False)))
    for kind in kinds:
        for _ in range(kind.nconns):
            await open_conn(kind)
    await asyncio.sleep(max(0.0, T0 - time.time()))
    now = time.monotonic()
    for kind in kinds:
        kind.start = now
    stop = asyncio.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(s, stop.set)

    async def ticker():
        while not stop.is_set() and time.time() < END:
            now = time.monotonic()
            for kind in kinds:
                kind.pump(None, now)
            await asyncio.sleep(0.001)

    async def reporter():
        k = 1
        while not stop.is_set():
            at = T0 + k * EVERY
            if at > LAST + 0.5:
                break
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, at - time.time()))
            except asyncio.TimeoutError:
                pass
            line = {"k": k, "t": round(time.time() - T0, 3), "loop": LOOP, "kinds": {}}
            for kind in kinds:
                line["kinds"][kind.name] = kind.iv.dump()
                kind.iv = Interval()
            OUT.write(json.dumps(line) + "\n")
            k += 1
        await asyncio.wait([asyncio.ensure_future(stop.wait())], timeout=max(0.0, END - time.time()))
        stop.set()

    await asyncio.gather(ticker(), reporter())


# ----------------------------------------------------------------------------------- slow --
class SlowStats:
    def __init__(self):
        self.reset()
        self.slow_open = self.idle_open = 0

    def reset(self):
        self.slow_cut = self.idle_cut = self.conn_err = self.idle_close_after_response = 0
        self.slow_life = []
        self.idle_life = []
        self.slow_answered = {}


ST = SlowStats()


async def connect(port):
    while time.time() < END:
        try:
            return await asyncio.open_connection(HOST, port)
        except OSError:
            ST.conn_err += 1
            await asyncio.sleep(0.2 + random.random() * 0.3)
    return None


async def slowloris(i, port, drip):
    """Send a request line and then one header byte every `drip` seconds, never ending the
    header; when the gateway cuts the connection, count it and start again."""
    await asyncio.sleep(random.random() * drip)
    while time.time() < END:
        rw = await connect(port)
        if rw is None:
            return
        r, w = rw
        opened = time.monotonic()
        ST.slow_open += 1
        reading = asyncio.ensure_future(r.read(4096))
        answered = None
        try:
            w.write(b"GET /slow/%d HTTP/1.1\r\nHost: soak\r\nX-Drip: " % i)
            while time.time() < END:
                done, _ = await asyncio.wait({reading}, timeout=drip)
                if done:
                    data = reading.result()
                    if data:  # an answer (408/400) before the close
                        answered = data[9:12].decode("latin-1", "replace")
                    break
                w.write(b"a")
                await w.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            ST.slow_open -= 1
            if not reading.done():
                reading.cancel()
            elif not reading.cancelled():
                reading.exception()  # retrieved: no "never retrieved" warning
            w.close()
        if time.time() < END:
            ST.slow_cut += 1
            ST.slow_life.append(time.monotonic() - opened)
            if answered:
                ST.slow_answered[answered] = ST.slow_answered.get(answered, 0) + 1
            await asyncio.sleep(0.05 + random.random() * 0.1)


async def idle_keepalive(i, port):
    """One complete request, then nothing: the gateway closes it after keepalive_timeout."""
    await asyncio.sleep(random.random() * 2)
    while time.time() < END:
        rw = await connect(port)
        if rw is None:
            return
        r, w = rw
        ST.idle_open += 1
        idle_since, closed_by_answer = None, False
        try:
            w.write(b"GET /idle/%d HTTP/1.1\r\nHost: soak\r\n\r\n" % i)
            head = (await r.readuntil(b"\r\n\r\n")).lower()
            n = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    n = int(line.split(b":", 1)[1])
            await r.readexactly(n)
            idle_since = time.monotonic()
            if b"connection: close" in head:  # e.g. a 502 while the upstream is down
                closed_by_answer = True
            else:
                await r.read(1)  # b"" at the gateway's close
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            ST.idle_open -= 1
            w.close()
        if time.time() < END:
            if closed_by_answer:
                ST.idle_close_after_response += 1
                await asyncio.sleep(1 + random.random())
                continue
            ST.idle_cut += 1
            if idle_since is not None:
                ST.idle_life.append(time.monotonic() - idle_since)
            await asyncio.sleep(0.05 + random.random() * 0.1)


async def slow():
    await asyncio.sleep(max(0.0, T0 - time.time()))
    tasks = []
    ports = spec["slow_ports"]
    for i in range(spec["slow_conns"]):
        tasks.append(asyncio.ensure_future(slowloris(i, ports[i % len(ports)], spec["drip"])))
    iports = spec["idle_ports"]
    for i in range(spec["idle_conns"]):
        tasks.append(asyncio.ensure_future(idle_keepalive(i, iports[i % len(iports)])))
    stop = asyncio.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(s, stop.set)
    k = 1
    while not stop.is_set():
        at = T0 + k * EVERY
        if at > LAST + 0.5:
            break
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, at - time.time()))
        except asyncio.TimeoutError:
            pass
        sl, il = ST.slow_life, ST.idle_life
        OUT.write(json.dumps({
            "k": k, "t": round(time.time() - T0, 3),
            "slow_open": ST.slow_open, "slow_cut": ST.slow_cut,
            "slow_life_mean": round(sum(sl) / len(sl), 2) if sl else None,
            "slow_life_max": round(max(sl), 2) if sl else None,
            "slow_answered": ST.slow_answered,
            "idle_open": ST.idle_open, "idle_cut": ST.idle_cut,
            "idle_life_mean": round(sum(il) / len(il), 2) if il else None,
            "idle_life_max": round(max(il), 2) if il else None,
            "idle_close_after_response": ST.idle_close_after_response,
            "conn_err": ST.conn_err}) + "\n")
        ST.reset()
        k += 1
    if not stop.is_set():
        await asyncio.wait([asyncio.ensure_future(stop.wait())], timeout=max(0.0, END - time.time()))
    for t in tasks:
        t.cancel()


asyncio.run(load() if mode == "load" else slow())
SOAKPY

cat >"$TMP/report.py" <<'REPORTPY'
# report.py TMP RESULTS: the soak's markdown report (and the summary on stdout).
import json, os, re, sys
from collections import Counter

tmp, results = sys.argv[1], sys.argv[2]
P = json.load(open(os.path.join(tmp, "params.json")))


def jsonl(name):
    path = os.path.join(tmp, name)
    out = {}
    if os.path.exists(path):
        for line in open(path):
            try:
                d = json.loads(line)
                out[d["k"]] = d
            except (ValueError, KeyError):
                pass
    return out


samples = []
for line in list(open(os.path.join(tmp, "samples.tsv")))[1:]:
    k, t, rss, hwm, fds, thr, jif, busy, total = line.rstrip("\n").split("\t")
    samples.append({"k": int(k), "t": float(t), "rss": int(rss) / 1024, "hwm": int(hwm) / 1024,
                    "fds": int(fds), "threads": int(thr), "jif": int(jif), "busy": int(busy), "total": int(total)})
load, slow = jsonl("load.jsonl"), jsonl("slow.jsonl")
events = [l.rstrip("\n").split("\t", 1) for l in open(os.path.join(tmp, "events.tsv")) if l.strip()]

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"')


def prom(name):
    path = os.path.join(tmp, "metrics", name)
    m = {}
    if os.path.exists(path):
        for line in open(path):
            x = LINE.match(line)
            if x and not line.startswith("#"):
                labels = tuple(sorted(LABEL.findall(x.group(2) or "")))
                try:
                    m[(x.group(1), labels)] = float(x.group(3))
                except ValueError:
                    pass
    return m


metrics = {s["k"]: prom("%d.prom" % s["k"]) for s in samples}
final = prom("final.prom")


def msum(m, name, **want):
    return sum(v for (n, labels), v in m.items()
               if n == name and all(dict(labels).get(k) == w for k, w in want.items()))


def msum_class(m, name, listener, cls):
    return sum(v for (n, labels), v in m.items() if n == name and dict(labels).get("listener") == listener
               and dict(labels).get("status", "").startswith(cls))


def fit(points):  # least squares: slope (per hour) of (t_s, mib)
    n = len(points)
    if n < 2:
        return None
    mt = sum(t for t, _ in points) / n
    mr = sum(r for _, r in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    return sum((t - mt) * (r - mr) for t, r in points) / var * 3600


warm = [s for s in samples if s["t"] >= P["warmup_s"] - 0.5] or samples[-1:]
base = warm[0]
last = samples[-1]
slope_warm = fit([(s["t"], s["rss"]) for s in warm])
slope_all = fit([(s["t"], s["rss"]) for s in samples])
drift = (last["rss"] - base["rss"]) / base["rss"] * 100 if base["rss"] else float("nan")
window_h = (last["t"] - base["t"]) / 3600
fitted_rise = (slope_warm or 0) * window_h / base["rss"] * 100 if base["rss"] else float("nan")
max_dev = max(abs(s["rss"] - base["rss"]) / base["rss"] * 100 for s in warm) if base["rss"] else float("nan")
flat = P["flat_pct"]
reasons = []
if P["gw_died"]:
    reasons.append("the gateway died")
if not drift <= flat:
    reasons.append("drift %+.1f%% > %g%%" % (drift, flat))
if not fitted_rise <= flat:
    reasons.append("fitted rise %+.1f%% over the window > %g%%" % (fitted_rise, flat))
if len(warm) < 2:
    reasons.append("fewer than 2 samples after warm-up")
verdict = "PASS" if not reasons else "FAIL"
open(os.path.join(tmp, "verdict.rc"), "w").write("0\n" if verdict == "PASS" else "2\n")


def f1(x):
    return "-" if x is None else "%.1f" % x


def ms(us):
    return "-" if us is None else ("%.2f" % (us / 1000))


# per-sample rows
KINDS = ("proxy", "mcp", "mirror")
rows = []
tot = {k: Counter() for k in KINDS}
worst = {k: 0.0 for k in KINDS}
slow_tot = Counter()
slow_life_max = idle_life_max = 0.0
answered = Counter()
prev_m = metrics.get(0, {})
prev_s = None
ev_by_k = {}
for t, what in events:
    k = int(float(t) // P["every_s"]) + 1
    ev_by_k.setdefault(k, []).append(what)
for s in samples:
    k = s["k"]
    m = metrics.get(k, {})
    L = load.get(k, {}).get("kinds", {})
    S = slow.get(k, {})
    for kind in KINDS:
        d = L.get(kind)
        if d:
            for f in ("sent", "2xx", "4xx", "5xx", "err", "tool_err", "skipped", "late", "reconnects", "conn_err"):
                tot[kind][f] += d.get(f) or 0
            worst[kind] = max(worst[kind], d.get("max_us") or 0)
    for f in ("slow_cut", "idle_cut", "conn_err", "idle_close_after_response"):
        slow_tot[f] += S.get(f) or 0
    slow_life_max = max(slow_life_max, S.get("slow_life_max") or 0)
    idle_life_max = max(idle_life_max, S.get("idle_life_max") or 0)
    answered.update(S.get("slow_answered") or {})

    def gw(listener, cls):
        if not m or not prev_m:
            return "-"
        return "%d" % (msum_class(m, "stoa_requests_total", listener, cls) - msum_class(prev_m, "stoa_requests_total", listener, cls))

    def d_(name, **want):
        if not m or not prev_m:
            return "-"
        return "%d" % (msum(m, name, **want) - msum(prev_m, name, **want))

    def cl(kind):
        d = L.get(kind)
        if not d:
            return "-"
        extra = "/%d" % d["tool_err"] if kind == "mcp" else ""
        return "%d/%d/%d%s" % (d["2xx"], d["5xx"] + d["4xx"], d["err"] + d["skipped"], extra)

    sent = sum((L.get(x) or {}).get("sent", 0) for x in KINDS)
    lt_prev = load.get(k - 1, {}).get("t", 0.0) if k > 1 else 0.0
    interval = (load[k]["t"] - lt_prev) if k in load else 0
    pv = prev_s or s
    dt = s["t"] - pv["t"]
    if prev_s and dt > 1.2 * P["every_s"]:
        ev_by_k.setdefault(k, []).append("sample %.0f s late (the whole machine stalled?)" % (dt - P["every_s"]))
    gcpu = "%.0f" % ((s["jif"] - pv["jif"]) / P["clk_tck"] / dt * 100) if dt > 0 else "-"
    lcpu = "%.0f" % ((s["busy"] - pv["busy"]) * 100 / (s["total"] - pv["total"])) if s["total"] > pv["total"] else "-"
    prev_s = s
    row = {
        "t": "%d:%02d" % (int(s["t"]) // 60, int(s["t"]) % 60),
        "rss": "%.1f" % s["rss"],
        "dev": "%+.1f%%" % ((s["rss"] - base["rss"]) / base["rss"] * 100) if base["rss"] else "-",
        "fds": s["fds"], "thr": s["threads"],
        "conns": "%d" % msum(m, "stoa_downstream_connections") if m else "-",
        "cpu": "%s/%s" % (gcpu, lcpu),
        "rps": "%.0f" % (sent / interval) if interval > 0 and L else "-",
        "proxy": cl("proxy"), "mcp": cl("mcp"), "mirror": cl("mirror"),
        "p99": "/".join(ms((L.get(x) or {}).get("p99_us")) for x in KINDS) if L else "-",
        "gw": "%s/%s/%s" % (gw("proxy", "2"), gw("mcp", "2"), gw("mirror", "2")),
        "gw5": "%s/%s/%s" % (gw("proxy", "5"), gw("mcp", "5"), gw("mirror", "5")),
        "copies": "%s/%s" % (d_("mcp_shadow_requests_total", status="ok"), d_("mcp_shadow_skipped_total")),
        "hto": d_("stoa_downstream_connections_closed_total", reason="header_timeout"),
        "slow": "%s/%s" % (S.get("slow_cut", "-"), S.get("idle_cut", "-")) if S else "-",
        "ev": "; ".join(ev_by_k.get(k, [])),
    }
    rows.append(row)
    if m:
        prev_m = m

rss = [s["rss"] for s in samples]
fm = final or (metrics.get(samples[-1]["k"]) if samples else {}) or {}
gw_tot = {(l, c): msum_class(fm, "stoa_requests_total", l, c) for l in KINDS for c in ("2", "4", "5", "0")}
copies = {st: msum(fm, "mcp_shadow_requests_total", status=st) for st in ("ok", "error", "timeout")}
matches = {r: msum(fm, "mcp_shadow_match_total", result=r) for r in ("match", "mismatch")}
skipped = Counter()
for (n, labels), v in fm.items():
    if n == "mcp_shadow_skipped_total":
        skipped[dict(labels).get("reason", "?")] += v
hto_total = msum(fm, "stoa_downstream_connections_closed_total", reason="header_timeout")
maxconn_total = msum(fm, "stoa_downstream_connections_closed_total", reason="max_connections")
tool_calls = Counter()
for (n, labels), v in fm.items():
    if n == "mcp_requests_total" and dict(labels).get("method") == "tools/call":
        tool_calls[dict(labels).get("status", "?")] += v

# the gateway's log
glog = os.path.join(tmp, "gw.log")
levels, msgs, panics, nlines = Counter(), Counter(), 0, 0
# (a regex, not json.loads: an hour with a restarting upstream is millions of WARN lines)
JLEVEL = re.compile(r'"level":"(WARN|ERROR)","message":"((?:[^"\\]|\\.)*)"')
PLEVEL = re.compile(r'\b(WARN|ERROR)\b\s*(.*)')
if os.path.exists(glog):
    for line in open(glog, errors="replace"):
        nlines += 1
        if "panicked" in line:
            panics += 1
        x = JLEVEL.search(line) or PLEVEL.search(line)
        if x:
            lv, msg = x.group(1), x.group(2)
            levels[lv] += 1
            msgs["%s %s" % (lv, re.sub(r'\d+', 'N', msg)[:150])] += 1

# oha figures (GEN=oha)
oha = {}
for kind in KINDS:
    path = os.path.join(tmp, "oha-%s.json" % kind)
    if os.path.exists(path):
        try:
            d = json.load(open(path))
            codes = d.get("statusCodeDistribution") or {}
            errs = {e: n for e, n in (d.get("errorDistribution") or {}).items() if "aborted due to deadline" not in e}
            oha[kind] = "%.0f req/s, p50 %.2f ms, p99 %.2f ms, codes %s, errors %s" % (
                d["summary"]["requestsPerSec"], d["latencyPercentiles"]["p50"] * 1e3,
                d["latencyPercentiles"]["p99"] * 1e3, dict(codes), errs or "none")
        except (ValueError, KeyError, TypeError):
            oha[kind] = "unreadable"

sent_total = sum(tot[k]["sent"] for k in KINDS)
achieved = sent_total / P["duration_s"] if P["duration_s"] else 0
cap = P["capacity"]

out = []
w = out.append
w("# Soak benchmark")
w("")
w("Generated by `benches/soak.sh` on %s (git %s), binary `%s`." % (P["date"], P["git"], os.path.relpath(P["stoa_bin"]) if P["stoa_bin"].startswith("/") else P["stoa_bin"]))
w("")
w("**%s** — RSS flat within %g%%: drift %+.1f%% (last sample vs. the first after the %ds warm-up), fitted rise %+.1f%% over the window (slope %s MiB/hour)%s." % (
    verdict, flat, drift, P["warmup_s"], fitted_rise, f1(slope_warm), "; " + ", ".join(reasons) if reasons else ""))
w("")
w("## Setup")
w("")
w("- Machine: %s CPUs, %s; gateway pinned to CPU %s (threads: 1); nginx (2 instances, 1 worker each), the load generator and the slow clients on CPU %s" % (P["cpus"], P["cpu_model"], P["proxy_cpu"], P["load_cpu"]))
w("- Gateway: one process, three listeners — `proxy` (router → nginx \"ok\\n\"), `mcp` (`mcp` filter, tool `get_user` → nginx `/users/{id}` JSON), `mirror` (router → nginx JSON order + `mirror` filter, percent 100, max_concurrency 256, to a candidate answering the same order with its keys reversed and a later timestamp); `header_read_timeout: %s`, `keepalive_timeout: %s` (full config below)" % (P["header_read_timeout"], P["keepalive_timeout"]))
if cap:
    w("- Capacity: **%s req/s** (`wrk -t1 -c%d -d%s` on the proxied route, after a 2 s warm-up); offered during the soak: **%d req/s** (%s of it)" % (cap, P["cap_connections"], P["cap_duration"], P["rate"], P["cap_fraction"]))
else:
    w("- Capacity: not measured (RATE given); offered: **%d req/s**" % P["rate"])
w("- Mix: proxy GET %.0f req/s (%d conns), MCP `tools/call` %.0f req/s (%d conns, one session), mirrored GET %.0f req/s (%d conns); open loop at a fixed rate (%s)" % (
    P["rates"]["proxy"], P["conns"]["proxy"], P["rates"]["mcp"], P["conns"]["mcp"], P["rates"]["mirror"], P["conns"]["mirror"],
    "the embedded Python generator, %s" % (next(iter(load.values()), {}).get("loop", "?")) if P["gen"] == "python" else "oha -q per kind"))
if P["gen"] == "python":
    share = achieved / P["rate"] * 100 if P["rate"] else 0
    w("- Achieved: %.0f req/s sent on average (%.1f%% of offered)%s" % (achieved, share, "" if share >= 95 else
      " — **the generator fell behind** (CPU %s saturated? see the cpu column; uvloop helps)" % P["load_cpu"]))
w("- Slow clients throughout: %d slowloris connections (one header byte every %s, never finishing the header) over the three listeners, %d idle keep-alive connections (proxy and mirror listeners), all reconnecting when cut" % (P["slow_conns"], P["slow_drip"], P["idle_conns"]))
if P["restart_every_s"]:
    w("- Restarting upstream: the nginx serving the proxied route and the MCP tool's backend stopped every %ds for %ds (%d restarts)" % (P["restart_every_s"], P["restart_down_s"], P["restarts"]))
w("- Duration %ds, a sample every %ds, warm-up %ds (samples before it are not used for drift and slope)" % (P["duration_s"], P["every_s"], P["warmup_s"]))
w("")
w("## RSS")
w("")
w("| | MiB |")
w("|---|---|")
w("| first sample (start of the soak, after the capacity run) | %.1f |" % samples[0]["rss"])
w("| first after warm-up (t = %ds) | %.1f |" % (base["t"], base["rss"]))
w("| last | %.1f |" % last["rss"])
w("| min / max (all samples) | %.1f / %.1f |" % (min(rss), max(rss)))
w("| min / max (after warm-up) | %.1f / %.1f |" % (min(s["rss"] for s in warm), max(s["rss"] for s in warm)))
w("| peak (VmHWM) | %.1f |" % last["hwm"])
w("| after the load stopped (slow clients gone too) | %s |" % (f1(int(P["rss_end_kb"]) / 1024) if P["rss_end_kb"] else "-"))
w("| least-squares slope after warm-up / over all samples | %s / %s MiB/hour |" % (f1(slope_warm), f1(slope_all)))
w("| drift (last vs. first after warm-up) | %+.1f%% |" % drift)
w("| largest deviation from the first after warm-up | %.1f%% |" % max_dev)
w("| open fds first / last, threads first / last | %d / %d, %d / %d |" % (samples[0]["fds"], last["fds"], samples[0]["threads"], last["threads"]))
w("")
w("## Samples")
w("")
w("Per interval ending at t. conns: client connections open at the gateway; cpu: the gateway's CPU (% of one core) and LOAD_CPU's busy share (generator, slow clients, nginx). Client columns (generator): `2xx/4xx+5xx/errors+skipped` (MCP: `/tool errors` in 200 answers); p99 in ms (proxy/mcp/mirror, from the send). Gateway columns (admin `/metrics` deltas): 2xx and 5xx by listener (proxy/mcp/mirror), mirror copies sent ok / skipped, header-timeout closes. slow: slowloris / idle connections cut.")
w("")
w("| t | RSS MiB | vs warm | fds | thr | conns | cpu % gw/load | req/s | proxy | mcp | mirror | p99 ms | gw 2xx | gw 5xx | copies | hdr-timeouts | slow cut | events |")
w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    w("| %(t)s | %(rss)s | %(dev)s | %(fds)s | %(thr)s | %(conns)s | %(cpu)s | %(rps)s | %(proxy)s | %(mcp)s | %(mirror)s | %(p99)s | %(gw)s | %(gw5)s | %(copies)s | %(hto)s | %(slow)s | %(ev)s |" % r)
w("")
w("## Totals")
w("")
if P["gen"] == "python":
    w("| client | sent | 2xx | 4xx | 5xx | transport errors | skipped (>1 s behind) | sent >10 ms late | reconnects | connect errors | worst latency |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind in KINDS:
        t = tot[kind]
        w("| %s | %d | %d%s | %d | %d | %d | %d | %d | %d | %d | %s ms |" % (
            kind, t["sent"], t["2xx"], " (%d tool errors)" % t["tool_err"] if kind == "mcp" else "", t["4xx"], t["5xx"],
            t["err"], t["skipped"], t["late"], t["reconnects"], t["conn_err"], ms(worst[kind])))
    w("")
for kind, line in oha.items():
    w("- oha %s: %s" % (kind, line))
w("- Gateway `stoa_requests_total` by listener (2xx / 4xx / 5xx): " + ", ".join(
    "%s %d / %d / %d" % (l, gw_tot[(l, "2")], gw_tot[(l, "4")], gw_tot[(l, "5")]) for l in KINDS))
w("- MCP `tools/call` by status: %s" % (", ".join("%s %d" % kv for kv in sorted(tool_calls.items())) or "-"))
w("- Mirror copies: ok %d, error %d, timeout %d; compared: match %d, mismatch %d; skipped: %s" % (
    copies["ok"], copies["error"], copies["timeout"], matches["match"], matches["mismatch"],
    ", ".join("%s %d" % kv for kv in sorted(skipped.items())) or "none"))
w("- Slow clients: slowloris cut %d times (longest life %.1f s; answered before the close: %s), idle keep-alive cut %d times (longest idle %.1f s; closed right after an answer with `connection: close`, not counted as cuts: %d), connect errors %d; gateway header-timeout closes %d, max_connections refusals %d" % (
    slow_tot["slow_cut"], slow_life_max, dict(answered) or "never", slow_tot["idle_cut"], idle_life_max, slow_tot["idle_close_after_response"], slow_tot["conn_err"], hto_total, maxconn_total))
w("- Gateway log: %d lines, %d WARN, %d ERROR, %d panics%s" % (nlines, levels["WARN"], levels["ERROR"], panics, "; most frequent:" if msgs else ""))
for msg, n in msgs.most_common(5):
    w("  - %d× `%s`" % (n, msg.replace("`", "'")))
if events:
    w("- Events: " + "; ".join("%ss %s" % (t, e) for t, e in events))
w("")
w("<details><summary>gateway config</summary>")
w("")
w("```yaml")
w(open(os.path.join(tmp, "stoa-soak.yaml")).read().rstrip())
w("```")
w("")
w("</details>")
open(results, "w").write("\n".join(out) + "\n")

# stdout summary
print("soak: %s  (RSS flat within %g%%)" % (verdict, flat) + ("  -- " + ", ".join(reasons) if reasons else ""))
print("  capacity %s req/s; offered %d req/s (proxy %.0f, mcp %.0f, mirror %.0f); achieved %s req/s" % (
    cap or "-", P["rate"], P["rates"]["proxy"], P["rates"]["mcp"], P["rates"]["mirror"],
    "%.0f" % achieved if P["gen"] == "python" else "(oha, below)"))
for kind, line in oha.items():
    print("  oha %s: %s" % (kind, line))
print("  RSS MiB: first %.1f, first after warm-up %.1f (t=%ds), last %.1f, min %.1f, max %.1f" % (
    samples[0]["rss"], base["rss"], base["t"], last["rss"], min(rss), max(rss)))
print("  slope %s MiB/hour after warm-up (%s over all), drift %+.1f%%, fitted rise %+.1f%%" % (f1(slope_warm), f1(slope_all), drift, fitted_rise))
for i in range(0, len(rows), 10):
    print("  %s %s" % ("RSS (t MiB):" if i == 0 else "            ", "  ".join("%s %s" % (r["t"], r["rss"]) for r in rows[i:i + 10])))
if P["gen"] == "python":
    for kind in KINDS:
        t = tot[kind]
        print("  %-6s sent %d, 2xx %d, 4xx %d, 5xx %d, errors %d, skipped %d%s" % (
            kind, t["sent"], t["2xx"], t["4xx"], t["5xx"], t["err"], t["skipped"], ", tool errors %d" % t["tool_err"] if kind == "mcp" else ""))
print("  slow clients: slowloris cut %d (longest %.1f s), idle cut %d (longest %.1f s); header-timeout closes %d" % (
    slow_tot["slow_cut"], slow_life_max, slow_tot["idle_cut"], idle_life_max, hto_total))
print("  mirror copies ok %d, error %d, timeout %d, skipped %d; restarts %d; gateway log %d WARN, %d ERROR, %d panics%s" % (
    copies["ok"], copies["error"], copies["timeout"], sum(skipped.values()), P["restarts"], levels["WARN"], levels["ERROR"], panics,
    "; GATEWAY DIED" if P["gw_died"] else ""))
REPORTPY

CALL_LEN="${#CALL}"
T0_US=$(( $(now_us) + 3000000 ))   # the soak starts in 3 s: time for the helpers to connect
END_US=$(( T0_US + DURATION_S * 1000000 ))
T0="$(awk -v u="$T0_US" 'BEGIN { printf "%.6f", u / 1e6 }')"

LOAD_SPEC="$(python3 - <<PY
import json
call = '$CALL'
mcp = ("POST /mcp HTTP/1.1\r\nHost: soak\r\ncontent-type: application/json\r\n"
       "accept: application/json, text/event-stream\r\nmcp-session-id: $SID\r\n"
       "content-length: %d\r\n\r\n%s" % (len(call), call))
print(json.dumps({"t0": $T0, "every": $EVERY_S, "duration": $DURATION_S, "out": "$TMP/load.jsonl",
  "kinds": [
    {"name": "proxy", "port": $GW_PROXY, "rate": $R_PROXY, "conns": $C_PROXY,
     "request": "GET / HTTP/1.1\r\nHost: soak\r\n\r\n"},
    {"name": "mcp", "port": $GW_MCP, "rate": $R_MCP, "conns": $C_MCP, "tool": True, "request": mcp},
    {"name": "mirror", "port": $GW_MIRROR, "rate": $R_MIRROR, "conns": $C_MIRROR,
     "request": "GET /order HTTP/1.1\r\nHost: soak\r\n\r\n"}]}))
PY
)"
SLOW_SPEC="$(python3 -c 'import json, sys; a = sys.argv[1:]; print(json.dumps({"t0": float(a[0]), "every": int(a[1]), "duration": int(a[2]),
  "out": a[3], "slow_conns": int(a[4]), "drip": int(a[5]) / 1000, "idle_conns": int(a[6]),
  "slow_ports": [int(a[7]), int(a[8]), int(a[9])], "idle_ports": [int(a[7]), int(a[9])]}))' \
  "$T0" "$EVERY_S" "$DURATION_S" "$TMP/slow.jsonl" "$SLOW_CONNS" "$DRIP_MS" "$IDLE_CONNS" "$GW_PROXY" "$GW_MCP" "$GW_MIRROR")"

taskset -c "$LOAD_CPU" python3 "$TMP/soak.py" slow "$SLOW_SPEC" >"$TMP/slow.log" 2>&1 &
SLOW_PID=$!; PIDS+=("$SLOW_PID")
OHA_PIDS=()
if [ "$GEN" = python ]; then
  taskset -c "$LOAD_CPU" python3 "$TMP/soak.py" load "$LOAD_SPEC" >"$TMP/load.log" 2>&1 &
  LOAD_PID=$!; PIDS+=("$LOAD_PID")
else
  # oha starts at once: wait for T0 first, in the background.
  oha_kind() { # oha_kind NAME RATE CONNS oha-args...
    local name="$1" rate="$2" conns="$3"; shift 3
    awk -v r="$rate" 'BEGIN { exit !(r > 0) }' || return 0
    ( sleep_until_us "$T0_US"
      exec taskset -c "$LOAD_CPU" "$OHA" -z "${DURATION_S}s" -c "$conns" -q "$rate" --latency-correction \
        --no-tui --output-format json "$@" >"$TMP/oha-$name.json" 2>"$TMP/oha-$name.err" ) &
    OHA_PIDS+=($!); PIDS+=($!)
  }
  oha_kind proxy "$R_PROXY" "$C_PROXY" "http://127.0.0.1:$GW_PROXY/"
  oha_kind mcp "$R_MCP" "$C_MCP" -m POST "${MCP_H[@]}" -H "mcp-session-id: $SID" -d "$CALL" "http://127.0.0.1:$GW_MCP/mcp"
  oha_kind mirror "$R_MIRROR" "$C_MIRROR" "http://127.0.0.1:$GW_MIRROR/order"
fi

# ----------------------------------------------------------------- the soak --
N_SAMPLES=$((DURATION_S / EVERY_S))
printf 'k\tt\trss_kb\thwm_kb\tfds\tthreads\tgw_jiffies\tload_cpu_busy\tload_cpu_total\n' >"$TMP/samples.tsv"
: >"$TMP/events.tsv"
mkdir -p "$TMP/metrics"
sample() { # sample K
  local k="$1" t rss hwm fds thr jif cpu
  t="$(awk -v n="$(now_us)" -v z="$T0_US" 'BEGIN { printf "%.1f", (n - z) / 1e6 }')"
  rss="$(vm_kb "$GW_PID" VmRSS)"; hwm="$(vm_kb "$GW_PID" VmHWM)"; thr="$(vm_kb "$GW_PID" Threads)"
  fds="$(ls /proc/"$GW_PID"/fd 2>/dev/null | wc -l)"
  # CPU: the gateway's utime + stime (jiffies), and LOAD_CPU's busy / total jiffies
  jif="$(sed 's/^.*) //' /proc/"$GW_PID"/stat 2>/dev/null | awk '{ print $12 + $13 }')"
  cpu="$(awk -v c="cpu$LOAD_CPU" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9 "\t" $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)"
  curl -s --max-time 5 "http://127.0.0.1:$ADMIN/metrics" >"$TMP/metrics/$k.prom" 2>/dev/null
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$k" "$t" "${rss:-0}" "${hwm:-0}" "$fds" "${thr:-0}" "${jif:-0}" "${cpu:-0	0}" >>"$TMP/samples.tsv"
  log "sample $k/$N_SAMPLES at ${t}s: RSS $(awk -v k="${rss:-0}" 'BEGIN { printf "%.1f", k / 1024 }') MiB, $fds fds, ${thr:-?} threads"
}
event() { # event TEXT
  printf '%s\t%s\n' "$(awk -v n="$(now_us)" -v z="$T0_US" 'BEGIN { printf "%.1f", (n - z) / 1e6 }')" "$*" >>"$TMP/events.tsv"
  log "$*"
}

log "soak: ${DURATION_S}s, a sample every ${EVERY_S}s, warm-up ${WARMUP_S}s; flaky upstream restarted every ${RESTART_EVERY_S}s (down ${RESTART_DOWN_S}s)"
sleep_until_us "$T0_US"
sample 0
K=1
NEXT_SAMPLE_US=$((T0_US + EVERY_S * 1000000))
NEXT_DOWN_US=0; NEXT_UP_US=0; RESTARTS=0
[ "$RESTART_EVERY_S" -gt 0 ] && NEXT_DOWN_US=$((T0_US + RESTART_EVERY_S * 1000000))
GW_DIED=0
while [ "$K" -le "$N_SAMPLES" ]; do
  next="$NEXT_SAMPLE_US"
  [ "$NEXT_DOWN_US" -gt 0 ] && [ "$NEXT_DOWN_US" -lt "$next" ] && next="$NEXT_DOWN_US"
  [ "$NEXT_UP_US" -gt 0 ] && [ "$NEXT_UP_US" -lt "$next" ] && next="$NEXT_UP_US"
  # wake at least every second to notice a dead gateway
  while [ "$(now_us)" -lt "$next" ]; do
    alive "$GW_PID" || break 2
    sleep_until_us "$(( $(now_us) + 1000000 < next ? $(now_us) + 1000000 : next ))"
  done
  now="$(now_us)"
  if [ "$now" -ge "$NEXT_SAMPLE_US" ]; then
    sample "$K"
    K=$((K + 1))
    NEXT_SAMPLE_US=$((T0_US + K * EVERY_S * 1000000))
  fi
  if [ "$NEXT_UP_US" -gt 0 ] && [ "$now" -ge "$NEXT_UP_US" ]; then
    start_nginx "$TMP/flaky"; FLAKY_PID="$LAST_PID"; NEXT_UP_US=0
    event "flaky upstream started again (pid $FLAKY_PID)"
  fi
  if [ "$NEXT_DOWN_US" -gt 0 ] && [ "$now" -ge "$NEXT_DOWN_US" ] && [ "$NEXT_DOWN_US" -lt "$END_US" ]; then
    stop_pid "$FLAKY_PID" TERM; forget_pid "$FLAKY_PID"; RESTARTS=$((RESTARTS + 1))
    event "flaky upstream stopped (restart $RESTARTS: proxy and MCP backend down for ${RESTART_DOWN_S}s)"
    NEXT_UP_US=$((NEXT_DOWN_US + RESTART_DOWN_S * 1000000))
    NEXT_DOWN_US=$((NEXT_DOWN_US + RESTART_EVERY_S * 1000000))
  elif [ "$NEXT_DOWN_US" -ge "$END_US" ]; then
    NEXT_DOWN_US=0
  fi
done
if ! alive "$GW_PID"; then
  GW_DIED=1
  wait "$GW_PID" 2>/dev/null; GW_RC=$?
  event "GATEWAY DIED (exit status $GW_RC)"
  log "gateway log tail:"; tail -20 "$TMP/gw.log" >&2
fi
[ "$NEXT_UP_US" -gt 0 ] && { start_nginx "$TMP/flaky"; FLAKY_PID="$LAST_PID"; }

# The Python helpers write their last interval on SIGINT and stop; oha ends by itself at -z.
for p in "${OHA_PIDS[@]}"; do
  for ((i = 0; i < 150; i++)); do alive "$p" || break; sleep 0.1; done
done
for p in ${LOAD_PID:-} "$SLOW_PID" "${OHA_PIDS[@]}"; do stop_pid "$p" INT; forget_pid "$p"; done
sleep 1
RSS_END_KB="$(vm_kb "$GW_PID" VmRSS)"
curl -s --max-time 5 "http://127.0.0.1:$ADMIN/metrics" >"$TMP/metrics/final.prom" 2>/dev/null

# ------------------------------------------------------------------ report --
python3 - >"$TMP/params.json" <<PY
import json
print(json.dumps({
  "stoa_bin": "$STOA_BIN", "git": "$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD 2>/dev/null || echo '+changes')",
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "cpus": "$(nproc)",
  "cpu_model": "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)",
  "duration_s": $DURATION_S, "every_s": $EVERY_S, "warmup_s": $WARMUP_S,
  "capacity": "${CAPACITY}", "cap_duration": "$CAP_DURATION", "cap_connections": $CAP_CONNECTIONS,
  "cap_fraction": "$CAP_FRACTION", "rate": $RATE,
  "rates": {"proxy": $R_PROXY, "mcp": $R_MCP, "mirror": $R_MIRROR},
  "conns": {"proxy": $C_PROXY, "mcp": $C_MCP, "mirror": $C_MIRROR},
  "gen": "$GEN", "slow_conns": $SLOW_CONNS, "slow_drip": "$SLOW_DRIP", "idle_conns": $IDLE_CONNS,
  "header_read_timeout": "$HEADER_READ_TIMEOUT", "keepalive_timeout": "$KEEPALIVE_TIMEOUT",
  "restart_every_s": $RESTART_EVERY_S, "restart_down_s": $RESTART_DOWN_S, "restarts": $RESTARTS,
  "flat_pct": $FLAT_PCT, "gw_died": $GW_DIED, "rss_end_kb": "${RSS_END_KB:-}",
  "proxy_cpu": "$PROXY_CPU", "load_cpu": "$LOAD_CPU", "clk_tck": $(getconf CLK_TCK), "tmp": "$TMP"}))
PY
mkdir -p "$(dirname "$RESULTS")"
python3 "$TMP/report.py" "$TMP" "$RESULTS" || die "report failed"
log "results written to $RESULTS"
exit "$(cat "$TMP/verdict.rc" 2>/dev/null || echo 1)"
}
