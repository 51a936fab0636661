#!/usr/bin/env bash
# Reads of one auction by id (GET /auctions/{id}) over loopback:
#   scripts/bench-reads.sh                  # one node, about a minute; prints a markdown table
#   BENCH_NODES=3 scripts/bench-reads.sh    # three nodes (6 groups), reads sent to node 1
# It starts release nodes (--bid-rate-per-bidder 0) on a temp dir, gives them auctions with
# histories (`gavel bench bids`, 96 clients on BENCH_AUCTIONS auctions for BENCH_FILL, over
# every node; on three nodes it first waits until the group leaders are spread), then drives
# GET /auctions/{id} round-robin over those auctions with wrk (one thread, BENCH_CONNECTIONS,
# BENCH_DURATION each) on node 1, first with `?consistency=local`, then linearizable (the
# default: a read index the group's leader confirms with a quorum). Each row also gives the CPU
# the nodes spent per read (from /proc, user + system, all nodes), which is steadier than
# throughput on a shared machine.
# Knobs: BENCH_NODES (1 or 3), BENCH_CONNECTIONS (32), BENCH_FILL (15s), BENCH_DURATION (10s),
# BENCH_AUCTIONS (64, at most 96), BENCH_BIN (the gavel binary to measure, for before/after
# comparisons; default target/release/gavel, built here).
# Installs nothing; needs wrk (apt-get install -y wrk), curl and jq. Every wait is bounded;
# the node and its temp dir are removed on exit and on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=${BENCH_NODES:-1}
[ "$NODES" = 1 ] || [ "$NODES" = 3 ] || { echo "bench-reads.sh: BENCH_NODES must be 1 or 3, not '$NODES'" >&2; exit 2; }
CONNECTIONS=${BENCH_CONNECTIONS:-32}
[[ "$CONNECTIONS" =~ ^[1-9][0-9]{0,3}$ ]] || { echo "bench-reads.sh: BENCH_CONNECTIONS must be 1-9999, not '$CONNECTIONS'" >&2; exit 2; }
FILL=${BENCH_FILL:-15s}
DURATION=${BENCH_DURATION:-10s}
AUCTIONS=${BENCH_AUCTIONS:-64}
# 96 clients bid, client c on auction c mod BENCH_AUCTIONS: at most 96 auctions get bids.
[[ "$AUCTIONS" =~ ^[1-9][0-9]?$ ]] && [ "$AUCTIONS" -le 96 ] || { echo "bench-reads.sh: BENCH_AUCTIONS must be 1-96, not '$AUCTIONS'" >&2; exit 2; }
# Loopback ports: clients 18281-18283, peers 19281-19283; reads go to node 1.
URL=http://127.0.0.1:18281
ENDPOINTS=$(seq -s, -f "http://127.0.0.1:1828%g" 1 "$NODES")
READY_WAIT_S=60

need() {
  command -v "$1" >/dev/null || { echo "bench-reads.sh: $1 is missing; install it: apt-get install -y $2" >&2; exit 2; }
}
need wrk wrk
need curl curl
need jq jq

if [ -z "${BENCH_BIN:-}" ]; then
  cargo build --release -p gavel >&2
fi
BIN=${BENCH_BIN:-./target/release/gavel}
# The load tools are this tree's, whatever BENCH_BIN measures.
TOOL=./target/release/gavel
[ -x "$TOOL" ] || cargo build --release -p gavel >&2

WORK=$(mktemp -d -t gavel-reads.XXXXXX)
NODE_PIDS=()
cleanup() {
  for pid in "${NODE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${NODE_PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$WORK/secret"
chmod 600 "$WORK/secret"
if [ "$NODES" = 1 ]; then
  "$BIN" serve --listen 127.0.0.1:18281 --peer-listen 127.0.0.1:19281 --data-dir "$WORK/node1" \
    --auth-secret-file "$WORK/secret" --bid-rate-per-bidder 0 > "$WORK/node1.log" 2>&1 &
  NODE_PIDS+=($!)
else
  initial="1=127.0.0.1:19281,2=127.0.0.1:19282,3=127.0.0.1:19283"
  for n in 1 2 3; do
    "$BIN" serve --node-id "$n" --listen "127.0.0.1:1828$n" --peer-listen "127.0.0.1:1928$n" \
      --data-dir "$WORK/node$n" --initial-cluster "$initial" --auth-secret-file "$WORK/secret" \
      --bid-rate-per-bidder 0 --groups 6 > "$WORK/node$n.log" 2>&1 &
    NODE_PIDS+=($!)
  done
fi
for n in $(seq 1 "$NODES"); do
  for _ in $(seq 1 $((READY_WAIT_S * 5))); do
    curl -sf -o /dev/null "http://127.0.0.1:1828$n/readyz" && break
    kill -0 "${NODE_PIDS[$((n - 1))]}" 2>/dev/null || { echo "bench-reads.sh: node $n exited:" >&2; tail -20 "$WORK/node$n.log" >&2; exit 1; }
    sleep 0.2
  done
  curl -sf -o /dev/null "http://127.0.0.1:1828$n/readyz" || { echo "bench-reads.sh: node $n was not ready within ${READY_WAIT_S}s" >&2; exit 1; }
done

echo "filling: $FILL of bids on $AUCTIONS auctions" >&2
timeout 300 "$TOOL" bench bids --endpoints "$ENDPOINTS" --auth-secret-file "$WORK/secret" \
  --duration "$FILL" --auctions "$AUCTIONS" --connections 96 --json > "$WORK/fill.json" 2>/dev/null
token=$("$TOOL" token --auth-secret-file "$WORK/secret" --sub bench-reader --role bidder)
# The bench creates more auctions than it bids on (it balances them over the groups): page
# through the listing and read the ones with bids.
: > "$WORK/ids"
cursor=""
for _ in $(seq 1 100); do
  page=$(curl -sf -H "Authorization: Bearer $token" \
    "$URL/auctions?limit=100&consistency=local${cursor:+&cursor=$cursor}")
  jq -r '.auctions[] | select(.bidCount > 0) | .id' <<< "$page" >> "$WORK/ids"
  cursor=$(jq -r '.nextCursor // empty' <<< "$page")
  [ -n "$cursor" ] || break
done
[ -s "$WORK/ids" ] || { echo "bench-reads.sh: the node lists no auction with bids" >&2; exit 1; }

# wrk reads its request list from a Lua script: round-robin over the auctions.
write_script() {
  cat > "$WORK/reads.lua" <<LUA
local ids = {}
for line in io.lines("$WORK/ids") do ids[#ids + 1] = line end
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/auctions/" .. ids[(n % #ids) + 1] .. "$1",
    { ["Authorization"] = "Bearer $token" })
end
LUA
}

cpu_ticks() {
  local pid total=0
  for pid in "${NODE_PIDS[@]}"; do total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done
  echo "$total"
}

echo "| reads ($NODES node(s), $CONNECTIONS connections) | requests/s | p50 / p99 ms | non-2xx | CPU µs per read, all nodes |"
echo "| --- | ---: | ---: | ---: | ---: |"
for mode in local linearizable; do
  query=""
  [ "$mode" = local ] && query="?consistency=local"
  write_script "$query"
  sync
  before=$(cpu_ticks)
  timeout 120 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WORK/reads.lua" "$URL" > "$WORK/wrk-$mode.txt"
  after=$(cpu_ticks)
  python3 - "$WORK/wrk-$mode.txt" "$before" "$after" "$(getconf CLK_TCK)" "$mode" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
before, after, hz = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
requests = int(re.search(r"(\d+) requests in", text).group(1))
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def ms(label):
    value, unit = re.search(label + r"%\s+([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
cpu_us = (after - before) / hz * 1e6 / max(requests, 1)
print(f"| {sys.argv[5]} | {rate:,.0f} | {ms('50'):.2f} / {ms('99'):.2f} | {bad.group(1) if bad else 0} | {cpu_us:.1f} |")
PY
done
echo "read $(wc -l < "$WORK/ids") auctions, $(jq .decisions "$WORK/fill.json") decisions in their logs; binary $BIN" >&2
