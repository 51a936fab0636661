#!/usr/bin/env bash
# A local three-node Gavel cluster for trying things out:
#   scripts/cluster.sh start         # build (release), start nodes 1-3 on 127.0.0.1, wait until ready
#   scripts/cluster.sh start --tls   # the same, secure: peer mutual TLS and HTTPS (see below)
#   scripts/cluster.sh stop          # stop them (SIGTERM)
#   scripts/cluster.sh token         # print an admin token for `gavel cluster` and the API
# Clients: http(s)://127.0.0.1:8081..8083, peers 127.0.0.1:9081..9083, data and logs in
# ./cluster-data (delete it to start over). All nodes share ./cluster-data/secret.
#
# With --tls the certificates are taken from $GAVEL_TLS_DIR (default ./cluster-data/tls:
# ca.pem, and node<N>.pem / node<N>-key.pem for each node); whatever is missing there is made
# with openssl: a CA, and per node a certificate for IP 127.0.0.1 with the serverAuth and
# clientAuth usages (the same commands as README, "Running securely"). Each node uses its
# certificate for both ports. Clients then need the CA: curl --cacert, gavel ... --cacert.
# GAVEL_BIN runs another binary instead of building the release one.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${GAVEL_CLUSTER_DIR:-./cluster-data}
TLS_DIR=${GAVEL_TLS_DIR:-$DIR/tls}
BIN=${GAVEL_BIN:-./target/release/gavel}
NODES=(1 2 3)
INITIAL="1=127.0.0.1:9081,2=127.0.0.1:9082,3=127.0.0.1:9083"
TLS=false
SCHEME=http
CURL=(curl -sf)

# Makes whatever certificate of the CA and the nodes is missing in $TLS_DIR.
make_certs() {
  command -v openssl >/dev/null || { echo "--tls needs openssl to make certificates (or put them in $TLS_DIR)" >&2; exit 1; }
  mkdir -p "$TLS_DIR"
  if [ ! -f "$TLS_DIR/ca.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "$TLS_DIR/ca-key.pem" -out "$TLS_DIR/ca.pem" -days 3650 -subj "/CN=gavel cluster CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  fi
  for n in "${NODES[@]}"; do
    [ -f "$TLS_DIR/node$n.pem" ] && continue
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "$TLS_DIR/node$n-key.pem" -out "$TLS_DIR/node$n.csr" -subj "/CN=gavel node $n" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n' \
      > "$TLS_DIR/node$n.ext"
    openssl x509 -req -in "$TLS_DIR/node$n.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca-key.pem" \
      -CAcreateserial -days 825 -extfile "$TLS_DIR/node$n.ext" -out "$TLS_DIR/node$n.pem" 2>/dev/null
    rm -f "$TLS_DIR/node$n.csr" "$TLS_DIR/node$n.ext"
  done
  chmod 600 "$TLS_DIR"/*-key.pem
}

# The TLS flags of node $1 (none without --tls).
tls_flags() {
  $TLS || return 0
  local n=$1
  echo --peer-cert-file "$TLS_DIR/node$n.pem" --peer-key-file "$TLS_DIR/node$n-key.pem" \
    --peer-trusted-ca-file "$TLS_DIR/ca.pem" --cert-file "$TLS_DIR/node$n.pem" --key-file "$TLS_DIR/node$n-key.pem"
}

start() {
  [ -n "${GAVEL_BIN:-}" ] || cargo build --release --quiet
  mkdir -p "$DIR"
  if $TLS; then make_certs; fi
  [ -f "$DIR/secret" ] || { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/secret"; chmod 600 "$DIR/secret"; }
  for n in "${NODES[@]}"; do
    if [ -f "$DIR/n$n.pid" ] && kill -0 "$(cat "$DIR/n$n.pid")" 2>/dev/null; then
      echo "node $n already running"; continue
    fi
    # shellcheck disable=SC2046 # tls_flags prints separate words (paths without spaces)
    setsid "$BIN" serve --node-id "$n" --listen "127.0.0.1:808$n" --peer-listen "127.0.0.1:908$n" \
      --data-dir "$DIR/n$n" --initial-cluster "$INITIAL" --auth-secret-file "$DIR/secret" \
      $(tls_flags "$n") >>"$DIR/n$n.log" 2>&1 &
    echo $! > "$DIR/n$n.pid"
  done
  for n in "${NODES[@]}"; do
    for _ in $(seq 1 100); do
      "${CURL[@]}" "$SCHEME://127.0.0.1:808$n/readyz" >/dev/null && break
      sleep 0.2
    done
    "${CURL[@]}" "$SCHEME://127.0.0.1:808$n/readyz" >/dev/null || { echo "node $n is not ready; see $DIR/n$n.log"; exit 1; }
  done
  echo "cluster ready: $SCHEME://127.0.0.1:8081 $SCHEME://127.0.0.1:8082 $SCHEME://127.0.0.1:8083"
  echo "admin token:   export GAVEL_TOKEN=\$($0 token)"
  if $TLS; then
    echo "trust the CA:  curl --cacert $TLS_DIR/ca.pem ...; gavel cluster status --endpoint https://127.0.0.1:8081 --cacert $TLS_DIR/ca.pem"
  fi
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

if [ "${2:-}" = "--tls" ]; then
  TLS=true
  SCHEME=https
  CURL=(curl -sf --cacert "$TLS_DIR/ca.pem")
elif [ -n "${2:-}" ]; then
  echo "usage: $0 start [--tls]|stop|token" >&2; exit 2
fi

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  token) token ;;
  *) echo "usage: $0 start [--tls]|stop|token" >&2; exit 2 ;;
esac
