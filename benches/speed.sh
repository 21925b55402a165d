#!/usr/bin/env bash
# Speed against what this machine can do at best, each figure beside its reference in the same
# run: the release binary (`accrue serve`) under wrk, on a fresh database.
#
#   1. durable batched ingestion: 1,000-event batches over 8 connections, to one account and to
#      1,000 accounts, beside COPY of the same events into the same `events` table of another
#      fresh database on the same server by 8 connections; each run (accrue's and COPY's)
#      starts on empty event tables after a checkpoint; three alternating rounds, the median
#      round reported;
#   2. single-event ingestion at 64 connections (events acknowledged per second);
#   3. limit checks at 64 connections beside GET /healthz at 64 connections (req/s and p99),
#      in three alternating rounds, the median round reported;
#   4. the server's resident memory: its peak during the ingestion runs.
#
# Every acknowledged event is committed before its answer; the script checks that the
# database holds at least as many events as wrk saw acknowledged, and that no answer failed.
#
# Usage: benches/speed.sh           PostgreSQL at ACCRUE_TEST_PG (default 127.0.0.1:5432)
#        benches/speed.sh citus     the local Citus cluster (deploy/citus/cluster.sh up first):
#                                   coordinator :9700, workers :9701 and :9702
# Knobs: SPEED_SECONDS (10, each wrk run), SPEED_CHECK_ACCOUNTS (1000).
# Needs: wrk (apt-get install wrk), psql, python3, the release binary (built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-single}
SECS=${SPEED_SECONDS:-10}
CHECK_ACCOUNTS=${SPEED_CHECK_ACCOUNTS:-1000}
BIN=target/release/accrue
[ -x "$BIN" ] || cargo build --release --bin accrue
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }

case "$MODE" in
  single) PG=${ACCRUE_TEST_PG:-postgres://postgres@127.0.0.1:5432}; NODES=("$PG") ;;
  citus) PG=postgres://postgres@127.0.0.1:9700
         NODES=("$PG" postgres://postgres@127.0.0.1:9701 postgres://postgres@127.0.0.1:9702) ;;
  *) echo "usage: $0 [single|citus]" >&2; exit 2 ;;
esac
WORK=$(mktemp -d)
RUN=$(date +%s%N | tail -c 9)
DBS=()
SERVER=""
cleanup() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
  for db in "${DBS[@]}" $(cat "$WORK/dbs" 2>/dev/null); do
    for n in "${NODES[@]}"; do psql -X -q "$n/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; done
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# A fresh database, migrated (on Citus: on every node, with the extension, workers registered,
# so the migrations distribute the tables).
fresh_db() {
  local db=$1
  DBS+=("$db")
  for n in "${NODES[@]}"; do
    psql -X -q "$n/postgres" -c "CREATE DATABASE $db" >/dev/null
    [ "$MODE" = citus ] && psql -X -q "$n/$db" -c "CREATE EXTENSION citus" >/dev/null
  done
  if [ "$MODE" = citus ]; then
    psql -X -q "$PG/$db" -c "SELECT citus_set_coordinator_host('127.0.0.1', 9700)" \
      -c "SELECT citus_add_node('127.0.0.1', 9701)" -c "SELECT citus_add_node('127.0.0.1', 9702)" >/dev/null
  fi
  DATABASE_URL="$PG/$db" RUST_LOG=error "$BIN" migrate >"$WORK/migrate.log" 2>&1 || { cat "$WORK/migrate.log" >&2; exit 1; }
}

# Writes every node's dirty pages out, so a timed run does not pay for the one before it.
checkpoint() { for n in "${NODES[@]}"; do psql -X -q "$n/postgres" -c "CHECKPOINT"; done; }

# wrk's figures: requests/s, p99 in ms, requests, non-2xx answers and socket errors.
wrk_run() { # connections, lua script, url, extra args...
  local c=$1 script=$2 url=$3; shift 3
  wrk -t2 -c"$c" -d"${SECS}s" --latency -s "$script" "$url" -- "$@" > "$WORK/wrk.out" 2>&1 || true
  python3 - "$WORK/wrk.out" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def num(pat, default="0"):
    m = re.search(pat, t)
    return m.group(1) if m else default
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    if not m: return float("nan")
    x = float(m.group(1)); return x / 1000 if m.group(2) == "us" else x * 1000 if m.group(2) == "s" else x
p99 = ms(num(r"(?m)^\s*99%\s+(\S+)", "nan"))
errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", t))
print(num(r"Requests/sec:\s+([\d.]+)"), f"{p99:.2f}", num(r"(\d+) requests in"),
      num(r"Non-2xx or 3xx responses: (\d+)"), errors)
PY
}

# Rounds as lines "ratio figures...": the line of the round with the median ratio (of three),
# and every round's ratio, in the order they ran.
median_round() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
round_ratios() {
  printf '%s\n' "$@" | python3 -c "import sys; print(', '.join(f'{float(l.split()[0]):.2f}' for l in sys.stdin))"
}

cat > "$WORK/batch.lua" <<'LUA'
-- 1,000 events per request, ids unique per run, thread and request; a mix of a count meter,
-- a sum meter (with a filtered GPU meter) and a unique-count meter.
local threads = 0
function setup(thread) threads = threads + 1; thread:set("tid", threads) end
function init(args) run = args[1]; accounts = tonumber(args[2]); per = tonumber(args[3]); seq = 0 end
local function event(k)
  local a = "a" .. accounts .. "-" .. (k % accounts)
  local id = run .. "-" .. tid .. "-" .. k
  local m = k % 4
  if m <= 1 then return '{"id":"' .. id .. '","account":"' .. a .. '","type":"api.request"}' end
  if m == 2 then
    return '{"id":"' .. id .. '","account":"' .. a .. '","type":"job.completed","properties":{"minutes":"1.25","runner":"' .. ((k % 8 == 2) and "gpu" or "cpu") .. '"}}'
  end
  return '{"id":"' .. id .. '","account":"' .. a .. '","type":"user.active","properties":{"user_id":"u' .. (k % 37) .. '"}}'
end
function request()
  seq = seq + 1
  local parts = {}
  for i = 1, per do parts[i] = event(seq * per + i) end
  local body = (per == 1) and parts[1] or ('{"events":[' .. table.concat(parts, ",") .. ']}')
  return wrk.format("POST", "/v1/events", nil, body)
end
LUA

# The COPY reference: the events of a batch run as CSV rows of `events`, in 8 files, stored by
# 8 psql sessions at once into a fresh database's (empty) `events` table.
copy_reference() { # accounts, rows
  local accounts=$1 rows=$2 db=accrue_copy_${RUN}_$1
  # This runs in a subshell, whose additions to DBS the cleanup never sees: the name is
  # written down for it (dropped at the end here, or by the cleanup if this fails).
  echo "$db" >> "$WORK/dbs"
  fresh_db "$db"
  checkpoint
  python3 - "$WORK" "$accounts" "$rows" <<'PY'
import sys
work, accounts, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
files = [open(f"{work}/copy{i}.csv", "w") for i in range(8)]
for k in range(rows):
    m = k % 4
    props = ('{}' if m <= 1 else
             '"{""minutes"": ""1.25"", ""runner"": ""cpu""}"' if m == 2 else
             f'"{{""user_id"": ""u{k % 37}""}}"')
    typ = "api.request" if m <= 1 else "job.completed" if m == 2 else "user.active"
    files[k % 8].write(f"a{accounts}-{k % accounts},copy-{k},{typ},2026-11-25 12:00:00+00,{props},"
                       "2026-11-25 12:00:00+00,2026-11-25 12:00:00+00\n")
for f in files: f.close()
PY
  local start end
  start=$(date +%s.%N)
  for i in $(seq 0 7); do
    psql -X -q "$PG/$db" -c "\\copy events (account, id, event_type, ts, properties, received_at, stored_at) FROM '$WORK/copy$i.csv' CSV" &
  done
  wait
  end=$(date +%s.%N)
  local stored
  stored=$(psql -X -Atq "$PG/$db" -c "SELECT count(*) FROM events")
  [ "$stored" = "$rows" ] || { echo "COPY stored $stored of $rows rows" >&2; exit 1; }
  for n in "${NODES[@]}"; do psql -X -q "$n/postgres" -c "DROP DATABASE $db WITH (FORCE)" >/dev/null; done
  python3 -c "print(round($rows / ($end - $start)))"
}

db=accrue_speed_$RUN
fresh_db "$db"
KEY=$(DATABASE_URL="$PG/$db" RUST_LOG=error "$BIN" keys create --name speed --scopes ingest,check,billing | tail -n 1)
DATABASE_URL="$PG/$db" RUST_LOG=error "$BIN" plans publish pricing-plans >/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DATABASE_URL="$PG/$db" ACCRUE_BIND=127.0.0.1:$PORT ACCRUE_PLANS_DIR=pricing-plans RUST_LOG=warn \
  "$BIN" serve >"$WORK/server.log" 2>&1 &
SERVER=$!
BASE=http://127.0.0.1:$PORT
for _ in $(seq 1 200); do curl -sf "$BASE/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "$BASE/readyz" >/dev/null || { cat "$WORK/server.log"; exit 1; }
sed -i "1i wrk.headers['Authorization'] = 'Bearer $KEY'\nwrk.headers['Content-Type'] = 'application/json'" "$WORK/batch.lua"
peak_rss() { awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$SERVER/status"; }

echo "== accrue $(git rev-parse --short HEAD 2>/dev/null || echo '?') on $MODE PostgreSQL ($PG), $(nproc) cores, wrk -t2 -d${SECS}s"
echo "measure | accrue | reference | ratio"
for accounts in 1 1000; do
  # Three rounds, each accrue's run then its COPY reference, so a drift of the machine weighs
  # on both sides (COPY alone moves by a fifth between runs minutes apart); the round with
  # the median ratio is reported, beside every round's ratio.
  rounds=()
  for round in 1 2 3; do
    # Each run starts where its COPY reference does: empty event tables (the accounts stay)
    # and no dirty pages left by the run before. Emptied under the running server: what it
    # keeps of these rows (the check cache's usage) is of accounts no later run uses, since
    # each run's accounts are its own (`a1-0`, then `a1000-0` to `a1000-999`, the same in
    # each round; the single events after them go to the latter, with nothing emptied
    # between; the checks below use accounts of their own). The (account, event type) rows
    # stay, as the accounts do: the server's lanes remember which of them are stored.
    psql -X -q "$PG/$db" -c "TRUNCATE events, usage_rollups, usage_unique_keys, event_type_totals"
    checkpoint
    read -r rps p99 reqs non2xx errs < <(wrk_run 8 "$WORK/batch.lua" "$BASE/v1/events" "b${accounts}r$round" "$accounts" 1000)
    [ "$non2xx" = 0 ] || { echo "batched ingestion: $non2xx answers were not 2xx" >&2; tail -5 "$WORK/server.log" >&2; exit 1; }
    stored=$(psql -X -Atq "$PG/$db" -c "SELECT count(*) FROM events")
    [ "$stored" -ge $((reqs * 1000)) ] || { echo "stored $stored events, acknowledged $((reqs * 1000))" >&2; exit 1; }
    copy=$(copy_reference "$accounts" 320000)
    events=$(python3 -c "print(round($rps * 1000))")
    rounds+=("$(python3 -c "print(f'{$events / $copy:.4f}')") $events $p99 $copy")
  done
  read -r ratio events p99 copy < <(median_round "${rounds[@]}")
  ratios=$(round_ratios "${rounds[@]}")
  echo "batched ingestion, 1,000-event batches, 8 connections, $accounts account(s) (median of 3 rounds: $ratios) | $events events/s (p99 $p99 ms) | COPY, 8 sessions: $copy rows/s | $(python3 -c "print(f'{$ratio:.2f}')")"
done

read -r rps p99 reqs non2xx errs < <(wrk_run 64 "$WORK/batch.lua" "$BASE/v1/events" "s" 1000 1)
[ "$non2xx" = 0 ] || { echo "single events: $non2xx answers were not 2xx" >&2; exit 1; }
echo "single-event ingestion, 64 connections | $(python3 -c "print(round($rps))") events/s acknowledged (p99 $p99 ms) | target 10,000/s | $(python3 -c "print(f'{$rps / 10000:.2f}')")"
echo "peak resident memory of the server after the ingestion runs | $(peak_rss) MB | target 150 MB |"

# Checks: accounts subscribed to Team (limits on API calls), each with usage, all cached.
seq 0 $((CHECK_ACCOUNTS - 1)) | xargs -P 8 -I{} curl -sf -o /dev/null -X POST "$BASE/v1/accounts/chk{}/subscription" \
  -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d '{"plan": "team", "seats": 3}'
cat > "$WORK/check.lua" <<LUA
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer $KEY"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"meter": "api_calls", "quantity": "1"}'
-- Every account's request is formatted once, up front: per request the tool only picks one,
-- so the load tool's own cost (it shares this machine's cores) stays as small as for /healthz.
local requests = {}
function init(args)
  for i = 0, $((CHECK_ACCOUNTS - 1)) do requests[i] = wrk.format(nil, "/v1/accounts/chk" .. i .. "/check") end
  math.randomseed(os.time())
end
function request() return requests[math.random(0, $((CHECK_ACCOUNTS - 1)))] end
LUA
cat > "$WORK/health.lua" <<'LUA'
local req
function init(args) req = wrk.format("GET", "/healthz") end
function request() return req end
LUA
# The checks start, as each ingestion run does, from a settled database: the ingestion runs
# leave autovacuum and checkpoint work behind (millions of new rows), which would land on
# whichever side of a round it happened to overlap.
psql -X -q "$PG/$db" -c "VACUUM ANALYZE"
checkpoint
SECS=3 wrk_run 64 "$WORK/check.lua" "$BASE" >/dev/null   # loads every account into the cache
# Three rounds, checks then /healthz in each, so a drift of the machine (another process)
# weighs on both sides; the round with the median ratio is reported.
rounds=()
for round in 1 2 3; do
  read -r crps cp99 _ cnon2xx _ < <(wrk_run 64 "$WORK/check.lua" "$BASE")
  read -r hrps hp99 _ _ _ < <(wrk_run 64 "$WORK/health.lua" "$BASE")
  [ "$cnon2xx" = 0 ] || { echo "checks: $cnon2xx answers were not 2xx" >&2; exit 1; }
  rounds+=("$(python3 -c "print(f'{$crps / $hrps:.4f}')") $crps $cp99 $hrps $hp99")
done
read -r _ crps cp99 hrps hp99 < <(median_round "${rounds[@]}")
ratios=$(round_ratios "${rounds[@]}")
echo "limit checks, 64 connections, $CHECK_ACCOUNTS accounts (median of 3 rounds: $ratios) | $(python3 -c "print(round($crps))") checks/s, p99 $cp99 ms | GET /healthz: $(python3 -c "print(round($hrps))") req/s, p99 $hp99 ms | $(python3 -c "import sys; c, h, cp, hp = map(float, sys.argv[1:]); print(f'{c / h:.2f} of the rate, p99 {cp / hp:.2f}x')" "$crps" "$hrps" "$cp99" "$hp99")"
