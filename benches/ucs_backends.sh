#!/usr/bin/env bash
# UCS on SQLite against PostgreSQL, 1 UCS instance against 2 on one PostgreSQL, and the warm
# standby's takeover time on each backend (issue 18).
#
# On loopback, in a temp dir: a PostgreSQL server (initdb from the Debian postgresql package,
# fsync and synchronous_commit on: as durable as SQLite's synchronous = "full"), core-server
# instances with role = "ucs", and core-server's closed-loop bench (examples/bench: CONNS
# sessions, one request outstanding each, SECS measured). Modes: `get` (CONTACT_GET, a read)
# and `history` (HISTORY_INSERT of 256 bytes, a write acknowledged after its commit). The
# server CPU per request counts the core-server process only, not PostgreSQL's.
# Takeover: a primary (role = "both") and a --standby on the same data; the primary is
# SIGKILLed and the time until the standby prints "ROLE primary" is taken, ROUNDS times. On
# SQLite the standby waits on the data file's flock; on PostgreSQL for the tenants' leases
# (lease_ms = LEASE_MS) to expire, then loads the open interactions: QUEUED queued ones are
# put in the database first (psql), so that each takeover recovers them.
# Everything started here is stopped by pid at the end.
#
# Connections: one UCS instance on PostgreSQL with `[storage] connections` = 1 against LANES,
# interleaved REPS times (ABAB...), each a fresh instance on the same database.
# PARTS picks the sections (default all): backends two takeover connections.
#
#   cargo build --release -p deskmux-core-server --bins --examples
#   benches/ucs_backends.sh
#   CONNS=32 SECS=5 ROUNDS=5 benches/ucs_backends.sh
#   PARTS=connections LANES=4 REPS=2 benches/ucs_backends.sh
#
# Needs: target/release/core-server, target/release/examples/bench, PostgreSQL
# (/usr/lib/postgresql/*/bin), runuser when root.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DESKMUX_BIN_DIR:-$ROOT/target/release}
CONNS=${CONNS:-32}
SECS=${SECS:-5}
ROUNDS=${ROUNDS:-5}
LEASE_MS=${LEASE_MS:-2000}
QUEUED=${QUEUED:-5000}
PARTS=${PARTS:-backends two takeover connections}
LANES=${LANES:-4}
REPS=${REPS:-2}
part() { [[ " $PARTS " == *" $1 "* ]]; }
OUT=$(mktemp -d /tmp/deskmux-ucs-backends.XXXXXX)
cd "$OUT"
echo "out dir: $OUT"

# shellcheck source=pg_lib.sh
. "$ROOT/benches/pg_lib.sh"
pg_start

trap pg_cleanup EXIT

# SIGKILL and reap (quietly: the kill is the point)
stop() { kill -KILL "$@" 2>/dev/null || true; for p in "$@"; do wait "$p" 2>/dev/null || true; done; }

# config NAME BACKEND(sqlite|postgres) ROLE DBNAME [CONNECTIONS]
config() {
    local storage=""
    if [ "$2" = postgres ]; then
        storage="[storage]
backend = \"postgres\"
port = $PGPORT
dbname = \"$4\"
password_file = \"$OUT/pg.password\"
lease_ms = $LEASE_MS
connections = ${5:-1}"
    fi
    cat > "$1.toml" <<EOF
listen = "127.0.0.1:0"
role = "$3"
db = "$OUT/$4.db"
instance = "$1"
link_secret = "bench-link-secret-0123456789abcdef"

[[tenants]]
id = 1
name = "acme"

$storage
EOF
}

# provision CONFIG: bench-0 .. bench-(2*CONNS) and bench-agent-*, password acme-token
provision() {
    for i in $(seq 0 $((2 * CONNS))); do
        printf '1\tbench-%s\tacme-token\n1\tbench-agent-%s\tacme-token\n' "$i" "$i"
    done | "$BIN/core-server" --config "$1" creds import --argon2-m-kib 8 --argon2-t 1 2>/dev/null
}

# start NAME [args]: starts core-server with NAME.toml; sets ADDR and PID
start() {
    local name=$1; shift
    "$BIN/core-server" --config "$name.toml" "$@" > "$name.out" 2> "$name.err" &
    PID=$!
    PIDS+=("$PID")
    wait_line "$name.out" LISTENING 30
    ADDR=$(awk '/^LISTENING/ {print $2}' "$name.out")
}

bench() { # label mode addr pid
    echo "== $1 mode=$2"
    "$BIN/examples/bench" --addr "$3" --mode "$2" --conns "$CONNS" --secs "$SECS" \
        --server-pid "$4"
}

echo "# $(date -u +%FT%TZ) CONNS=$CONNS SECS=$SECS ROUNDS=$ROUNDS LEASE_MS=$LEASE_MS QUEUED=$QUEUED; load: $(cut -d' ' -f1-3 /proc/loadavg)"

# SQLite against PostgreSQL, one UCS instance each.
if part backends; then
    config sq sqlite ucs sqdata
    provision sq.toml
    start sq
    for m in get history; do bench "sqlite, 1 instance" "$m" "$ADDR" "$PID"; done
    stop "$PID"
fi

psql_ postgres "CREATE DATABASE ucs"
config u1 postgres ucs ucs
config u2 postgres ucs ucs
provision u1.toml
if part backends || part two; then
    start u1; A1=$ADDR; P1=$PID
    for m in get history; do bench "postgres, 1 instance" "$m" "$A1" "$P1"; done
    stop "$P1"
fi

# Two instances on the same database, a bench against each at once (CONNS sessions each).
if part two; then
    start u1; A1=$ADDR; P1=$PID
    start u2; A2=$ADDR; P2=$PID
    for m in get history; do
        bench "postgres, 2 instances: u1" "$m" "$A1" "$P1" > two-u1.txt &
        b1=$!
        bench "postgres, 2 instances: u2" "$m" "$A2" "$P2" > two-u2.txt &
        b2=$!
        wait "$b1" "$b2"
        cat two-u1.txt two-u2.txt
    done
    stop "$P1" "$P2"
fi

# One instance over 1 connection against LANES connections, interleaved.
if part connections; then
    config c1 postgres ucs ucs 1
    config cn postgres ucs ucs "$LANES"
    for r in $(seq 1 "$REPS"); do
        for c in c1 cn; do
            start "$c"
            for m in get history; do
                bench "postgres, 1 instance, $(awk -F' = ' '/^connections/ {print $2}' "$c.toml") connections, rep $r" "$m" "$ADDR" "$PID"
            done
            stop "$PID"
        done
    done
fi

# Takeover: kill -9 the primary, time until the standby says ROLE primary (empty queues).
takeover() { # label backend db
    config p "$2" both "$3"
    provision p.toml
    local times=() prim sb t0 t1
    "$BIN/core-server" --config p.toml > prim.out 2> prim.err &
    prim=$!
    PIDS+=("$prim")
    wait_line prim.out LISTENING 30
    for r in $(seq 1 "$ROUNDS"); do
        "$BIN/core-server" --config p.toml --standby --instance "sb-$1-$r" \
            > "sb-$1-$r.out" 2> "sb-$1-$r.err" &
        sb=$!
        PIDS+=("$sb")
        wait_line "sb-$1-$r.out" "ROLE backup" 30
        t0=$(date +%s%N)
        kill -KILL "$prim"
        wait_line "sb-$1-$r.out" "ROLE primary" 30
        t1=$(date +%s%N)
        stop "$prim"
        times+=("$(( (t1 - t0) / 1000000 ))")
        prim=$sb
    done
    echo "== takeover $1: kill -9 -> ROLE primary, ms: ${times[*]}"
    grep -h "recovered" sb-"$1"-*.err | tail -1
    stop "$prim"
}
part takeover || exit 0
takeover sqlite sqlite takeover
psql_ postgres "CREATE DATABASE takeover"
# The schema (a check-config does not connect: a creds list does), then the queued ones.
config p postgres both takeover
"$BIN/core-server" --config p.toml creds list >/dev/null
psql_ takeover "INSERT INTO interactions(id, tenant, queue, props, state, owner, qpos)
    SELECT g, 1, 'bench', '\\x'::bytea, 0, NULL, g FROM generate_series(1, $QUEUED) AS g"
takeover postgres postgres takeover
