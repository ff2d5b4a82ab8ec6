#!/usr/bin/env bash
# Interaction Server tenant takeover on PostgreSQL with N agents logged in (issue 18).
#
# On loopback, in a temp dir: a PostgreSQL server (initdb from the Debian postgresql package,
# fsync on), a core-server primary (role = "both") holding the lease of tenant 1, a
# core-server --standby on the same database (its own directory: nothing shared but the
# database), and loadgen's `agent` scenario with N agents of tenant 1 (each logs in, becomes
# ready and works the interactions its media desktops submit), given both servers as sites.
# Once every agent is logged in on the primary (its deskmux_core_sessions gauge at N), the
# primary is killed with SIGKILL (time taken with date just before), and the script times:
#   - kill -> the standby prints "ROLE primary" (it has taken the lease: waited for it to
#     expire, raised its epoch, loaded the open interactions);
#   - kill -> the standby holds N sessions again (every agent reconnected, logged in afresh:
#     the old sessions lived in the dead primary's memory);
# and loadgen's back_after_drop_us (from each desktop's drop to its next session).
# MODE=stop pauses the primary (SIGSTOP) instead, and after the takeover resumes it (SIGCONT):
# the old owner must exit with status 1, having committed nothing (its fencing check).
# Everything started here is stopped by pid at the end.
#
#   cargo build --release -p deskmux-core-server -p deskmux-loadgen --bins
#   benches/pg_takeover.sh                       # N=5000 LEASE_MS=10000 (the default lease)
#   N=5000 LEASE_MS=2000 benches/pg_takeover.sh
#   MODE=stop LEASE_MS=2000 benches/pg_takeover.sh
#
# Needs: target/release/{core-server,loadgen}, PostgreSQL (/usr/lib/postgresql/*/bin), curl,
# jq, python3, runuser when root.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DESKMUX_BIN_DIR:-$ROOT/target/release}
N=${N:-5000}                  # agents
LEASE_MS=${LEASE_MS:-10000}   # [storage] lease_ms
RAMP=${RAMP:-15}              # s, agents connect evenly over it
MODE=${MODE:-kill}            # kill (SIGKILL) or stop (SIGSTOP, then SIGCONT after the takeover)
SUBMIT_RATE=${SUBMIT_RATE:-50} # interactions/s the media desktops submit
OUT=$(mktemp -d /tmp/deskmux-pg-takeover.XXXXXX)
cd "$OUT"
echo "out dir: $OUT"

# shellcheck source=pg_lib.sh
. "$ROOT/benches/pg_lib.sh"
pg_start

trap pg_cleanup EXIT

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# stamp each stdout line of a process with the wall clock (ms)
stamp() { while IFS= read -r l; do echo "$(now_ms) $l"; done; }
sessions() { # http addr -> the Interaction Server's sessions (0 if no answer)
    curl -s -m 1 "http://$1/metrics" | awk '$1 == "deskmux_core_sessions" {print $2; f=1} END {if (!f) print 0}'
}
wait_sessions() { # http addr count timeout_s
    local end=$(( $(date +%s) + $3 ))
    until [ "$(sessions "$1")" -ge "$2" ] 2>/dev/null; do
        [ "$(date +%s)" -ge "$end" ] && { echo "timeout: $(sessions "$1") of $2 sessions on $1" >&2; return 1; }
        sleep 0.1
    done
}

# config NAME: in directory NAME (nothing shared but the database)
config() {
    mkdir -p "$1"
    cat > "$1/core.toml" <<EOF
listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
role = "both"
db = "$OUT/$1/core.db"
instance = "$1"
link_secret = "bench-link-secret-0123456789abcdef"
heartbeat_ms = 10000
max_connections = $((N + 1000))

[[tenants]]
id = 1
name = "acme"

[storage]
backend = "postgres"
port = $PGPORT
dbname = "deskmux"
password_file = "$OUT/pg.password"
lease_ms = $LEASE_MS
EOF
}

# start NAME [args]: core-server on NAME/core.toml; sets ADDR, HTTP and PID
start() {
    local name=$1; shift
    "$BIN/core-server" --config "$name/core.toml" "$@" > >(stamp > "$name.out") 2> "$name.err" &
    PID=$!
    PIDS+=("$PID")
    wait_line "$name.out" LISTENING 30
    wait_line "$name.out" HTTP 30
    ADDR=$(awk '$2 == "LISTENING" {print $3; exit}' "$name.out")
    HTTP=$(awk '$2 == "HTTP" {print $3; exit}' "$name.out")
}

echo "# $(date -u +%FT%TZ) N=$N LEASE_MS=$LEASE_MS MODE=$MODE SUBMIT_RATE=$SUBMIT_RATE; load: $(cut -d' ' -f1-3 /proc/loadavg)"
psql_ postgres "CREATE DATABASE deskmux"

# N agents of tenant 1, random passwords, argon2id's cheapest cost (the bench measures the
# takeover, not the logins' hashing), given to loadgen as its --credentials.
head -c $((N * 12)) /dev/urandom | od -An -tx1 -v -w12 | tr -d ' ' |
    awk '{ printf "1\tlg-%d\t%s\n", NR - 1, $0 }' > credentials.tsv
chmod 600 credentials.tsv
config primary
config standby
"$BIN/core-server" --config primary/core.toml creds import --argon2-m-kib 8 --argon2-t 1 < credentials.tsv

start primary; PA=$ADDR; PH=$HTTP; PRIMARY=$PID
start standby --standby; SA=$ADDR; SH=$HTTP
wait_line standby.out "ROLE backup" 30
echo "primary $PA (http $PH, pid $PRIMARY), standby $SA (http $SH)"

# Long enough for the ramp, the takeover and every agent's return; loadgen is stopped once
# they are back (its report then covers the whole run).
DURATION=$(( RAMP + 3 * LEASE_MS / 1000 + 120 ))
"$BIN/loadgen" run -s agent --credentials credentials.tsv --site "$PA" --site "$SA" -n "$N" \
    --ramp "$RAMP" --warmup 1 --duration "$DURATION" --drain 5 --submit-rate "$SUBMIT_RATE" \
    --backoff-base-ms 100 --backoff-max-ms 1000 --json loadgen.json > loadgen.out 2> loadgen.err &
LG=$!; PIDS+=("$LG")
wait_sessions "$PH" "$N" $(( RAMP + 60 ))
LEASES=$(psql_ deskmux "SELECT tenant || ' ' || owner || ' epoch ' || epoch FROM tenant_lease")
echo "$N agents logged in on the primary; lease: $LEASES"

if [ "$MODE" = stop ]; then
    T0=$(now_ms); kill -STOP "$PRIMARY"
else
    T0=$(now_ms); kill -KILL "$PRIMARY"
fi
wait_line standby.out "ROLE primary" $(( 3 * LEASE_MS / 1000 + 60 ))
T_ROLE=$(awk '$2 == "ROLE" && $3 == "primary" {print $1; exit}' standby.out)
if [ "$MODE" = stop ]; then
    # The agents of a paused primary are still connected to it (nothing tells them it is
    # paused): only the fencing is checked here, not their return.
    echo "== takeover (stop, lease_ms $LEASE_MS, $N agents): stop -> ROLE primary $((T_ROLE - T0)) ms"
else
    wait_sessions "$SH" "$N" 180
    T_ALL=$(now_ms)
    echo "== takeover (kill, lease_ms $LEASE_MS, $N agents): kill -> ROLE primary $((T_ROLE - T0)) ms; kill -> $N sessions on the standby $((T_ALL - T0)) ms"
fi
grep -h "recovered\|leased" standby.err | tail -2 || true

if [ "$MODE" = stop ]; then
    # The old owner, resumed, finds its lease taken (renewal or fencing check) and exits 1.
    kill -CONT "$PRIMARY"
    set +e
    wait "$PRIMARY"; CODE=$?
    set -e
    echo "== the paused owner, resumed, exited with status $CODE"
    grep -h "Fenced\|taken\|exiting\|fenc" primary.err | tail -3 || true
fi

# loadgen's last progress line before it is stopped: the requests lost at the takeover
# (in flight on the killed primary; the report's own totals also count the stop's drain).
grep '^\[' loadgen.err | tail -1
kill -INT "$LG"
wait "$LG" || true
jq -c '{clients, back_after_drop_us, requests: {sent: .requests.sent, ok: .requests.ok, errors: .requests.errors, lost: .requests.lost}}' loadgen.json 2>/dev/null ||
    tail -30 loadgen.err
