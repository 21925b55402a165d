#!/usr/bin/env bash
# The customer portal and the finance console in a real browser: headless Chromium (Debian's
# package) driven by Playwright for Python, with axe-core (npm) run inside every page visited.
# Two servers on fresh databases:
#   1. a small company made through the API: a customer upgrades, adds seats and cancels in
#      the portal; the API must then show exactly what the pages showed (flows.py);
#   2. `accrue demo`'s company: the console's MRR/NRR against /v1/reports/nrr, an invoice's
#      lineage, a CSV download, and the README's screenshots (flows.py --demo).
# Usage: tests/browser/run.sh [path to the accrue binary] (default target/release/accrue).
# Screenshots go to $ACCRUE_SCREENSHOTS (default target/screenshots; docs/screenshots holds
# the README's copies).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/accrue}
PG=${ACCRUE_TEST_PG:-postgres://postgres@127.0.0.1:5432}
VENV=target/browser-venv
if ! "$VENV/bin/python" -c 'import playwright' >/dev/null 2>&1; then
  echo "== installing playwright 1.65.2 into $VENV (it drives /usr/bin/chromium; no browser download)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check playwright==1.65.2
fi
AXE=target/axe/node_modules/axe-core/axe.min.js
if [ ! -f "$AXE" ]; then
  echo "== installing axe-core 4.14.1 from npm into target/axe"
  mkdir -p target/axe
  (cd target/axe && npm install --silent --no-audit --no-fund --no-save axe-core@4.14.1 >/dev/null)
fi
export ACCRUE_AXE="$PWD/$AXE"
export ACCRUE_SCREENSHOTS=${ACCRUE_SCREENSHOTS:-target/screenshots}
mkdir -p "$ACCRUE_SCREENSHOTS"

WORK=$(mktemp -d)
SERVERS=()
DBS=()
cleanup() {
  for pid in "${SERVERS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
  for db in "${DBS[@]:-}"; do
    [ -n "$db" ] && psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start <database> <log>: serves the database on a free port; prints the base URL.
start() {
  local port
  port=$(free_port)
  DATABASE_URL="$PG/$1" ACCRUE_BIND="127.0.0.1:$port" RUST_LOG=warn "$BIN" serve >"$2" 2>&1 &
  SERVERS+=($!)
  for _ in $(seq 1 150); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.2; done
  curl -fs --max-time 5 "http://127.0.0.1:$port/readyz" >/dev/null || { echo "the server did not start:" >&2; cat "$2" >&2; exit 1; }
  echo "http://127.0.0.1:$port"
}

echo "== the portal and the console on a company made through the API"
DB="t_browser_$$"
DBS+=("$DB")
DATABASE_URL="$PG/$DB" "$BIN" migrate >/dev/null
DATABASE_URL="$PG/$DB" "$BIN" plans publish >/dev/null
key() { DATABASE_URL="$PG/$DB" "$BIN" keys create "$@"; }
ADMIN=$(key --name browser-admin --scopes admin)
# The keys the flows sign in with or are refused with.
ACCRUE_BROWSER_KEYS=$(python3 -c 'import json,sys; print(json.dumps(dict(zip(["finance","billing","acme_finance","acme","ingest"], sys.argv[1:])) | {"unknown": "acr_" + "0" * 48}))' \
  "$(key --name browser-finance --scopes finance)" \
  "$(key --name browser-billing --scopes billing)" \
  "$(key --name browser-acme-finance --scopes finance,billing --account acme)" \
  "$(key --name browser-acme --scopes billing --account acme)" \
  "$(key --name browser-ingest --scopes ingest)")
export ACCRUE_BROWSER_KEYS
BASE=$(start "$DB" "$WORK/server.log")
"$VENV/bin/python" tests/browser/flows.py "$BASE" "$ADMIN" || { echo "== the browser flows failed; the server's log:" >&2; tail -n 40 "$WORK/server.log" >&2; exit 1; }

echo "== the console on accrue demo's company, and the screenshots"
DEMO="t_browser_demo_$$"
DBS+=("$DEMO")
"$BIN" demo --accounts 120 --months 6 --database-url "$PG/$DEMO" >"$WORK/demo.out" 2>&1 \
  || { echo "accrue demo failed:" >&2; cat "$WORK/demo.out" >&2; exit 1; }
DEMO_KEY=$(grep -o 'acr_[0-9a-f]\{48\}' "$WORK/demo.out" | head -n 1 || true)
[ -n "$DEMO_KEY" ] || { echo "accrue demo printed no key:" >&2; cat "$WORK/demo.out" >&2; exit 1; }
DEMO_BASE=$(start "$DEMO" "$WORK/demo-server.log")
"$VENV/bin/python" tests/browser/flows.py --demo "$DEMO_BASE" "$DEMO_KEY" || { echo "== the demo checks failed; the server's log:" >&2; tail -n 40 "$WORK/demo-server.log" >&2; exit 1; }
echo "== browser tests passed (screenshots in $ACCRUE_SCREENSHOTS)"
