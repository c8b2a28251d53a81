#!/usr/bin/env bash
# MCP benchmark: `tools/call` through stoa-gateway's `mcp` filter vs the same backend API called
# directly, in one run, at 1, 10 and 50 concurrent clients (throughput, p50, p99); a federated
# `tools/call` (relayed to an upstream MCP server written with the official Python SDK,
# tests/fixtures/mcp_upstream.py) vs that server called directly, at the same client counts
# (connection errors counted: a relayed answer must keep the client's connection); then the
# gateway's RSS after SESSIONS sessions were opened and left idle (sealed ids: no state kept),
# and while SESSIONS sessions each hold their SSE stream open.
#
#   cargo build --profile dist --bin stoa-gateway
#   cargo install --locked oha --root target/tools     # once
#   bash benches/mcp.sh                                 # writes benches/results/mcp-latest.md
#
# Layout (2-core machine): the gateway is pinned to CPU 0 with one worker thread; the backend
# (nginx, 1 worker, a fixed JSON answer) and oha share CPU 1. Both targets are measured with
# the same oha settings (keep-alive, -c clients, DURATION each).
#
# Environment: DURATION [8s]  CLIENTS ["1 10 50"]  SESSIONS [10000]  STOA_BIN  NGINX  OHA
set -u -o pipefail
{
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DURATION="${DURATION:-8s}"
CLIENTS="${CLIENTS:-1 10 50}"
SESSIONS="${SESSIONS:-10000}"
STOA_BIN="${STOA_BIN:-$ROOT/target/dist/stoa-gateway}"
NGINX="${NGINX:-/usr/sbin/nginx}"
OHA="${OHA:-$(command -v oha || echo "$ROOT/target/tools/bin/oha")}"
RESULTS="${RESULTS:-$ROOT/benches/results/mcp-latest.md}"
log() { printf '[mcp %(%T)T] %s\n' -1 "$*" >&2; }
for t in "$STOA_BIN" "$NGINX" "$OHA"; do [ -x "$t" ] || { log "missing $t"; exit 1; }; done

TMP="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP="$(free_port)"; GW="$(free_port)"; ADMIN="$(free_port)"; MCPUP="$(free_port)"; GWF="$(free_port)"; ADMINF="$(free_port)"

mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $TMP/nginx/nginx.pid; error_log $TMP/nginx/error.log;
events { worker_connections 20000; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$UP;
    location /users/ { default_type application/json; return 200 '{"id": 1, "name": "Ada Lovelace", "email": "ada@example.com"}'; }
  }
}
NGINX
taskset -c 1 "$NGINX" -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" & PIDS+=($!)
# The federated upstream: the test suite's MCP server (official Python SDK), on CPU 1 too.
taskset -c 1 python3 "$ROOT/tests/fixtures/mcp_upstream.py" --port "$MCPUP" --name fed >"$TMP/mcpup.log" 2>&1 & PIDS+=($!)
for _ in $(seq 300); do grep -q READY "$TMP/mcpup.log" 2>/dev/null && break; sleep 0.1; done

gateway_yaml() { # gateway_yaml NAME PORT ADMIN_PORT: a one-thread gateway with one `mcp` filter (its settings follow)
  cat <<YAML
server: { threads: 1, pid_file: $TMP/$1.pid, upgrade_sock: $TMP/$1.sock, watch_config: false }
admin: { address: "127.0.0.1:$3" }
listeners:
  - { name: mcp, address: "127.0.0.1:$2", chains: [mcp] }
chains:
  mcp:
    - type: mcp
      session_secret: "benchmark-session-secret-0123"
YAML
}
init_session() { # init_session URL -> the session id it answers with
  curl -s -D - -o /dev/null "${H[@]}" "$1" \
    -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}' \
    | awk -F': ' 'tolower($1)=="mcp-session-id" {print $2}' | tr -d '\r'
}
H=(-H "content-type: application/json" -H "accept: application/json, text/event-stream")

{ gateway_yaml gw "$GW" "$ADMIN"; cat <<YAML
      tools:
        - name: get_user
          description: Look a user up
          input_schema: { type: object, required: [id], properties: { id: { type: integer } } }
          backend: { url: "http://127.0.0.1:$UP/users/{id}" }
YAML
} >"$TMP/gw.yaml"
taskset -c 0 "$STOA_BIN" -c "$TMP/gw.yaml" >"$TMP/gw.log" 2>&1 & GW_PID=$!; PIDS+=($GW_PID)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$ADMIN/ready" && break; sleep 0.05; done
SID="$(init_session "http://127.0.0.1:$GW/mcp")"
[ -n "$SID" ] || { log "initialize failed"; cat "$TMP/gw.log" >&2; exit 1; }
CALL='{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_user","arguments":{"id":1}}}'
check="$(curl -s "${H[@]}" -H "mcp-session-id: $SID" "http://127.0.0.1:$GW/mcp" -d "$CALL")"
echo "$check" | grep -q '"isError":false' || { log "tools/call failed: $check"; exit 1; }

run() { # run NAME CLIENTS oha-args... -> "rps p50us p99us failed"
  local out="$TMP/oha-$1-$2.json"; shift 2
  taskset -c 1 "$OHA" -z "$DURATION" --no-tui --output-format json "$@" >"$out" 2>/dev/null
  python3 - "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution") or {}
errors = {e: n for e, n in (d.get("errorDistribution") or {}).items() if "aborted due to deadline" not in e}
bad = sum(n for c, n in codes.items() if c != "200") + sum(errors.values())
print("%.0f %.0f %.0f %d" % (d["summary"]["requestsPerSec"], p["p50"] * 1e6, p["p99"] * 1e6, bad))
PY
}
fmt() { awk -v u="$1" 'BEGIN { if (u < 1000) printf "%.0f us", u; else printf "%.2f ms", u / 1000 }'; }

ROWS=""
for c in $CLIENTS; do
  log "clients $c: direct"
  read -r drps d50 d99 dbad <<<"$(run direct "$c" -c "$c" "http://127.0.0.1:$UP/users/1")"
  log "clients $c: through the gateway (tools/call)"
  read -r grps g50 g99 gbad <<<"$(run gateway "$c" -c "$c" -m POST "${H[@]}" -H "mcp-session-id: $SID" -d "$CALL" "http://127.0.0.1:$GW/mcp")"
  add50="$(awk -v a="$g50" -v b="$d50" 'BEGIN {print a - b}')"; add99="$(awk -v a="$g99" -v b="$d99" 'BEGIN {print a - b}')"
  ratio="$(awk -v a="$grps" -v b="$drps" 'BEGIN {printf "%.2f", a / b}')"
  ROWS+="| $c | $drps | $(fmt "$d50") | $(fmt "$d99") | $grps | $(fmt "$g50") | $(fmt "$g99") | $ratio | $(fmt "$add50") | $(fmt "$add99") | $dbad / $gbad |"$'\n'
  log "clients $c: direct $drps req/s p99 $(fmt "$d99"); gateway $grps req/s p99 $(fmt "$g99")"
done

# Federated: the upstream's own session for the direct case, the gateway's for the relayed one.
# A second gateway, federating the upstream, for this phase only (the memory phase below
# measures the first one, whose sessions have no upstream to open sessions with).
{ gateway_yaml gwf "$GWF" "$ADMINF"; cat <<YAML
      upstreams:
        - { name: fed, url: "http://127.0.0.1:$MCPUP/mcp", prefix: fed_ }
YAML
} >"$TMP/gwfed.yaml"
taskset -c 0 "$STOA_BIN" -c "$TMP/gwfed.yaml" >"$TMP/gwf.log" 2>&1 & GWF_PID=$!; PIDS+=($GWF_PID)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$ADMINF/ready" && break; sleep 0.05; done
FSID="$(init_session "http://127.0.0.1:$GWF/mcp")"
UPSID="$(init_session "http://127.0.0.1:$MCPUP/mcp")"
curl -s -o /dev/null "${H[@]}" -H "mcp-session-id: $UPSID" "http://127.0.0.1:$MCPUP/mcp" -d '{"jsonrpc":"2.0","method":"notifications/initialized"}'
curl -s -o /dev/null "${H[@]}" -H "mcp-session-id: $FSID" "http://127.0.0.1:$GWF/mcp" -d '{"jsonrpc":"2.0","method":"notifications/initialized"}'
FCALL_UP='{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}'
FCALL_GW='{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"fed_echo","arguments":{"text":"hi"}}}'
for _ in $(seq 100); do
  fcheck="$(curl -s "${H[@]}" -H "mcp-session-id: $FSID" "http://127.0.0.1:$GWF/mcp" -d "$FCALL_GW")"
  echo "$fcheck" | grep -q '"text":"hi"' && break; sleep 0.1
done
echo "$fcheck" | grep -q '"text":"hi"' || { log "federated tools/call failed: $fcheck"; exit 1; }
FROWS=""
for c in $CLIENTS; do
  log "clients $c: federated, upstream direct"
  read -r drps d50 d99 dbad <<<"$(run fdirect "$c" -c "$c" -m POST "${H[@]}" -H "mcp-session-id: $UPSID" -d "$FCALL_UP" "http://127.0.0.1:$MCPUP/mcp")"
  log "clients $c: federated, through the gateway"
  read -r grps g50 g99 gbad <<<"$(run fgateway "$c" -c "$c" -m POST "${H[@]}" -H "mcp-session-id: $FSID" -d "$FCALL_GW" "http://127.0.0.1:$GWF/mcp")"
  ratio="$(awk -v a="$grps" -v b="$drps" 'BEGIN {printf "%.2f", a / b}')"
  FROWS+="| $c | $drps | $(fmt "$d50") | $(fmt "$d99") | $grps | $(fmt "$g50") | $(fmt "$g99") | $ratio | $dbad / $gbad |"$'\n'
  log "clients $c: upstream $drps req/s; through the gateway $grps req/s ($ratio); failed $dbad / $gbad"
done
kill "$GWF_PID" 2>/dev/null

rss() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' /proc/"$GW_PID"/status; }
RSS_IDLE="$(rss)"
log "opening $SESSIONS sessions with their SSE streams"
python3 - "$GW" "$SESSIONS" "$TMP/go" >"$TMP/sessions.txt" <<'PY' &
import asyncio, json, os, sys
port, n, go = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
INIT = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "idle", "version": "1"}}})
async def session():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write((f"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\naccept: application/json\r\ncontent-length: {len(INIT)}\r\n\r\n" + INIT).encode())
    head = (await r.readuntil(b"\r\n\r\n")).decode()
    sid = [l.split(": ", 1)[1] for l in head.split("\r\n") if l.lower().startswith("mcp-session-id")][0]
    length = int([l.split(": ", 1)[1] for l in head.split("\r\n") if l.lower().startswith("content-length")][0])
    await r.readexactly(length)
    w.write(f"GET /mcp HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\nmcp-session-id: {sid}\r\n\r\n".encode())
    await r.readuntil(b": stream open")
    return r, w
async def idle_session():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write((f"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\naccept: application/json\r\nconnection: close\r\ncontent-length: {len(INIT)}\r\n\r\n" + INIT).encode())
    await r.read()
    w.close()
async def main():
    for i in range(0, n, 200):
        await asyncio.gather(*(idle_session() for _ in range(min(200, n - i))))
    print("idle", n, flush=True)
    while not os.path.exists(go):
        await asyncio.sleep(0.1)
    conns = []
    for i in range(0, n, 200):
        conns += await asyncio.gather(*(session() for _ in range(min(200, n - i))))
    print("streams", len(conns), flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
PY
HOLDER=$!; PIDS+=($HOLDER)
for _ in $(seq 600); do grep -q '^idle' "$TMP/sessions.txt" 2>/dev/null && break; sleep 0.1; done
sleep 1
RSS_IDLE_SESSIONS="$(rss)"
touch "$TMP/go"
for _ in $(seq 600); do grep -q '^streams' "$TMP/sessions.txt" 2>/dev/null && break; sleep 0.1; done
OPEN="$(awk '/^streams/ {print $2}' "$TMP/sessions.txt" 2>/dev/null)"
sleep 1
RSS_SESSIONS="$(rss)"
STREAMS="$(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^mcp_sse_streams / {print $2}')"
log "RSS idle $RSS_IDLE MiB; after $SESSIONS idle sessions $RSS_IDLE_SESSIONS MiB; with ${OPEN:-0} sessions/streams open $RSS_SESSIONS MiB (gauge: $STREAMS)"

mkdir -p "$(dirname "$RESULTS")"
{
  echo "# MCP benchmark"
  echo
  echo "Generated by \`benches/mcp.sh\` on $(date -u +%Y-%m-%dT%H:%M:%SZ) (git $(git rev-parse --short HEAD 2>/dev/null))."
  echo
  echo "- Machine: $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo); gateway pinned to CPU 0 (1 worker thread); backend (nginx, 1 worker, fixed JSON) and oha on CPU 1"
  echo "- Load: \`oha -z $DURATION -c N\`, keep-alive. direct = \`GET /users/1\` on the backend; gateway = \`POST /mcp\` \`tools/call get_user {id: 1}\` in one session (arguments validated, backend called, JSON turned into structuredContent + text)"
  echo
  echo "| clients | direct req/s | direct p50 | direct p99 | gateway req/s | gateway p50 | gateway p99 | gateway/direct req/s | added p50 | added p99 | failed (direct / gateway) |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s' "$ROWS"
  echo
  echo "Federated: \`tools/call echo {text: hi}\` on the upstream MCP server (official Python SDK, Streamable HTTP, one worker on CPU 1) in its own session, vs \`fed_echo\` through the gateway's federation (the gateway's session; it relays to the upstream over its kept connection)."
  echo
  echo "| clients | upstream direct req/s | p50 | p99 | through the gateway req/s | p50 | p99 | gateway/direct | failed (direct / gateway) |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf '%s' "$FROWS"
  echo
  echo "| RSS (MiB) | value |"
  echo "|---|---|"
  echo "| gateway after the load, idle | $RSS_IDLE |"
  echo "| after $SESSIONS more sessions were initialized and left idle (connections closed) | $RSS_IDLE_SESSIONS |"
  echo "| with ${OPEN:-0} sessions, each with its SSE stream open (\`mcp_sse_streams\` = ${STREAMS:-?}) | $RSS_SESSIONS |"
} >"$RESULTS"
log "results written to $RESULTS"
cat "$RESULTS"
exit 0
}
