#!/usr/bin/env bash
# Gavel against etcd, the same shapes driven by one tool (`gavel bench bids`), on loopback:
#   scripts/bench.sh            # about 10 minutes; prints markdown tables for the README
# It starts a three-node Gavel (release build, --bid-rate-per-bidder 0, --groups 3,
# --worker-threads 1) and a
# three-member etcd (fsync on, as by default), then runs each shape on Gavel and right after
# on etcd (as puts through its v3 JSON gateway), each run on a settled disk: a pair of runs
# sees the same machine, whose speed drifts by tens of percent over minutes. Gavel goes first
# because the open-loop shape runs both at 80% of Gavel's measured open-loop peak. Shapes:
# 3 x 32 clients (spread over all members), the same on one hot auction, 3 x 400 (a spike: no
# warm-up), the same spike on one hot auction (an auction's last seconds), one member with 96
# clients, one sequential client sending to the leader of its auction (etcd: to its leader)
# and one sending to another member, which forwards (`--via`:
# otherwise where each system's elections landed would decide which of the two is measured);
# open loop offered twice the best closed-loop rate (open-peak: what each system
# decides when overloaded), then open loop at 80% of Gavel's open-peak, and etcd alone at 80%
# of its own open-peak (Gavel's 80% overloads it); last, the latency curve: the open loop on
# both at 10%, 15%, 20%, 30%, 40% and 60% of Gavel's open-peak (BENCH_CURVE_DURATION each), up to
# which offered rate each keeps the open-loop target's bounds (p50 <= 2 ms, p99 <= 10 ms).
# Knobs: BENCH_DURATION (20s), BENCH_CURVE_DURATION (10s), BENCH_WARMUP (2s),
# BENCH_AUCTIONS (128), BENCH_GROUPS (3), BENCH_OUT (where the JSON
# summaries and PNG plots stay; default target/bench). Each run also reports the CPU the
# servers (not the load generator) spent in its measured window per decision (`--server-pids`).
# Why 3 groups and not the serve default (16): three nodes on two cores have no parallelism
# to spend on more groups, and 96 clients over 16 groups fill each Raft entry with about 3
# bids, so every bid pays a third of an entry's fixed cost; 3 groups keep one leader a node.
# Why one HTTP thread a node: three nodes on two cores waste CPU waking each other's idle
# threads (docs/OPERATIONS.md, "Threads" and "Choosing the group count", has both
# measurements). etcd keeps its defaults: GOMAXPROCS=1 made it slower (7,793 against
# 8,214-8,361 puts/s in the spread shape, 2026-12-04).
# Installs nothing; needs etcd (apt-get install -y etcd-server), curl and jq. Every wait is
# bounded; processes and temp dirs are removed on exit and on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${BENCH_DURATION:-20s}
CURVE_DURATION=${BENCH_CURVE_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-2s}
AUCTIONS=${BENCH_AUCTIONS:-128}
GROUPS_AT_INIT=${BENCH_GROUPS:-3}
[[ "$GROUPS_AT_INIT" =~ ^[1-9][0-9]{0,3}$ ]] && [ "$GROUPS_AT_INIT" -le 1024 ] || { echo "bench.sh: BENCH_GROUPS must be 1-1024, not '$GROUPS_AT_INIT'" >&2; exit 2; }
OUT=${BENCH_OUT:-target/bench}
BIN=./target/release/gavel
# Loopback ports: Gavel clients 18181-18183, peers 19181-19183; etcd clients 23791-23793,
# peers 23801-23803.
GAVEL_URLS=(http://127.0.0.1:18181 http://127.0.0.1:18182 http://127.0.0.1:18183)
ETCD_URLS=(http://127.0.0.1:23791 http://127.0.0.1:23792 http://127.0.0.1:23793)
READY_WAIT_S=60
# One run may take its duration, warm-up, request timeout and setup; this bounds it all.
RUN_TIMEOUT_S=300
ETCD_QUOTA_BYTES=$((2 * 1024 * 1024 * 1024))

need() {
  command -v "$1" >/dev/null || { echo "bench.sh: $1 is missing; install it: apt-get install -y $2" >&2; exit 2; }
}
need etcd etcd-server
need curl curl
need jq jq

WORK=$(mktemp -d -t gavel-bench.XXXXXX)
GAVEL_PIDS=()  # servers
ETCD_PIDS=()
RUNNING=  # the `timeout` of the load run in progress, if any
# Stops the load run and the servers: TERM, then KILL after 10 s.
stop_all() {
  local pids=("${GAVEL_PIDS[@]}" "${ETCD_PIDS[@]}")
  [ -n "$RUNNING" ] && pids+=("$RUNNING")
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  GAVEL_PIDS=()
  ETCD_PIDS=()
  RUNNING=
}
cleanup() {
  stop_all
  # What the nodes logged that explains a slow stretch outlives the temp dir: warnings and
  # errors (stalls: `ran its ready tasks late`; sheds, timeouts), snapshot points (each flushes
  # sled, a burst of writes on the disk every node shares here) and copies packed or installed.
  if [ -d "$OUT" ]; then
    for n in 1 2 3; do
      [ -f "$WORK/gavel$n.log" ] && grep -a 'WARN\|ERROR\|took snapshot\|packed snapshot\|installed snapshot' "$WORK/gavel$n.log" >"$OUT/gavel$n-events.log" || true
    done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
# Long steps run in the background and are awaited with `wait`, which a signal interrupts, so
# Ctrl-C ends the script at once (bash defers traps until a foreground command returns).
trap 'echo "bench.sh: interrupted" >&2; exit 130' INT TERM

# A run writes hundreds of megabytes; left dirty in the page cache, they are written back while
# the next run goes, and its fsyncs wait behind them (a run whose first shapes started that way
# used 0.9-1.5 cores instead of 1.5-1.6 and the hot auction fell by half). Each run starts on a
# settled disk.
settle_disk() {
  timeout 300 sync || echo "bench.sh: sync did not finish within 300 s; measuring anyway" >&2
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in 18181 18182 18183 19181 19182 19183 23791 23792 23793 23801 23802 23803; do
  port_free "$port" || { echo "bench.sh: port $port is in use" >&2; exit 1; }
done
# 3 x 400 clients are 1,200 sockets in the load process, and as many in the servers.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

wait_url() { # URL LOG: until URL answers 2xx, at most READY_WAIT_S
  for _ in $(seq 1 $((READY_WAIT_S * 5))); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.2
  done
  echo "bench.sh: $1 was not ready within ${READY_WAIT_S}s; last lines of $2:" >&2
  tail -20 "$2" >&2
  exit 1
}

start_gavel() {
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$WORK/secret"
  chmod 600 "$WORK/secret"
  local initial="1=127.0.0.1:19181,2=127.0.0.1:19182,3=127.0.0.1:19183"
  for n in 1 2 3; do
    "$BIN" serve --node-id "$n" --listen "127.0.0.1:1818$n" --peer-listen "127.0.0.1:1918$n" \
      --data-dir "$WORK/gavel$n" --initial-cluster "$initial" --auth-secret-file "$WORK/secret" \
      --bid-rate-per-bidder 0 --groups "$GROUPS_AT_INIT" --worker-threads 1 >"$WORK/gavel$n.log" 2>&1 &
    GAVEL_PIDS+=($!)
  done
  for n in 1 2 3; do wait_url "${GAVEL_URLS[$((n - 1))]}/readyz" "$WORK/gavel$n.log"; done
  wait_leaders_spread
}

# A new cluster's groups are led by whoever won the first elections (often one node leads most
# of them); placement then moves leaders to spread them, one transfer at a time per node, once
# a leadership is 10 s old. Measuring before that measures start-up: wait for every node to
# lead its share, at most READY_WAIT_S.
wait_leaders_spread() {
  local token share leading
  token=$("$BIN" token --auth-secret-file "$WORK/secret" --sub bench --role admin)
  share=$((GROUPS_AT_INIT / 3))
  leading=$((GROUPS_AT_INIT < 3 ? GROUPS_AT_INIT : 3))
  for _ in $(seq 1 $((READY_WAIT_S * 2))); do
    if curl -sf -H "Authorization: Bearer $token" "${GAVEL_URLS[0]}/cluster" |
      jq -e --argjson share "$share" --argjson leading "$leading" \
        '[.groups[].leader] | group_by(.) | map(select(.[0] != null) | length) | (length == $leading and min >= $share)' \
        >/dev/null; then
      return 0
    fi
    sleep 0.5
  done
  echo "bench.sh: leaders did not spread over the nodes within ${READY_WAIT_S}s; measuring anyway" >&2
}

start_etcd() {
  local initial="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
  for n in 1 2 3; do
    etcd --name "e$n" --data-dir "$WORK/etcd$n" \
      --listen-client-urls "http://127.0.0.1:2379$n" --advertise-client-urls "http://127.0.0.1:2379$n" \
      --listen-peer-urls "http://127.0.0.1:2380$n" --initial-advertise-peer-urls "http://127.0.0.1:2380$n" \
      --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token gavel-bench \
      --quota-backend-bytes "$ETCD_QUOTA_BYTES" --logger zap --log-level warn >"$WORK/etcd$n.log" 2>&1 &
    ETCD_PIDS+=($!)
  done
  for n in 1 2 3; do wait_url "${ETCD_URLS[$((n - 1))]}/health" "$WORK/etcd$n.log"; done
}

# run TARGET SHAPE ARGS...: one `gavel bench bids` run; its JSON summary goes to $OUT.
run() {
  local target=$1 shape=$2; shift 2
  local extra
  # The servers' CPU in the measured window (the load generator's is left out).
  if [ "$target" = gavel ]; then
    extra=(--auth-secret-file "$WORK/secret" --server-pids "$(join "${GAVEL_PIDS[@]}")")
  else
    extra=(--server-pids "$(join "${ETCD_PIDS[@]}")")
  fi
  echo "== $target $shape: gavel bench bids $*" >&2
  timeout "$RUN_TIMEOUT_S" "$BIN" bench bids --target "$target" "${extra[@]}" \
    --duration "${RUN_DURATION:-$DURATION}" --json --plot "$OUT/$target-$shape.png" "$@" >"$OUT/$target-$shape.json" &
  RUNNING=$!
  local status=0
  wait "$RUNNING" || status=$?
  RUNNING=
  if [ "$status" -ne 0 ]; then
    echo "   FAILED (see above); the table marks it" >&2
    echo '{"failed": true}' >"$OUT/$target-$shape.json"
    return 0
  fi
  jq -r '"   \(.unit)/s \(.decisions_per_s|floor)  accepted \(.accepted) rejected \(.rejected) shed \(.shed) errors \(.errors) unsent \(.unsent)  p50 \(.latency_ms.p50) p99 \(.latency_ms.p99) p99.9 \(.latency_ms.p999) max \(.latency_ms.max) ms  servers \(.server_cpu.cores * 100 | round / 100) cores, \(.server_cpu.us_per_decision | round) us each"' \
    "$OUT/$target-$shape.json" >&2
}

join() { local IFS=,; echo "$*"; }
# endpoints_of TARGET all|one: every member's URL, or the first member's.
endpoints_of() {
  local urls
  if [ "$1" = gavel ]; then urls=("${GAVEL_URLS[@]}"); else urls=("${ETCD_URLS[@]}"); fi
  if [ "$2" = one ]; then echo "${urls[0]}"; else join "${urls[@]}"; fi
}
# pair SHAPE all|one ARGS...: the shape on Gavel, then on etcd, each on a settled disk.
pair() {
  local shape=$1 which=$2 target
  shift 2
  for target in gavel etcd; do
    settle_disk
    run "$target" "$shape" --endpoints "$(endpoints_of "$target" "$which")" "$@"
  done
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
cargo build --release --quiet &
wait $!
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.png

start_gavel
start_etcd
pair 3x32 all --connections 96 --auctions "$AUCTIONS" --warmup "$WARMUP"
pair 3x32-hot all --connections 96 --hot --warmup "$WARMUP"
pair 3x400-spike all --connections 1200 --auctions "$AUCTIONS" --warmup 0s
pair 3x400-hot-spike all --connections 1200 --hot --warmup 0s
pair 1x96 one --connections 96 --auctions "$AUCTIONS" --warmup "$WARMUP"
pair sequential-leader all --via leader --connections 1 --auctions 1 --warmup "$WARMUP"
pair sequential-follower all --via follower --connections 1 --auctions 1 --warmup "$WARMUP"
# The open loop's peak is its own workload's (128 auctions over the three members, clients
# racing on each): offered at twice the best closed-loop rate, Gavel decides what it can. 80%
# of a closed shape's peak would be another workload's: the hot auction's (mostly cheap
# rejections) overloads it, the spread shape's (every bid accepted, 96 clients) underloads it.
CLOSED_PEAK=$(jq -s 'map(if .failed then 0 else .decisions_per_s end) | max | floor' "$OUT"/gavel-*.json)
OVERLOAD=$((CLOSED_PEAK * 2))
[ "$OVERLOAD" -ge 1 ] || { echo "bench.sh: Gavel's peak was $CLOSED_PEAK/s; no open-loop rate" >&2; exit 1; }
pair open-peak all --rate "$OVERLOAD" --connections 1024 --auctions "$AUCTIONS" --warmup "$WARMUP"
PEAK=$(jq -r 'if .failed then 0 else .decisions_per_s | floor end' "$OUT/gavel-open-peak.json")
RATE=$((PEAK * 8 / 10))
[ "$RATE" -ge 1 ] || { echo "bench.sh: Gavel's open-loop peak was $PEAK/s; no open-loop rate" >&2; exit 1; }
pair open-80 all --rate "$RATE" --connections 1024 --auctions "$AUCTIONS" --warmup "$WARMUP"
# Gavel's 80% overloads etcd, whose peak is lower: etcd also runs at 80% of its own peak, so
# that the open loop's latency target can be read against what etcd does near its capacity.
ETCD_PEAK=$(jq -r 'if .failed then 0 else .decisions_per_s | floor end' "$OUT/etcd-open-peak.json")
ETCD_RATE=$((ETCD_PEAK * 8 / 10))
if [ "$ETCD_RATE" -ge 1 ]; then
  settle_disk
  run etcd open-80-own --endpoints "$(endpoints_of etcd all)" --rate "$ETCD_RATE" --connections 1024 --auctions "$AUCTIONS" --warmup "$WARMUP"
else
  echo '{"failed": true}' >"$OUT/etcd-open-80-own.json"
fi
# The curve is the same open loop at lower rates, the same rate for both systems; shorter runs,
# since it has six points on each.
CURVE_PERCENTS=(10 15 20 30 40 60)
RUN_DURATION=$CURVE_DURATION
for percent in "${CURVE_PERCENTS[@]}"; do
  pair "open-$percent" all --rate $((PEAK * percent / 100)) --connections 1024 --auctions "$AUCTIONS" --warmup "$WARMUP"
done
RUN_DURATION=
stop_all

cell() { # FILE: "rate | p50 / p99 / p99.9 ms", and how many requests failed
  jq -r 'def ms: . * 10 | round / 10;
    if .failed then "failed | -" else "\(.decisions_per_s|floor) | \(.latency_ms.p50|ms) / \(.latency_ms.p99|ms) / \(.latency_ms.p999|ms)"
    + (if (.shed + .errors + .unsent) > 0 then " (\(.shed + .errors + .unsent) failed)" else "" end) end' "$1"
}
cpu() { # FILE: the servers' CPU per decision in µs
  jq -r 'if .failed then "-" else .server_cpu.us_per_decision | round end' "$1"
}
# The open-loop target's latency bounds (issue 8), with nothing shed or failed.
P50_BOUND_MS=2
P99_BOUND_MS=10
within() { # FILE: "yes" if the run kept the bounds
  jq -r --argjson p50 "$P50_BOUND_MS" --argjson p99 "$P99_BOUND_MS" \
    'if .failed then "-" elif .latency_ms.p50 <= $p50 and .latency_ms.p99 <= $p99 and (.shed + .errors + .unsent) == 0 then "yes" else "no" end' "$1"
}
ratio() { # GAVEL ETCD FIELD
  jq -rn --slurpfile g "$1" --slurpfile e "$2" \
    "if (\$g[0].failed or \$e[0].failed) then \"-\" elif \$e[0]$3 > 0 then (\$g[0]$3 / \$e[0]$3 * 100 | round / 100) else \"-\" end"
}
echo
echo "$(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average $LOAD_BEFORE before the run and $(cut -d' ' -f1-3 /proc/loadavg) after; duration $DURATION, warm-up $WARMUP (spike: none), $AUCTIONS auctions/keys, Gavel with $GROUPS_AT_INIT Raft groups and one HTTP thread a node; open loop at $RATE/s (80% of Gavel's open-loop peak $PEAK/s, measured offering $OVERLOAD/s, twice its best closed-loop rate)"
echo
echo "| shape | Gavel decisions/s | Gavel p50 / p99 / p99.9 ms | etcd puts/s | etcd p50 / p99 / p99.9 ms | throughput Gavel/etcd | p99 Gavel/etcd | server CPU µs per decision / put, Gavel vs etcd | CPU Gavel/etcd |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for shape in 3x32 3x32-hot 3x400-spike 3x400-hot-spike 1x96 sequential-leader sequential-follower open-peak open-80; do
  g="$OUT/gavel-$shape.json" e="$OUT/etcd-$shape.json"
  echo "| $shape | $(cell "$g") | $(cell "$e") | $(ratio "$g" "$e" .decisions_per_s) | $(ratio "$g" "$e" .latency_ms.p99) | $(cpu "$g") vs $(cpu "$e") | $(ratio "$g" "$e" .server_cpu.us_per_decision) |"
done
echo
echo "etcd at 80% of its own open-loop peak ($ETCD_RATE/s of $ETCD_PEAK/s): $(cell "$OUT/etcd-open-80-own.json" | sed 's/ | /\/s, p50 \/ p99 \/ p99.9 /') ms, server CPU $(cpu "$OUT/etcd-open-80-own.json") µs a put"
echo
echo "The open loop below the peak, the same offered rate on both ($CURVE_DURATION each, 80%: the table's open-80, $DURATION); \"within\": p50 <= $P50_BOUND_MS ms and p99 <= $P99_BOUND_MS ms, nothing failed:"
echo
echo "| offered /s | share of Gavel's open-peak | Gavel p50 / p99 / p99.9 ms | within | etcd p50 / p99 / p99.9 ms | within | server CPU µs per decision / put, Gavel vs etcd |"
echo "| ---: | ---: | ---: | --- | ---: | --- | ---: |"
for percent in "${CURVE_PERCENTS[@]}" 80; do
  g="$OUT/gavel-open-$percent.json" e="$OUT/etcd-open-$percent.json"
  echo "| $((PEAK * percent / 100)) | $percent% | $(cell "$g" | cut -d'|' -f2 | sed 's/^ //') | $(within "$g") | $(cell "$e" | cut -d'|' -f2 | sed 's/^ //') | $(within "$e") | $(cpu "$g") vs $(cpu "$e") |"
done
echo
echo "Runtime stalls past 100 ms the nodes warned of (\`ran its ready tasks late\`, at most one per runtime per 10 s): $(for n in 1 2 3; do echo -n "node $n: $(grep -ac 'ran its ready tasks late' "$WORK/gavel$n.log" || true); "; done)"
echo
echo "JSON summaries and latency plots: $OUT; the nodes' warnings, snapshots and snapshot copies: $OUT/gavel{1,2,3}-events.log"
