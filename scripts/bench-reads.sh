#!/usr/bin/env bash
# Reads of one auction by id (GET /auctions/{id}), on one node over loopback:
#   scripts/bench-reads.sh      # about a minute; prints a markdown table
# It starts a release node (--bid-rate-per-bidder 0) on a temp dir, gives it auctions with
# histories (`gavel bench bids`, 96 clients on BENCH_AUCTIONS auctions for BENCH_FILL), then
# drives GET /auctions/{id} round-robin over those auctions with wrk (one thread, 32
# connections, BENCH_DURATION each), first with `?consistency=local`, then linearizable (the
# default: a read index confirmed by the group). Each row also gives the CPU the node spent
# per read (from /proc, user + system), which is steadier than throughput on a shared machine.
# Knobs: BENCH_FILL (15s), BENCH_DURATION (10s), BENCH_AUCTIONS (64, at most 96), BENCH_BIN (the gavel
# binary to measure, for before/after comparisons; default target/release/gavel, built here).
# Installs nothing; needs wrk (apt-get install -y wrk), curl and jq. Every wait is bounded;
# the node and its temp dir are removed on exit and on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

FILL=${BENCH_FILL:-15s}
DURATION=${BENCH_DURATION:-10s}
AUCTIONS=${BENCH_AUCTIONS:-64}
# 96 clients bid, client c on auction c mod BENCH_AUCTIONS: at most 96 auctions get bids.
[[ "$AUCTIONS" =~ ^[1-9][0-9]?$ ]] && [ "$AUCTIONS" -le 96 ] || { echo "bench-reads.sh: BENCH_AUCTIONS must be 1-96, not '$AUCTIONS'" >&2; exit 2; }
URL=http://127.0.0.1:18281
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
NODE=
cleanup() {
  if [ -n "$NODE" ]; then
    kill -TERM "$NODE" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$NODE" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$NODE" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$WORK/secret"
chmod 600 "$WORK/secret"
"$BIN" serve --listen 127.0.0.1:18281 --peer-listen 127.0.0.1:19281 --data-dir "$WORK/data" \
  --auth-secret-file "$WORK/secret" --bid-rate-per-bidder 0 > "$WORK/node.log" 2>&1 &
NODE=$!
for _ in $(seq 1 $((READY_WAIT_S * 5))); do
  curl -sf -o /dev/null "$URL/readyz" && break
  kill -0 "$NODE" 2>/dev/null || { echo "bench-reads.sh: the node exited:" >&2; tail -20 "$WORK/node.log" >&2; exit 1; }
  sleep 0.2
done
curl -sf -o /dev/null "$URL/readyz" || { echo "bench-reads.sh: the node was not ready within ${READY_WAIT_S}s" >&2; exit 1; }

echo "filling: $FILL of bids on $AUCTIONS auctions" >&2
timeout 300 "$TOOL" bench bids --endpoints "$URL" --auth-secret-file "$WORK/secret" \
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

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$NODE/stat"; }

echo "| reads | requests/s | p50 / p99 ms | non-2xx | node CPU µs per read |"
echo "| --- | ---: | ---: | ---: | ---: |"
for mode in local linearizable; do
  query=""
  [ "$mode" = local ] && query="?consistency=local"
  write_script "$query"
  sync
  before=$(cpu_ticks)
  timeout 120 wrk -t1 -c32 -d"$DURATION" --latency -s "$WORK/reads.lua" "$URL" > "$WORK/wrk-$mode.txt"
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
