#!/usr/bin/env bash
# (A copy of ../shared/citus/cluster.sh, kept here so CI on a clean clone has it; it raises
# max_worker_processes: Citus runs a maintenance worker per database, and the tests make many.)
# A local Citus cluster for tests: a coordinator and two workers on one machine, on the system's
# PostgreSQL 15, built from the Citus 12.1.12 source beside this script (Citus is not a Debian
# package; 12.1.x builds against PostgreSQL 15 unchanged).
#
#   cluster.sh up [DB]      build+install Citus if missing, start coordinator :9700 and workers
#                           :9701 :9702, create DB (default accrue) with the extension on all three
#                           and register the workers. Prints the coordinator's URL last.
#   cluster.sh down         stop and drop the three clusters
#   cluster.sh url [DB]     print postgres://postgres@127.0.0.1:9700/DB
#
# Needs root (apt-get, pg_createcluster). Takes about 2-3 minutes the first time (build), seconds after.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PGV=${CITUS_PG_VERSION:-15}
PORTS=(9700 9701 9702)
DATA=${CITUS_DATA_DIR:-/var/tmp/citus-test}
DB=${2:-accrue}
url() { echo "postgres://postgres@127.0.0.1:${PORTS[0]}/$1"; }

install_citus() {
  [ -f "/usr/lib/postgresql/$PGV/lib/citus.so" ] && return 0
  echo "== building Citus 12.1.12 for PostgreSQL $PGV" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-server-dev-$PGV" libcurl4-openssl-dev \
    liblz4-dev libzstd-dev libkrb5-dev libssl-dev build-essential >/dev/null
  src=$(mktemp -d)
  tar -xzf "$here/citus-12.1.12.tar.gz" -C "$src"
  (cd "$src/citus-12.1.12" && ./configure >/dev/null && make -j"$(nproc)" >/dev/null && make install >/dev/null)
  rm -rf "$src"
}

up() {
  install_citus
  mkdir -p "$DATA"; chown postgres:postgres "$DATA"
  for i in 0 1 2; do
    name=citus$i; port=${PORTS[$i]}
    if ! pg_lsclusters -h | awk '{print $2}' | grep -qx "$name"; then
      pg_createcluster "$PGV" "$name" -p "$port" -d "$DATA/$name" --start-conf=manual \
        -o shared_preload_libraries=citus -o max_connections=200 -o shared_buffers=128MB \
        -o max_worker_processes=64 \
        -o synchronous_commit=on -- --auth=trust >/dev/null
    fi
    pg_ctlcluster --skip-systemctl-redirect "$PGV" "$name" start 2>/dev/null || true
  done
  for i in 0 1 2; do
    for _ in $(seq 1 60); do pg_isready -h 127.0.0.1 -p "${PORTS[$i]}" -q && break; sleep 0.5; done
    psql -h 127.0.0.1 -p "${PORTS[$i]}" -U postgres -qAtc "SELECT 1 FROM pg_database WHERE datname='$DB'" postgres | grep -q 1 \
      || psql -h 127.0.0.1 -p "${PORTS[$i]}" -U postgres -qc "CREATE DATABASE \"$DB\"" postgres >/dev/null
    psql -h 127.0.0.1 -p "${PORTS[$i]}" -U postgres -qc "CREATE EXTENSION IF NOT EXISTS citus" "$DB" >/dev/null
  done
  c="psql -h 127.0.0.1 -p ${PORTS[0]} -U postgres -qAt -d $DB"
  $c -c "SELECT citus_set_coordinator_host('127.0.0.1', ${PORTS[0]})" >/dev/null
  for p in "${PORTS[1]}" "${PORTS[2]}"; do
    $c -c "SELECT 1 FROM pg_dist_node WHERE nodeport=$p" | grep -q 1 || $c -c "SELECT citus_add_node('127.0.0.1', $p)" >/dev/null
  done
  echo "== Citus $($c -c "SELECT extversion FROM pg_extension WHERE extname='citus'"): coordinator :${PORTS[0]}, workers: $($c -c "SELECT string_agg(nodeport::text, ',') FROM pg_dist_node WHERE groupid > 0")" >&2
  url "$DB"
}

down() {
  for i in 0 1 2; do
    pg_lsclusters -h | awk '{print $2}' | grep -qx "citus$i" && pg_dropcluster --stop "$PGV" "citus$i" || true
  done
  rm -rf "$DATA"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  url) url "$DB" ;;
  *) echo "usage: $0 up [DB] | down | url [DB]" >&2; exit 2 ;;
esac
