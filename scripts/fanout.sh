#!/usr/bin/env bash
# Live fan-out at scale on this machine: 3 voters and N fan-out learners on loopback, then
# `gavel bench viewers` spreads the viewers of one hot auction over all of them, bids every
# 250 ms for 30 s, ends the auction and reports (per node and in total).
#
#   scripts/fanout.sh                       # 100,000 viewers over 3 voters + 3 learners
#   scripts/fanout.sh --kill --learners 4   # also SIGKILL the last learner halfway through
#   scripts/fanout.sh --viewers 20000 --tick-ms 5000
#   scripts/fanout.sh --viewers-on learners # viewers on the learners only, bids to a voter
#   scripts/fanout.sh --fanout-nice 0       # fan-out and clients at the bids' priority
#
# Every process may hold at most 20,000 open files here, so a node serves at most
# VIEWERS_MAX_PER_NODE viewers: with --kill, the survivors must be able to take the dead
# node's viewers (100,000 over 6 survivors fits; over 5 it does not, hence --learners 4).
# Everything runs on 127.0.0.1 and is stopped and deleted on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

VIEWERS=100000
LEARNERS=3
KILL=0
VIEWERS_ON=all
# Connection attempts in flight per client process (first connects and reconnects alike).
CONNECT_CONCURRENCY=64
TICK_MS=1000
BIDS=120
BID_INTERVAL_MS=250
VIEWERS_MAX_PER_NODE=19000
VIEWERS_PER_PROCESS=10000
RAFT_GROUPS=4
# The nodes' fan-out threads run at this niceness (`--fanout-nice`), and so do the bench's
# client processes (`--client-nice`), which stand in for the viewers' own machines: bids and
# consensus go first on the shared cores, and fan-out and clients split the rest as they
# would at equal priority. With only the fan-out lowered, the clients took its CPU and bids
# gained nothing (docs/PERFORMANCE.md, 2026-12-02 and 2026-12-03).
FANOUT_NICE=10

while [ $# -gt 0 ]; do
  case "$1" in
    --viewers) VIEWERS=$2; shift 2 ;;
    --learners) LEARNERS=$2; shift 2 ;;
    --tick-ms) TICK_MS=$2; shift 2 ;;
    --bids) BIDS=$2; shift 2 ;;
    --kill) KILL=1; shift ;;
    --viewers-on) VIEWERS_ON=$2; shift 2 ;;
    --connect-concurrency) CONNECT_CONCURRENCY=$2; shift 2 ;;
    --viewers-per-process) VIEWERS_PER_PROCESS=$2; shift 2 ;;
    --fanout-nice) FANOUT_NICE=$2; shift 2 ;;
    *) echo "usage: $0 [--viewers N] [--learners K] [--tick-ms MS] [--bids N] [--kill] [--viewers-on all|learners] [--connect-concurrency N] [--viewers-per-process N] [--fanout-nice N]" >&2; exit 2 ;;
  esac
done

BIN=./target/release/gavel
DIR=$(mktemp -d /tmp/gavel-fanout.XXXXXX)
PIDS=()

cleanup() {
  # The report is out by now; what is left on stderr is bash announcing the nodes it killed.
  exec 2>/dev/null
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

cargo build --release --quiet
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/secret"
chmod 600 "$DIR/secret"

# Each node's fan-out gets one thread (`--fanout-threads`, default one per core): the six nodes
# share two cores, and with two threads each their twelve fan-out threads contended for them
# (bid-to-last-viewer p50 0.93 s against 0.67-0.79 s with one, docs/PERFORMANCE.md).
FANOUT_THREADS=1

start_node() { # id, extra flags...
  local id=$1; shift
  "$BIN" serve --node-id "$id" --listen "127.0.0.1:$((8180 + id))" \
    --peer-listen "127.0.0.1:$((9180 + id))" --data-dir "$DIR/n$id" \
    --auth-secret-file "$DIR/secret" --groups "$RAFT_GROUPS" --bid-rate-per-bidder 0 \
    --viewers-max "$VIEWERS_MAX_PER_NODE" --fanout-threads "$FANOUT_THREADS" --fanout-nice "$FANOUT_NICE" "$@" \
    >"$DIR/n$id.log" 2>&1 &
  PIDS+=($!)
}

await_ready() { # id
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$((8180 + $1))/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "node $1 is not ready; its log:" >&2; cat "$DIR/n$1.log" >&2; exit 1
}

INITIAL="1=127.0.0.1:9181,2=127.0.0.1:9182,3=127.0.0.1:9183"
for id in 1 2 3; do start_node "$id" --initial-cluster "$INITIAL"; done
for id in 1 2 3; do await_ready "$id"; done

TOKEN=$("$BIN" token --auth-secret-file "$DIR/secret" --sub fanout --role admin)
ENDPOINTS="http://127.0.0.1:8181,http://127.0.0.1:8182,http://127.0.0.1:8183"
LEARNER_ENDPOINTS=""
for id in $(seq 4 $((3 + LEARNERS))); do
  start_node "$id" --join
  "$BIN" cluster add --endpoint http://127.0.0.1:8181 --token "$TOKEN" --id "$id" \
    --client-addr "127.0.0.1:$((8180 + id))" --peer-addr "127.0.0.1:$((9180 + id))" --learner >/dev/null
  await_ready "$id"
  ENDPOINTS="$ENDPOINTS,http://127.0.0.1:$((8180 + id))"
  LEARNER_ENDPOINTS="${LEARNER_ENDPOINTS:+$LEARNER_ENDPOINTS,}http://127.0.0.1:$((8180 + id))"
done
# The node processes behind ENDPOINTS, in the same order: the report says what their CPU did.
SERVER_PIDS=$(IFS=,; echo "${PIDS[*]}")
case "$VIEWERS_ON" in
  all) ;;
  learners) ENDPOINTS=$LEARNER_ENDPOINTS; SERVER_PIDS=$(IFS=,; echo "${PIDS[*]:3}") ;;
  *) echo "--viewers-on takes all or learners" >&2; exit 2 ;;
esac

KILL_FLAGS=()
if [ "$KILL" = 1 ]; then
  KILL_FLAGS=(--kill-pid "${PIDS[-1]}")
  # The bench kills it: bash need not announce that mid-report.
  disown "${PIDS[-1]}"
fi

echo "fan-out: $VIEWERS viewers on $VIEWERS_ON of 3 voters + $LEARNERS learners, a bid every ${BID_INTERVAL_MS} ms x $BIDS, tickMs=$TICK_MS, fan-out and clients at nice $FANOUT_NICE$([ "$KILL" = 1 ] && echo ', killing the last learner halfway')"
# Handshakes the kernel dropped because a listener's accept queue was full: each such client
# waits out TCP's retransmission backoff, so this must stay near 0 (counted machine-wide).
listen_overflows() {
  command -v nstat >/dev/null 2>&1 || { echo "?"; return; }
  nstat -asz TcpExtListenOverflows | awk '/ListenOverflows/ { print $2 }'
}
OVERFLOWS_BEFORE=$(listen_overflows)

"$BIN" bench viewers --endpoints "$ENDPOINTS" --bid-endpoint http://127.0.0.1:8181 \
  --auth-secret-file "$DIR/secret" --server-pids "$SERVER_PIDS" \
  --viewers "$VIEWERS" --viewers-per-process "$VIEWERS_PER_PROCESS" \
  --connect-concurrency "$CONNECT_CONCURRENCY" --client-nice "$FANOUT_NICE" \
  --bids "$BIDS" --bid-interval-ms "$BID_INTERVAL_MS" --tick-ms "$TICK_MS" "${KILL_FLAGS[@]}"
OVERFLOWS_AFTER=$(listen_overflows)
if [ "$OVERFLOWS_BEFORE" != "?" ]; then
  echo "listen queue overflows during the run (TcpExtListenOverflows): $((OVERFLOWS_AFTER - OVERFLOWS_BEFORE))"
fi
