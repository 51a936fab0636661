#!/usr/bin/env bash
# A local three-node Gavel cluster for trying things out:
#   scripts/cluster.sh start    # build (release), start nodes 1-3 on 127.0.0.1, wait until ready
#   scripts/cluster.sh stop     # stop them (SIGTERM)
#   scripts/cluster.sh token    # print an admin token for `gavel cluster` and the API
# Clients: http://127.0.0.1:8081..8083, peers 127.0.0.1:9081..9083, data and logs in
# ./cluster-data (delete it to start over). All nodes share ./cluster-data/secret.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${GAVEL_CLUSTER_DIR:-./cluster-data}
BIN=./target/release/gavel
NODES=(1 2 3)
INITIAL="1=127.0.0.1:9081,2=127.0.0.1:9082,3=127.0.0.1:9083"

start() {
  cargo build --release --quiet
  mkdir -p "$DIR"
  [ -f "$DIR/secret" ] || { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/secret"; chmod 600 "$DIR/secret"; }
  for n in "${NODES[@]}"; do
    if [ -f "$DIR/n$n.pid" ] && kill -0 "$(cat "$DIR/n$n.pid")" 2>/dev/null; then
      echo "node $n already running"; continue
    fi
    setsid "$BIN" serve --node-id "$n" --listen "127.0.0.1:808$n" --peer-listen "127.0.0.1:908$n" \
      --data-dir "$DIR/n$n" --initial-cluster "$INITIAL" --auth-secret-file "$DIR/secret" \
      >>"$DIR/n$n.log" 2>&1 &
    echo $! > "$DIR/n$n.pid"
  done
  for n in "${NODES[@]}"; do
    for _ in $(seq 1 100); do
      curl -sf "http://127.0.0.1:808$n/readyz" >/dev/null && break
      sleep 0.2
    done
    curl -sf "http://127.0.0.1:808$n/readyz" >/dev/null || { echo "node $n is not ready; see $DIR/n$n.log"; exit 1; }
  done
  echo "cluster ready: http://127.0.0.1:8081 http://127.0.0.1:8082 http://127.0.0.1:8083"
  echo "admin token:   export GAVEL_TOKEN=\$($0 token)"
}

stop() {
  for n in "${NODES[@]}"; do
    [ -f "$DIR/n$n.pid" ] || continue
    kill -TERM "$(cat "$DIR/n$n.pid")" 2>/dev/null || true
    rm -f "$DIR/n$n.pid"
  done
}

token() {
  "$BIN" token --auth-secret-file "$DIR/secret" --sub operator --role admin --ttl 12h
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  token) token ;;
  *) echo "usage: $0 start|stop|token" >&2; exit 2 ;;
esac
