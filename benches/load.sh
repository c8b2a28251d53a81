#!/usr/bin/env bash
# Load benchmark: stoa-gateway vs a bare Pingora proxy vs nginx, all proxying
# to the same nginx upstream that returns a fixed "ok\n" body.
#
#   benches/load.sh                      # from the workspace root (or anywhere)
#   DURATION=3s benches/load.sh          # quicker run
#
# Layout (2-core machine): every proxy under test runs alone, one at a time,
# pinned to core 0 with one worker thread; the upstream nginx and wrk share
# core 1. Targets, in order:
#   direct   wrk -> upstream                    (upper bound of the rig)
#   nginx    wrk -> nginx (1 worker, keepalive upstream pool) -> upstream
#   bare     wrk -> target/dist/examples/bare_pingora -> upstream
#   stoa     wrk -> target/dist/stoa-gateway -c benches/stoa-bench.yaml -> upstream
#            (threads: 1, one router route, nothing else: same work as bare)
#   stoa-preset  wrk -> stoa-gateway --mode=proxy --port=P --upstream=URL
#            --admin-address A (the shipped preset: request_id + access_log to
#            stdout (sent to /dev/null here) + router)
#   stoa-secure  wrk -> stoa-gateway -c benches/stoa-secure.yaml: stoa's route
#            behind jwt (RS256, token cache on) + opa (embedded, the shipped
#            example policy) + a local rate_limit; every request carries the
#            same RS256 token (minted here with openssl). No RSS phase.
#   stoa-traced-1, stoa-traced-100  wrk -> stoa (the stoa config) with tracing
#            on, sampling 1% and 100% of new traces, exporting over OTLP/HTTP to
#            a real collector (rotel, blackhole exporter, on the load core).
#            No RSS phase; skipped when rotel is not installed.
# Reported per target: req/s, p50, p99, errors, the proxy's CPU share and its
# core's busy share (to spot a proxy that was not the bottleneck, or a run
# disturbed by other load), and for the proxies: start -> first proxied 200
# (ms, polled with curl) and RSS (idle; after RSS_REQUESTS requests over
# RSS_CONNECTIONS connections that are still open; peak; after they close).
# Then, per target, a fixed-rate latency phase: `oha` offers RATE req/s over
# CONNECTIONS connections (open loop, with latency correction, so a stall is
# charged to every request it delays) and reports p50/p99/p99.9 below
# saturation, where the proxy's own latency shows instead of wrk's queueing.
# Printed as tables and written as markdown to RESULTS.
#
# Needs: nginx (/usr/sbin/nginx), wrk, curl, taskset. Binaries are built with
#   cargo build --profile dist --bin stoa-gateway --example bare_pingora
# (or BUILD=1 to have this script do it). A missing or non-working binary is
# skipped with a message; the rest still runs.
#
# Environment (defaults in brackets):
#   DURATION [10s]  CONNECTIONS [50]  WRK_THREADS [1]  WARMUP [2s]
#   RUNS [3]  wrk runs per target; PICK [best]: report the run with the
#             highest req/s (other load on a shared machine only slows runs
#             down), or PICK=median
#   RSS_CONNECTIONS [1000]  RSS_REQUESTS [100000]  RSS_MAX_DURATION [120s]
#   STOA_BIN [target/dist/stoa-gateway]
#   BARE_BIN [target/dist/examples/bare_pingora]
#   NGINX [/usr/sbin/nginx]  TARGETS ["direct nginx bare stoa stoa-preset stoa-secure
#             stoa-traced-1 stoa-traced-100"]
#   STARTUP_TIMEOUT [10] seconds   BUILD [0]   KEEP_TMP [0]
#   PROXY_CPU [0]  LOAD_CPU [1]     RESULTS [benches/results/latest.md]
#   RATE [10000] req/s (0: no fixed-rate phase)  RATE_DURATION [8s]
#   OHA [oha on PATH, else target/tools/bin/oha]; when missing the phase is
#             skipped with a note (install: cargo install --locked oha --root target/tools)
set -u -o pipefail

# The whole script is one compound command, so bash parses it completely
# before running anything: editing this file during a run cannot corrupt it.
{

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-50}"
WRK_THREADS="${WRK_THREADS:-1}"
WARMUP="${WARMUP:-2s}"
RUNS="${RUNS:-3}"
PICK="${PICK:-best}"
RSS_CONNECTIONS="${RSS_CONNECTIONS:-1000}"
RSS_REQUESTS="${RSS_REQUESTS:-100000}"
RSS_MAX_DURATION="${RSS_MAX_DURATION:-120s}"
STOA_BIN="${STOA_BIN:-$ROOT/target/dist/stoa-gateway}"
BARE_BIN="${BARE_BIN:-$ROOT/target/dist/examples/bare_pingora}"
NGINX="${NGINX:-/usr/sbin/nginx}"
TARGETS="${TARGETS:-direct nginx bare stoa stoa-preset stoa-secure stoa-traced-1 stoa-traced-100}"
ALL_TARGETS="direct nginx bare stoa stoa-preset stoa-secure stoa-traced-1 stoa-traced-100"
STARTUP_TIMEOUT="${STARTUP_TIMEOUT:-10}"
BUILD="${BUILD:-0}"
KEEP_TMP="${KEEP_TMP:-0}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
RESULTS="${RESULTS:-$ROOT/benches/results/latest.md}"
RATE="${RATE:-10000}"
RATE_DURATION="${RATE_DURATION:-8s}"
OHA="${OHA:-$(command -v oha || echo "$ROOT/target/tools/bin/oha")}"

log() { printf '[load %(%T)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in "$NGINX" wrk curl taskset; do
  command -v "$tool" >/dev/null 2>&1 || die "missing tool: $tool"
done

# 1000 client connections + 1000 upstream connections per proxy.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((RSS_CONNECTIONS * 2 + 256)) ]; then
  log "warning: ulimit -n is $(ulimit -n); RSS phase with $RSS_CONNECTIONS connections may hit EMFILE"
fi

# One benchmark at a time on this machine: concurrent runs share the pinned
# cores and ruin each other's figures.
LOCK="${LOCK:-/tmp/stoa-load.lock}"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$LOCK"
  if ! flock -n 9; then
    log "another load.sh run holds $LOCK; waiting (up to 15 min)"
    flock -w 900 9 || die "still locked after 15 min"
  fi
fi

if [ "$BUILD" = 1 ]; then
  log "building (profile dist: fat LTO, slow)"
  cargo build --profile dist --bin stoa-gateway --example bare_pingora || die "cargo build failed"
fi

TMP="$(mktemp -d /tmp/stoa-load.XXXXXX)"
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

cleanup() {
  local p
  # SIGINT: fast shutdown for nginx and Pingora (Pingora's SIGTERM waits out a grace period)
  for p in "${PIDS[@]}"; do stop_pid "$p" INT; done
  if [ "$KEEP_TMP" = 1 ]; then log "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() {
  local p keep=()
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# Ports: random unused loopback ports below the kernel's ephemeral range (wrk's
# 1000 client sockets take ephemeral ports; a listener there could fail to bind).
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

now_ns() { date +%s%N; }

# wait_ok URL PID: poll until a 200 with body "ok"; prints ms since T0_NS.
# Returns 1 if the process died or STARTUP_TIMEOUT passed.
wait_ok() {
  local url="$1" pid="$2" deadline code i
  deadline=$(( $(now_ns) + STARTUP_TIMEOUT * 1000000000 ))
  for ((i = 0; i < 20000; i++)); do
    code="$(curl -s -o "$TMP/probe.body" -w '%{http_code}' --max-time 1 ${AUTH_HEADER:+-H "$AUTH_HEADER"} "$url" 2>/dev/null)"
    if [ "$code" = 200 ] && [ "$(cat "$TMP/probe.body")" = ok ]; then
      echo $(( ($(now_ns) - T0_NS) / 1000000 ))
      return 0
    fi
    alive "$pid" || return 1
    [ "$(now_ns)" -lt "$deadline" ] || return 1
    sleep 0.002
  done
  return 1
}

vmrss_kb() { awk '/^VmRSS:/ {print $2}' /proc/"$1"/status 2>/dev/null || echo 0; }
vmhwm_kb() { awk '/^VmHWM:/ {print $2}' /proc/"$1"/status 2>/dev/null || echo 0; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# -------------------------------------------------------------------- nginx --
nginx_conf() { # nginx_conf DIR SERVER_BLOCK [HTTP_EXTRA]
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
  ${3:-}
  server {
$2
  }
}
EOF
}

start_nginx() { # start_nginx DIR CPU -> sets LAST_PID
  local dir="$1" cpu="$2"
  "$NGINX" -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" \
    || die "nginx config test failed for $dir (see $dir/logs/error.log)"
  taskset -c "$cpu" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" \
    >"$dir/logs/stdout.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# ---------------------------------------------------------------------- wrk --
cat >"$TMP/limit.lua" <<'EOF'
-- After WRK_LIMIT responses: stop sending (connections stay open) and create
-- WRK_DONE_FILE, so load.sh can read the proxy's RSS, then SIGINT wrk (whose
-- main thread otherwise sleeps for the whole -d duration).
local limit = tonumber(os.getenv("WRK_LIMIT") or "100000")
local done_file = os.getenv("WRK_DONE_FILE")
local n = 0
function response(status, headers, body)
  n = n + 1
  if n == limit then
    if done_file then
      local f = io.open(done_file, "w")
      if f then f:write(n, "\n"); f:close() end
    end
    wrk.thread:stop()
  end
end
EOF

to_us() { # "123.4us" | "1.2ms" | "2.00s" -> microseconds
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.1f", v }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.1f", v * 1000 }
    else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.1f", v * 60e6 }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.1f", v * 1e6 }
    else printf "nan" }'
}
fmt_us() { awk -v u="$1" 'BEGIN { if (u == "nan" || u == "") print "-"; else if (u < 1000) printf "%.0fus", u; else printf "%.2fms", u / 1000 }'; }

declare -A ALLRUNS RATE_ROW RPS P50 P99 REQS ERRS PCPU BUSY EFF STARTUP RSS_IDLE RSS_PEAK RSS_OPEN RSS_AFTER RSS_HWM RSS_REQS NOTE

run_wrk() { # run_wrk OUTFILE CONNS DURATION URL [extra wrk args]
  local out="$1" c="$2" d="$3" url="$4"
  shift 4
  taskset -c "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$c" -d"$d" --latency ${AUTH_HEADER:+-H "$AUTH_HEADER"} "$@" "$url" >"$out" 2>&1
}

# CPU accounting on the proxy's core: the proxy's own share (user+system
# charged to it) and the core's total busy share (adds softirq work not
# charged to it, and anything else that ran there).
cpu_jiffies() { # cpu_jiffies CPU -> "busy total" (busy: all but idle and iowait)
  awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat
}
proc_jiffies() { # utime + stime of the whole process
  sed 's/^.*) //' /proc/"$1"/stat 2>/dev/null | awk '{ print $12 + $13 }' || echo 0
}

wrk_parse() { # wrk_parse FILE -> "rps p50us p99us requests errors"
  local f="$1" sock non2xx
  sock="$(awk -F'[ ,]+' '/Socket errors:/ { print $5 + $7 + $9 + $11 }' "$f")"
  non2xx="$(awk '/Non-2xx or 3xx responses:/ { print $5 }' "$f")"
  echo "$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$f")" \
    "$(to_us "$(awk '$1 == "50%" { print $2 }' "$f")")" \
    "$(to_us "$(awk '$1 == "99%" { print $2 }' "$f")")" \
    "$(awk '/requests in/ { print $1 }' "$f")" \
    "$(( ${sock:-0} + ${non2xx:-0} ))"
}

# rate_phase NAME URL: oha at RATE req/s -> RATE_ROW[NAME] = "achieved p50us p99us p999us non200"
rate_phase() {
  local name="$1" url="$2" out="$TMP/oha-$1.json"
  [ "$RATE" -gt 0 ] 2>/dev/null || return 0
  if [ ! -x "$OHA" ]; then
    NOTE[_global]="oha not found ($OHA): no fixed-rate latency phase (cargo install --locked oha --root target/tools). "
    return 0
  fi
  log "$name: fixed rate: oha -z $RATE_DURATION -c $CONNECTIONS -q $RATE $url"
  taskset -c "$LOAD_CPU" "$OHA" -z "$RATE_DURATION" -c "$CONNECTIONS" -q "$RATE" --latency-correction \
    --no-tui --output-format json ${AUTH_HEADER:+-H "$AUTH_HEADER"} "$url" >"$out" 2>"$out.err"
  RATE_ROW[$name]="$(python3 - "$out" <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution") or {}
# requests still in flight when -z ends are cancelled by oha itself: not failures
errors = {e: n for e, n in (d.get("errorDistribution") or {}).items() if "aborted due to deadline" not in e}
bad = sum(n for c, n in codes.items() if c != "200") + sum(errors.values())
print("%.0f %.0f %.0f %.0f %d" % (d["summary"]["requestsPerSec"], p["p50"] * 1e6, p["p99"] * 1e6, p["p99.9"] * 1e6, bad))
PY
)"
  [ -n "${RATE_ROW[$name]}" ] || { log "$name: oha produced no result:"; cat "$out.err" >&2; return 0; }
  log "$name: at $RATE req/s: ${RATE_ROW[$name]} (achieved p50us p99us p99.9us failed)"
}

measure() { # measure NAME URL [PROXY_PID]
  local name="$1" url="$2" ppid="${3:-}" run out results="" c0 c1 p0 p1 line
  log "$name: warmup $WARMUP"
  run_wrk "$TMP/wrk-$name-warmup.txt" "$CONNECTIONS" "$WARMUP" "$url"
  for ((run = 1; run <= RUNS; run++)); do
    out="$TMP/wrk-$name-$run.txt"
    log "$name: run $run/$RUNS: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION --latency $url"
    c0="$(cpu_jiffies "$PROXY_CPU")"; [ -n "$ppid" ] && p0="$(proc_jiffies "$ppid")"
    run_wrk "$out" "$CONNECTIONS" "$DURATION" "$url"
    c1="$(cpu_jiffies "$PROXY_CPU")"; [ -n "$ppid" ] && p1="$(proc_jiffies "$ppid")"
    line="$(wrk_parse "$out")"
    if [ -n "$ppid" ]; then
      # proxy CPU % of its core, and other (non-irq) busy % on that core
      line="$line $(awk -v a="$c0" -v b="$c1" -v p0="$p0" -v p1="$p1" 'BEGIN {
        split(a, x, " "); split(b, y, " "); t = y[2] - x[2]; if (t <= 0) t = 1
        printf "%.0f %.0f", (p1 - p0) * 100 / t, (y[1] - x[1]) * 100 / t }')"
    else
      line="$line - -"
    fi
    log "$name: run $run: $line (req/s p50us p99us requests errors proxy-cpu% cpu$PROXY_CPU-busy%)"
    [ -n "${line%% *}" ] || { log "$name: wrk produced no result:"; cat "$out" >&2; line="0 nan nan 0 0 - -"; }
    results+="$line"$'\n'
  done
  ALLRUNS[$name]="$results"
  if [ "$PICK" = median ]; then
    line="$(printf '%s' "$results" | sort -n -k1,1 | awk -v n="$RUNS" 'NR == int((n + 1) / 2)')"
  else
    line="$(printf '%s' "$results" | sort -n -r -k1,1 | head -1)"
  fi
  read -r RPS[$name] P50[$name] P99[$name] REQS[$name] ERRS[$name] PCPU[$name] BUSY[$name] <<<"$line"
  log "$name: ${RPS[$name]} req/s, p50 $(fmt_us "${P50[$name]}"), p99 $(fmt_us "${P99[$name]}"), errors ${ERRS[$name]}, proxy cpu ${PCPU[$name]}%, cpu $PROXY_CPU busy ${BUSY[$name]}%"
  rate_phase "$name" "$url"
}

rss_phase() { # rss_phase NAME PID URL
  local name="$1" pid="$2" url="$3" out="$TMP/wrk-$1-rss.txt" wpid peak=0 r i
  local done_file="$TMP/wrk-$1-rss.done"
  rm -f "$done_file"
  RSS_IDLE[$name]="$(vmrss_kb "$pid")"
  RSS_OPEN[$name]=""
  log "$name: RSS phase: $RSS_REQUESTS requests over $RSS_CONNECTIONS connections"
  WRK_LIMIT="$RSS_REQUESTS" WRK_DONE_FILE="$done_file" taskset -c "$LOAD_CPU" wrk -t1 -c"$RSS_CONNECTIONS" -d"$RSS_MAX_DURATION" \
    --timeout 10s -s "$TMP/limit.lua" "$url" >"$out" 2>&1 &
  wpid=$!
  PIDS+=("$wpid")
  for ((i = 0; i < 20000; i++)); do
    alive "$wpid" || break
    r="$(vmrss_kb "$pid")"
    [ "${r:-0}" -gt "$peak" ] && peak="$r"
    if [ -e "$done_file" ]; then
      sleep 0.2 # let in-flight responses drain; the connections stay open
      RSS_OPEN[$name]="$(vmrss_kb "$pid")"
      [ "${RSS_OPEN[$name]}" -gt "$peak" ] && peak="${RSS_OPEN[$name]}"
      break
    fi
    sleep 0.05
  done
  [ -e "$done_file" ] || NOTE[$name]="${NOTE[$name]:-}RSS run: wrk did not reach $RSS_REQUESTS responses within $RSS_MAX_DURATION. "
  stop_pid "$wpid" INT
  forget_pid "$wpid"
  sleep 0.5
  RSS_PEAK[$name]="$peak"
  RSS_AFTER[$name]="$(vmrss_kb "$pid")"
  RSS_HWM[$name]="$(vmhwm_kb "$pid")"
  RSS_REQS[$name]="$(awk '/requests in/ {print $1}' "$out")"
  if grep -q 'Socket errors' "$out"; then NOTE[$name]="${NOTE[$name]:-}RSS run: $(grep 'Socket errors' "$out" | sed 's/^ *//'). "; fi
  log "$name: RSS idle $(mib "${RSS_IDLE[$name]}") MiB, peak $(mib "$peak") MiB, at $RSS_REQUESTS with $RSS_CONNECTIONS conns open $(mib "${RSS_OPEN[$name]:-0}") MiB, after close $(mib "${RSS_AFTER[$name]}") MiB (${RSS_REQS[$name]:-?} requests)"
}

# ------------------------------------------------------------------ upstream --
UP_PORT="$(free_port)"
nginx_conf "$TMP/upstream" "    listen 127.0.0.1:$UP_PORT backlog=4096 reuseport;
    location / { default_type text/plain; return 200 \"ok\n\"; }"
start_nginx "$TMP/upstream" "$LOAD_CPU"
UP_PID="$LAST_PID"
T0_NS="$(now_ns)"
wait_ok "http://127.0.0.1:$UP_PORT/" "$UP_PID" >/dev/null \
  || die "upstream nginx did not come up: $(cat "$TMP/upstream/logs/"*.log)"
log "upstream nginx on 127.0.0.1:$UP_PORT (cpu $LOAD_CPU)"

# Is something else using the machine? (1 s sample of all CPUs, before any load)
IDLE_CHECK="$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)"
sleep 1
BUSY_BEFORE="$(awk -v a="$IDLE_CHECK" '$1 == "cpu" { split(a, x, " "); t = $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 - x[2]; if (t <= 0) t = 1;
  printf "%.0f", ($2 + $3 + $4 + $7 + $8 + $9 - x[1]) * 100 / t }' /proc/stat)"
if [ "${BUSY_BEFORE:-0}" -gt 10 ]; then
  log "warning: the machine was ${BUSY_BEFORE}% busy before the run (other work): results will be noisy"
  NOTE[_global]="the machine was ${BUSY_BEFORE}% busy (all CPUs, 1 s sample) before the run: other work competed, figures are noisy. "
fi

# run_proxy NAME: start, time to first 200, measure, optional RSS phase, stop.
target_direct() {
  measure direct "http://127.0.0.1:$UP_PORT/"
}

target_nginx() {
  local port pid
  port="$(free_port)"
  nginx_conf "$TMP/nginx" "    listen 127.0.0.1:$port backlog=4096 reuseport;
    location / {
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }" "upstream bench_upstream { server 127.0.0.1:$UP_PORT; keepalive 1024; keepalive_requests 1000000; }"
  T0_NS="$(now_ns)"
  start_nginx "$TMP/nginx" "$PROXY_CPU"
  pid="$LAST_PID"
  if STARTUP[nginx]="$(wait_ok "http://127.0.0.1:$port/" "$pid")"; then
    # CPU and memory of the single worker process (the master only supervises)
    local worker
    worker="$(children_of "$pid" | head -1)"
    measure nginx "http://127.0.0.1:$port/" "$worker"
    [ -n "$worker" ] && rss_phase nginx "$worker" "http://127.0.0.1:$port/"
  else
    log "nginx proxy did not come up; skipping"; cat "$TMP/nginx/logs/"*.log >&2
    NOTE[nginx]="did not start. "
  fi
  stop_pid "$pid" TERM
  forget_pid "$pid"
}

target_pingora() { # target_pingora NAME PORT LOGFILE CMD...  (STDOUT=file: stdout elsewhere)
  local name="$1" port="$2" logf="$3" pid
  shift 3
  T0_NS="$(now_ns)"
  if [ -n "${STDOUT:-}" ]; then
    taskset -c "$PROXY_CPU" "$@" >"$STDOUT" 2>"$logf" &
  else
    taskset -c "$PROXY_CPU" "$@" >"$logf" 2>&1 &
  fi
  pid=$!
  PIDS+=("$pid")
  if STARTUP[$name]="$(wait_ok "http://127.0.0.1:$port/" "$pid")"; then
    log "$name: first proxied 200 after ${STARTUP[$name]} ms (pid $pid, threads $(awk '/^Threads:/ {print $2}' /proc/"$pid"/status))"
    measure "$name" "http://127.0.0.1:$port/" "$pid"
    [ -n "${SKIP_RSS:-}" ] || rss_phase "$name" "$pid" "http://127.0.0.1:$port/"
    if ! alive "$pid"; then
      NOTE[$name]="${NOTE[$name]:-}process died during the run. "
      log "$name: process died; log tail:"; tail -20 "$logf" >&2
    fi
  else
    STARTUP[$name]=""
    log "$name: no proxied 200 within ${STARTUP_TIMEOUT}s; skipping. Command: $*"
    log "$name: log tail ($logf):"; tail -20 "$logf" >&2
    NOTE[$name]="did not serve a proxied 200 within ${STARTUP_TIMEOUT}s; skipped. "
  fi
  # SIGINT = Pingora fast shutdown (SIGTERM waits for the grace period).
  stop_pid "$pid" INT
  forget_pid "$pid"
}

target_bare() {
  if [ ! -x "$BARE_BIN" ]; then
    log "bare: $BARE_BIN not found; build it with: cargo build --profile dist --example bare_pingora. Skipping."
    NOTE[bare]="binary not built; skipped. "
    return
  fi
  local port
  port="$(free_port)"
  BARE_UPSTREAM="127.0.0.1:$UP_PORT" BARE_LISTEN="127.0.0.1:$port" \
    target_pingora bare "$port" "$TMP/bare.log" "$BARE_BIN"
}

STOA_VERSION=""
stoa_present() { # stoa_present NAME
  if [ ! -x "$STOA_BIN" ]; then
    log "$1: $STOA_BIN not found; build it with: cargo build --profile dist --bin stoa-gateway. Skipping."
    NOTE[$1]="binary not built; skipped. "
    return 1
  fi
  STOA_VERSION="$("$STOA_BIN" --version 2>/dev/null | head -1)"
}

# run_stoa_config NAME [EXTRA_YAML]: measure stoa on benches/stoa-bench.yaml (fresh ports and
# temp paths), with EXTRA_YAML (top-level sections) appended.
run_stoa_config() {
  local name="$1" extra="${2:-}" port admin
  port="$(free_port)"
  admin="$(free_port)"
  sed -e "s/127\.0\.0\.1:18080/127.0.0.1:$port/" \
      -e "s/127\.0\.0\.1:19901/127.0.0.1:$admin/" \
      -e "s/127\.0\.0\.1:19000/127.0.0.1:$UP_PORT/" \
      -e "s#/tmp/stoa-bench.pid#$TMP/$name.pid#" \
      -e "s#/tmp/stoa-bench-upgrade.sock#$TMP/$name-upgrade.sock#" \
      "$ROOT/benches/stoa-bench.yaml" >"$TMP/$name.yaml"
  [ -z "$extra" ] || printf '%s\n' "$extra" >>"$TMP/$name.yaml"
  target_pingora "$name" "$port" "$TMP/$name.log" "$STOA_BIN" -c "$TMP/$name.yaml"
}

target_stoa() {
  stoa_present stoa || return 0
  run_stoa_config stoa
}

target_stoa_preset() {
  stoa_present stoa-preset || return 0
  local port admin
  port="$(free_port)"
  admin="$(free_port)"
  # the preset's access log goes to stdout: discard it (the writes still happen)
  STDOUT=/dev/null target_pingora stoa-preset "$port" "$TMP/stoa-preset.log" "$STOA_BIN" \
    --mode=proxy --port="$port" --upstream="http://127.0.0.1:$UP_PORT" --admin-address "127.0.0.1:$admin"
}

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

target_stoa_secure() {
  stoa_present stoa-secure || return 0
  local port admin header payload signing
  port="$(free_port)"
  admin="$(free_port)"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/bench-key.pem" 2>/dev/null
  openssl pkey -in "$TMP/bench-key.pem" -pubout -out "$TMP/bench-key.pub" 2>/dev/null
  header="$(printf '{"alg":"RS256","typ":"JWT"}' | b64url)"
  payload="$(printf '{"iss":"https://bench.example","aud":"stoa-gateway","sub":"bench","tenant":"acme","exp":%d}' \
    "$(( $(date +%s) + 7200 ))" | b64url)"
  signing="$header.$payload"
  AUTH_TOKEN="$signing.$(printf '%s' "$signing" | openssl dgst -sha256 -sign "$TMP/bench-key.pem" -binary | b64url)"
  sed -e "s/127\.0\.0\.1:18080/127.0.0.1:$port/" \
      -e "s/127\.0\.0\.1:19901/127.0.0.1:$admin/" \
      -e "s/127\.0\.0\.1:19000/127.0.0.1:$UP_PORT/" \
      -e "s#/tmp/stoa-secure.pid#$TMP/stoa-secure.pid#" \
      -e "s#/tmp/stoa-secure-upgrade.sock#$TMP/stoa-secure-upgrade.sock#" \
      -e "s#/tmp/stoa-bench-key.pub#$TMP/bench-key.pub#" \
      "$ROOT/benches/stoa-secure.yaml" >"$TMP/stoa-secure.yaml"
  AUTH_HEADER="Authorization: Bearer $AUTH_TOKEN" SKIP_RSS=1 \
    target_pingora stoa-secure "$port" "$TMP/stoa-secure.log" "$STOA_BIN" -c "$TMP/stoa-secure.yaml"
}

# The collector the traced targets export to (rotel, the PyPI wheel the tests use), started
# once, on the load core; its blackhole exporter accepts and discards.
COLLECTOR_PORT=""
start_collector() {
  [ -n "$COLLECTOR_PORT" ] && return 0
  local rotel grpc
  rotel="$(python3 -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))' 2>/dev/null)"
  [ -x "$rotel" ] || return 1
  COLLECTOR_PORT="$(free_port)"
  grpc="$(free_port)"
  taskset -c "$LOAD_CPU" "$rotel" start --otlp-http-endpoint "127.0.0.1:$COLLECTOR_PORT" \
    --otlp-grpc-endpoint "127.0.0.1:$grpc" --exporter blackhole >"$TMP/rotel.log" 2>&1 &
  PIDS+=("$!")
  local i
  for ((i = 0; i < 100; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$COLLECTOR_PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  log "rotel did not listen; log tail:"; tail -5 "$TMP/rotel.log" >&2
  COLLECTOR_PORT=""
  return 1
}

target_stoa_traced() { # target_stoa_traced NAME RATIO
  stoa_present "$1" || return 0
  if ! start_collector; then
    log "$1: no OpenTelemetry collector (pip install rotel); skipping"
    NOTE[$1]="no collector (rotel) installed; skipped. "
    return 0
  fi
  SKIP_RSS=1 run_stoa_config "$1" \
    "$(printf 'telemetry:\n  endpoint: http://127.0.0.1:%s\n  sampler_arg: %s' "$COLLECTOR_PORT" "$2")"
}

for t in $TARGETS; do
  case "$t" in
    direct | nginx | bare | stoa) "target_$t" ;;
    stoa-preset) target_stoa_preset ;;
    stoa-secure) target_stoa_secure ;;
    stoa-traced-1) target_stoa_traced stoa-traced-1 0.01 ;;
    stoa-traced-100) target_stoa_traced stoa-traced-100 1 ;;
    *) die "unknown target $t (want: $ALL_TARGETS)" ;;
  esac
done

# ------------------------------------------------------------------- report --
ratio() { # ratio A B -> A/B or "-"
  awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || a == "nan" || b == "nan" || b + 0 == 0 || a + 0 == 0) print "-"; else printf "%.2f", a / b }'
}
pct() { awk -v r="$1" 'BEGIN { if (r == "-") print ""; else printf " (%+.0f%%)", (r - 1) * 100 }'; }

ROWS=""
for t in $ALL_TARGETS; do
  [ -n "${RPS[$t]:-}" ] || continue
  EFF[$t]="$(awk -v r="${RPS[$t]}" -v c="${PCPU[$t]:--}" 'BEGIN { if (c == "-" || c + 0 <= 0) print "-"; else printf "%.0f", r * 100 / c }')"
  ROWS+="$t|${RPS[$t]}|$(fmt_us "${P50[$t]}")|$(fmt_us "${P99[$t]}")|${REQS[$t]:-}|${ERRS[$t]:-}|${PCPU[$t]:--}|${BUSY[$t]:--}|${EFF[$t]}|${STARTUP[$t]:-}"$'\n'
done

RATEROWS=""
for t in $ALL_TARGETS; do
  [ -n "${RATE_ROW[$t]:-}" ] || continue
  read -r ra r50 r99 r999 rbad <<<"${RATE_ROW[$t]}"
  RATEROWS+="$t|$RATE|$ra|$(fmt_us "$r50")|$(fmt_us "$r99")|$(fmt_us "$r999")|$rbad"$'\n'
done
rate_p99() { [ -n "${RATE_ROW[$1]:-}" ] && awk '{print $3}' <<<"${RATE_ROW[$1]}"; }

RATIOS=""
add_ratio() { # add_ratio LABEL A B
  local a="$2" b="$3" r1 r2 r3 r4 r5
  [ -n "${RPS[$a]:-}" ] && [ -n "${RPS[$b]:-}" ] || return 0
  r1="$(ratio "${RPS[$a]}" "${RPS[$b]}")"
  r2="$(ratio "${P50[$a]}" "${P50[$b]}")"
  r3="$(ratio "${P99[$a]}" "${P99[$b]}")"
  r4="$(ratio "${EFF[$a]/-/}" "${EFF[$b]/-/}")"
  r5="$(ratio "$(rate_p99 "$a")" "$(rate_p99 "$b")")"
  RATIOS+="$1|$r1$(pct "$r1")|$r4$(pct "$r4")|$r2|$r3|$r5"$'\n'
}
add_ratio "stoa / bare pingora" stoa bare
add_ratio "stoa / nginx" stoa nginx
add_ratio "bare pingora / nginx" bare nginx
add_ratio "stoa-preset / bare pingora" stoa-preset bare
add_ratio "stoa-preset / stoa" stoa-preset stoa
add_ratio "stoa-secure / stoa" stoa-secure stoa
add_ratio "stoa-traced-1 / stoa" stoa-traced-1 stoa
add_ratio "stoa-traced-100 / stoa" stoa-traced-100 stoa

RSSROWS=""
for t in nginx bare stoa stoa-preset; do
  [ -n "${RSS_IDLE[$t]:-}" ] || continue
  RSSROWS+="$t|$(mib "${RSS_IDLE[$t]}")|$( [ -n "${RSS_OPEN[$t]:-}" ] && mib "${RSS_OPEN[$t]}" || echo -)|$(mib "${RSS_PEAK[$t]}")|$(mib "${RSS_AFTER[$t]}")|$(mib "${RSS_HWM[$t]}")|${RSS_REQS[$t]:-}"$'\n'
done

print_table() { # print_table HEADER ROWS
  { echo "$1"; printf '%s' "$2"; } | column -t -s '|' 2>/dev/null || { echo "$1"; printf '%s' "$2"; }
}

HOST_CPU="$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
NGINX_VERSION="$("$NGINX" -v 2>&1 | sed 's/^nginx version: nginx\///')"
WRK_VERSION="$(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
GIT_REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
GIT_DIRTY=""
if [ "$GIT_REV" != unknown ] && [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null | head -1)" ]; then GIT_DIRTY="+dirty"; fi
DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

echo
echo "== throughput / latency: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION (proxy on cpu $PROXY_CPU; upstream + wrk on cpu $LOAD_CPU)"
print_table "target|req/s|p50|p99|requests|errors|proxy cpu%|cpu$PROXY_CPU busy%|req/proxy-cpu-s|start->200 ms" "$ROWS"
if [ -n "$RATIOS" ]; then
  echo
  echo "== ratios (req/s ratio > 1 = faster; latency ratio < 1 = faster)"
  print_table "ratio|req/s|req/proxy-cpu-s|p50|p99|p99 at $RATE req/s" "$RATIOS"
fi
if [ -n "$RATEROWS" ]; then
  echo
  echo "== latency at a fixed rate: oha -c$CONNECTIONS -q$RATE -z$RATE_DURATION --latency-correction"
  print_table "target|offered req/s|achieved|p50|p99|p99.9|failed" "$RATEROWS"
fi
if [ -n "$RSSROWS" ]; then
  echo
  echo "== memory: $RSS_REQUESTS requests over $RSS_CONNECTIONS connections (MiB)"
  print_table "target|idle|at ${RSS_REQUESTS} reqs, conns open|peak (sampled)|after close|VmHWM|requests" "$RSSROWS"
fi
for k in _global $ALL_TARGETS; do
  [ -n "${NOTE[$k]:-}" ] && echo "note ($k): ${NOTE[$k]}"
done

md_table() { # md_table HEADER ROWS
  echo "| $(echo "$1" | sed 's/|/ | /g') |"
  echo "|$(echo "$1" | sed 's/[^|]*/---/g')|"
  printf '%s' "$2" | while IFS= read -r line; do [ -n "$line" ] && echo "| $(echo "$line" | sed 's/|/ | /g') |"; done
}

mkdir -p "$(dirname "$RESULTS")"
{
  echo "# stoa-gateway load benchmark"
  echo
  echo "Generated by \`benches/load.sh\` on $DATE (git $GIT_REV$GIT_DIRTY)."
  echo
  echo "- Machine: $(nproc) CPUs, $HOST_CPU, kernel $(uname -r)"
  echo "- Proxy under test pinned to CPU $PROXY_CPU, one worker thread; upstream (nginx, 1 worker, \`return 200 \"ok\\n\"\`) and wrk pinned to CPU $LOAD_CPU"
  echo "- Load: \`wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION --latency\` after a $WARMUP warmup, HTTP/1.1 keep-alive, plaintext; $RUNS run(s) per target, the $( [ "$PICK" = median ] && echo "median" || echo "best (highest req/s)") run shown (all runs listed at the end)"
  echo "- Targets: direct = wrk straight to the upstream; nginx = 1 worker, \`proxy_pass\` with an upstream keepalive pool; bare = \`benches/bare_pingora.rs\` (Pingora, no filters, mimalloc, 1 thread); stoa = \`stoa-gateway -c benches/stoa-bench.yaml\` (1 thread, a single router route); stoa-preset = \`stoa-gateway --mode=proxy --port --upstream --admin-address\` (the shipped preset: request_id, access_log to stdout (/dev/null), router); stoa-secure = \`stoa-gateway -c benches/stoa-secure.yaml\` (the stoa route behind jwt RS256 with the token cache, embedded opa and a local rate_limit; one token on every request); stoa-traced-1 / stoa-traced-100 = stoa with \`telemetry:\` on (sampler parent-based ratio 0.01 / 1, OTLP/HTTP export to rotel with its blackhole exporter, on the load core)"
  echo "- Tools: nginx $NGINX_VERSION, $WRK_VERSION${STOA_VERSION:+, $STOA_VERSION}"
  echo
  echo "## Throughput and latency"
  echo
  md_table "target|req/s|p50|p99|requests|errors|proxy CPU %|CPU $PROXY_CPU busy %|req per proxy CPU second|start → first proxied 200 (ms)" "$ROWS"
  echo
  echo "proxy CPU % = CPU time charged to the proxy process during the measured run, as a share of CPU $PROXY_CPU. CPU $PROXY_CPU busy % = everything that ran on that core: the proxy, loopback softirq work not charged to it, and any other load. Proxy CPU well below 100 with the core not busy means the proxy was not the bottleneck (wrk and the upstream on CPU $LOAD_CPU were) and its req/s understates it; busy ≫ proxy CPU means something else competed for the core. req per proxy CPU second = req/s ÷ proxy CPU share: the proxy's efficiency, comparable even when a proxy was not saturated (approximate: how much softirq work the kernel charges to the process differs between a busy and an idle process)."
  if [ -n "$RATIOS" ]; then
    echo
    echo "## Ratios"
    echo
    echo "req/s ratio above 1 means the first is faster; latency ratios below 1 mean the first is faster."
    echo
    md_table "ratio|req/s|req per proxy CPU second|p50|p99|p99 at $RATE req/s" "$RATIOS"
  fi
  if [ -n "$RATEROWS" ]; then
    echo
    echo "## Latency at a fixed rate"
    echo
    echo "\`oha -c$CONNECTIONS -q$RATE -z$RATE_DURATION --latency-correction\` (open loop: requests are due every 1/$RATE s and a late one is charged from when it was due), oha pinned to CPU $LOAD_CPU with the upstream. Below saturation, so these are the proxy's own latencies rather than wrk's queueing."
    echo
    md_table "target|offered req/s|achieved req/s|p50|p99|p99.9|failed (non-200 or error)" "$RATEROWS"
  fi
  if [ -n "$RSSROWS" ]; then
    echo
    echo "## Memory"
    echo
    echo "$RSS_REQUESTS requests over $RSS_CONNECTIONS keep-alive connections (\`wrk -t1 -c$RSS_CONNECTIONS\`, stopped after $RSS_REQUESTS responses with the connections still open). nginx: its one worker process. MiB (VmRSS); peak sampled every 50 ms during the run; \"after close\" 0.5 s after wrk exits; VmHWM = the process's high-water mark."
    echo
    md_table "target|RSS idle|RSS at $RSS_REQUESTS requests, $RSS_CONNECTIONS connections open|RSS peak (sampled)|RSS after close|VmHWM|requests" "$RSSROWS"
  fi
  echo
  echo "## All runs"
  echo
  echo "| target | run | req/s | p50 | p99 | requests | errors | proxy CPU % | CPU $PROXY_CPU busy % |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for t in $ALL_TARGETS; do
    [ -n "${ALLRUNS[$t]:-}" ] || continue
    n=0
    printf '%s' "${ALLRUNS[$t]}" | while read -r r p5 p9 rq er pc bz; do
      n=$((n + 1))
      echo "| $t | $n | $r | $(fmt_us "$p5") | $(fmt_us "$p9") | $rq | $er | $pc | $bz |"
    done
  done
  notes=""
  for k in _global $ALL_TARGETS; do
    [ -n "${NOTE[$k]:-}" ] && notes+="- $k: ${NOTE[$k]}"$'\n'
  done
  if [ -n "$notes" ]; then
    echo
    echo "## Notes"
    echo
    printf '%s' "$notes"
  fi
} >"$RESULTS"
log "results written to $RESULTS"
exit 0
}
