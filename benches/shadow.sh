#!/usr/bin/env bash
# Shadow benchmarks: what the client pays for the gateway watching its traffic. The same gateway
# config with and without the feature, in one invocation, alternating off/on for ROUNDS rounds:
#   FEATURE=mirror (default): a `mirror` filter, every request copied to a candidate and the
#     answers compared;
#   FEATURE=capture: shadow capture (`shadow.keep_observing`), every exchange masked and stored
#     in SQLite.
#   - saturation: `oha -c CONNECTIONS` closed loop for DURATION -> req/s, p50, p99;
#   - fixed rate: `oha -q RATE --latency-correction` over the same connections -> p50, p99,
#     p99.9 below saturation (the gateway's own latency rather than queueing).
# Ratios on/off per round, and their median. The metrics say how much work "on" really did
# (copies sent and matched, or samples queued; skipped or dropped ones are reported, since
# they would make "on" look cheaper).
#
#   cargo build --profile dist --bin stoa-gateway
#   cargo install --locked oha --root target/tools     # once
#   bash benches/shadow.sh                              # writes benches/results/mirror-latest.md
#   FEATURE=capture bash benches/shadow.sh              # writes benches/results/capture-latest.md
#
# Layout (2-core machine): the gateway pinned to CPU 0 with one worker thread (its background
# runtime, which sends the copies, shares that CPU); nginx (1 worker) serving the primary and,
# on a second port, the candidate (the same ~2.4 KB JSON order, keys in another order and a
# timestamp moved on, so every comparison is real work and a match), and oha on CPU 1.
#
# Environment: FEATURE [mirror]  ROUNDS [3]  DURATION [8s]  CONNECTIONS [50]  RATE [5000]
#              STOA_BIN  NGINX  OHA
set -u -o pipefail
{
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FEATURE="${FEATURE:-mirror}"
case "$FEATURE" in mirror|capture) ;; *) echo "FEATURE: mirror or capture" >&2; exit 2 ;; esac
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-8s}"
CONNECTIONS="${CONNECTIONS:-50}"
RATE="${RATE:-5000}"
STOA_BIN="${STOA_BIN:-$ROOT/target/dist/stoa-gateway}"
NGINX="${NGINX:-/usr/sbin/nginx}"
OHA="${OHA:-$(command -v oha || echo "$ROOT/target/tools/bin/oha")}"
RESULTS="${RESULTS:-$ROOT/benches/results/$FEATURE-latest.md}"
log() { printf '[%s %(%T)T] %s\n' "$FEATURE" -1 "$*" >&2; }
for t in "$STOA_BIN" "$NGINX" "$OHA"; do [ -x "$t" ] || { log "missing $t"; exit 1; }; done

TMP="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP="$(free_port)"; CAND="$(free_port)"; GW="$(free_port)"; ADMIN="$(free_port)"

# The primary's answer and the candidate's (same content, keys reversed, a later timestamp).
mkdir -p "$TMP/www/primary" "$TMP/www/candidate" "$TMP/nginx"
python3 - "$TMP/www" <<'PY'
import json, sys
items = [{"sku": f"SKU-{1000 + i:06}", "name": f"Product {i} with a longer marketing name",
          "quantity": 1 + i % 3, "unit_price": 19.99 + i, "discount": 0.1, "tax_rate": 0.2,
          "added_at": "2026-11-23T09:15:00Z"} for i in range(12)]
address = {"line1": "12 Rue de la Paix", "line2": None, "city": "Paris", "postal_code": "75002", "country": "FR"}
order = {"id": "ord_9f8e7d6c5b4a", "status": "shipped", "currency": "EUR",
         "customer": {"id": "cus_123456", "name": "Ada Lovelace", "email": "ada@example.com",
                      "created_at": "2024-01-02T03:04:05Z"},
         "billing_address": address, "shipping_address": address, "items": items,
         "totals": {"subtotal": 402.88, "tax": 80.58, "shipping": 4.9, "total": 488.36},
         "created_at": "2026-11-23T09:14:00Z", "updated_at": "2026-11-23T09:20:11.512Z",
         "tags": ["priority", "gift"], "metadata": {"channel": "web", "campaign": "winter"}}
def rev(v):
    if isinstance(v, dict):
        return {k: rev(v[k]) for k in reversed(list(v))}
    if isinstance(v, list):
        return [rev(x) for x in v]
    return "2026-11-23T10:00:00.125Z" if v == "2026-11-23T09:20:11.512Z" else v
json.dump(order, open(sys.argv[1] + "/primary/order.json", "w"))
json.dump(rev(order), open(sys.argv[1] + "/candidate/order.json", "w"))
PY
BODY_BYTES="$(stat -c %s "$TMP/www/primary/order.json")"
chmod a+x "$TMP"; chmod -R a+rX "$TMP/www"   # nginx's workers run as www-data
cat >"$TMP/nginx/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $TMP/nginx/nginx.pid; error_log $TMP/nginx/error.log;
events { worker_connections 20000; }
http {
  access_log off;
  types { application/json json; }
  server { listen 127.0.0.1:$UP;   root $TMP/www/primary;   location / { try_files /order.json =404; } }
  server { listen 127.0.0.1:$CAND; root $TMP/www/candidate; location / { try_files /order.json =404; } }
}
NGINX
taskset -c 1 "$NGINX" -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" & PIDS+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$CAND/order" && break; sleep 0.05; done

config() { # config on|off -> the gateway's YAML
  cat <<YAML
server: { threads: 1, pid_file: $TMP/gw.pid, upgrade_sock: $TMP/gw.sock, watch_config: false }
admin: { address: "127.0.0.1:$ADMIN" }
listeners:
  - { name: main, address: "127.0.0.1:$GW", chains: [main] }
chains:
  main:
    - type: router
      routes:
        - { name: orders, match: { path_prefix: / }, cluster: primary }
YAML
  [ "$1" = on ] && [ "$FEATURE" = mirror ] && cat <<YAML
    - type: mirror
      url: "http://127.0.0.1:$CAND"
      percent: 100
      timeout: 5s
      max_concurrency: 256
YAML
  cat <<YAML
clusters:
  primary: { endpoints: ["127.0.0.1:$UP"] }
YAML
  [ "$1" = on ] && [ "$FEATURE" = capture ] && cat <<YAML
shadow:
  keep_observing: true
  store: { path: "$TMP/shadow-$2.db" }
  opt_in: [{ name: orders, path_prefix: / }]
YAML
  true
}

oha_json() { # oha_json FILE -> "rps p50us p99us p999us failed"
  python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution") or {}
errors = {e: n for e, n in (d.get("errorDistribution") or {}).items() if "aborted due to deadline" not in e}
bad = sum(n for c, n in codes.items() if c != "200") + sum(errors.values())
print("%.0f %.0f %.0f %.0f %d" % (d["summary"]["requestsPerSec"], p["p50"] * 1e6, p["p99"] * 1e6, p["p99.9"] * 1e6, bad))
PY
}
metric_sum() { # metric_sum NAME [label filter] -> the sum of the matching series
  curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v n="$1" -v f="${2:-}" \
    '$1 ~ "^"n"([{]|$)" && index($1, f) { s += $2 } END { printf "%.0f", s }'
}

measure() { # measure on|off ROUND -> "rps p50 p99 failed | rate_p50 rate_p99 rate_p999 | copies matched skipped"
  local mode="$1" round="$2"
  config "$mode" "$round" >"$TMP/gw-$mode.yaml"
  taskset -c 0 "$STOA_BIN" -c "$TMP/gw-$mode.yaml" >"$TMP/gw-$mode-$round.log" 2>&1 & local pid=$!
  for _ in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/ready" && break; sleep 0.05; done
  if ! curl -sf -o /dev/null "http://127.0.0.1:$GW/order"; then
    log "gateway not serving"; tail -5 "$TMP/gw-$mode-$round.log" >&2
    kill "$pid"; wait "$pid" 2>/dev/null; return 1
  fi
  taskset -c 1 "$OHA" -z 2s -c "$CONNECTIONS" --no-tui --output-format json "http://127.0.0.1:$GW/order" >/dev/null 2>&1
  taskset -c 1 "$OHA" -z "$DURATION" -c "$CONNECTIONS" --no-tui --output-format json \
    "http://127.0.0.1:$GW/order" >"$TMP/sat-$mode-$round.json" 2>/dev/null
  sleep 1
  taskset -c 1 "$OHA" -z "$DURATION" -c "$CONNECTIONS" -q "$RATE" --latency-correction --no-tui \
    --output-format json "http://127.0.0.1:$GW/order" >"$TMP/rate-$mode-$round.json" 2>/dev/null
  sleep 2
  local sat rate copies matched skipped total
  sat="$(oha_json "$TMP/sat-$mode-$round.json")"
  rate="$(oha_json "$TMP/rate-$mode-$round.json")"
  total="$(metric_sum stoa_requests_total)"
  if [ "$FEATURE" = mirror ]; then
    copies="$(metric_sum mcp_shadow_requests_total 'status="ok"')"
    matched="$(metric_sum mcp_shadow_match_total 'result="match"')"
    skipped="$(metric_sum mcp_shadow_skipped_total)"
  else
    copies="$(metric_sum stoa_shadow_captures_total 'result="queued"')"
    matched="$(curl -s -H 'x-stoa-actor: bench' "http://127.0.0.1:$ADMIN/uac/observations?api=orders&limit=1&reason=benchmark" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])' 2>/dev/null)"
    skipped="$(metric_sum stoa_shadow_captures_total 'result="dropped_queue_full"')"
  fi
  kill "$pid"; wait "$pid" 2>/dev/null
  echo "$sat $rate $total $copies $matched $skipped"
}

declare -A R
ROWS=""
for ((round = 1; round <= ROUNDS; round++)); do
  for mode in off on; do
    log "round $round: $FEATURE $mode"
    R[$mode]="$(measure "$mode" "$round")" || exit 1
    log "round $round: $FEATURE $mode: ${R[$mode]} (sat rps p50 p99 p99.9 failed, rate rps p50 p99 p99.9 failed, requests copies matched skipped)"
  done
  read -r orps o50 o99 _ ofail _ or50 or99 or999 orfail _ _ _ _ <<<"${R[off]}"
  read -r nrps n50 n99 _ nfail _ nr50 nr99 nr999 nrfail ntotal ncopies nmatched nskipped <<<"${R[on]}"
  tput_ratio="$(awk -v a="$nrps" -v b="$orps" 'BEGIN {printf "%.3f", a / b}')"
  p99_ratio="$(awk -v a="$nr99" -v b="$or99" 'BEGIN {printf "%.3f", a / b}')"
  sat_p99_ratio="$(awk -v a="$n99" -v b="$o99" 'BEGIN {printf "%.3f", a / b}')"
  echo "$tput_ratio $p99_ratio $sat_p99_ratio" >>"$TMP/ratios"
  ROWS+="| $round | $orps | $nrps | **$tput_ratio** | $o99 / $n99 us | $or50 / $nr50 us | $or99 / $nr99 us | **$p99_ratio** | $or999 / $nr999 us | $ncopies of $ntotal | $nmatched | $nskipped | $((ofail + orfail)) / $((nfail + nrfail)) |"$'\n'
done
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
MED_TPUT="$(awk '{print $1}' "$TMP/ratios" | median)"
MED_P99="$(awk '{print $2}' "$TMP/ratios" | median)"
MED_SAT_P99="$(awk '{print $3}' "$TMP/ratios" | median)"
log "median on/off: throughput $MED_TPUT (target >= 0.9), p99 at $RATE req/s $MED_P99 (target <= 1.1), p99 at saturation $MED_SAT_P99"

mkdir -p "$(dirname "$RESULTS")"
{
  echo "# Shadow benchmark: $FEATURE"
  echo
  echo "Generated by \`FEATURE=$FEATURE benches/shadow.sh\` on $(date -u +%Y-%m-%dT%H:%M:%SZ) (git $(git rev-parse --short HEAD 2>/dev/null))."
  echo
  echo "- Machine: $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo); gateway pinned to CPU 0 (1 worker thread, plus the idle-priority thread sending copies or storing captures); nginx (1 worker: primary and candidate) and oha on CPU 1"
  echo "- Answer: a $BODY_BYTES-byte JSON order; the candidate's has its keys in reverse order and a later timestamp, so each copy is parsed and compared structurally (and matches)"
  if [ "$FEATURE" = mirror ]; then
    echo "- off = router only; on = router + \`mirror\` (percent 100, timeout 5s, max_concurrency 256, copies on the SCHED_IDLE runtime). Columns: copies sent (ok), matched, skipped (concurrency cap)"
  else
    echo "- off = router only; on = the same with \`shadow.keep_observing: true\` (every exchange captured, masked, stored in SQLite). Columns: samples queued, stored (in the database at the end), dropped (queue full)"
  fi
  echo "- Saturation: \`oha -z $DURATION -c $CONNECTIONS\`; fixed rate: \`oha -z $DURATION -c $CONNECTIONS -q $RATE --latency-correction\`"
  echo
  echo "| round | req/s off | req/s on | on/off req/s | sat. p99 off / on | p50 at $RATE/s off / on | p99 at $RATE/s off / on | on/off p99 | p99.9 at $RATE/s off / on | work done (of requests) | matched / stored | skipped / dropped | failed off / on |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s' "$ROWS"
  echo
  echo "Median over $ROUNDS rounds, on/off: **throughput $MED_TPUT** (target ≥ 0.9), **p99 at $RATE req/s $MED_P99** (target ≤ 1.1), p99 at saturation $MED_SAT_P99."
} >"$RESULTS"
log "results written to $RESULTS"
cat "$RESULTS"
exit 0
}
