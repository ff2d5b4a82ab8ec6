# Shared by the PostgreSQL benches (ucs_backends.sh, pg_takeover.sh, sqlite_copy.sh): a
# PostgreSQL server of the Debian package, initdb'd into "$OUT/pg" and started on a free
# loopback port (fsync and synchronous_commit on: its defaults), with role deskmux whose
# password is in "$OUT/pg.password". Source it from the bench's out dir, then `pg_start`.
# `trap pg_cleanup EXIT` stops every process whose pid the bench put in PIDS, then PostgreSQL. Needs python3, and runuser when root (PostgreSQL
# runs as the postgres user then, and must reach its directory: the out dir is made 711).

PG=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

pg_start() {
    chmod 711 "$OUT"
    mkdir -p "$OUT/pg" && [ "$(id -u)" = 0 ] && chown postgres:postgres "$OUT/pg"
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$OUT/pg.password"
    chmod 600 "$OUT/pg.password"
    cp "$OUT/pg.password" "$OUT/pg/pwfile" && [ "$(id -u)" = 0 ] && chown postgres "$OUT/pg/pwfile"
    as_pg "$PG/initdb" -D "$OUT/pg/data" -U deskmux --auth-local=trust --auth-host=scram-sha-256 \
        --pwfile "$OUT/pg/pwfile" -E UTF8 >/dev/null
    as_pg "$PG/pg_ctl" -D "$OUT/pg/data" -l "$OUT/pg/log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $OUT/pg" start >/dev/null
}

pg_stop() { as_pg "$PG/pg_ctl" -D "$OUT/pg/data" -m immediate stop >/dev/null; }

# The bench's processes (core-server, loadgen): killed by pg_cleanup. SIGCONT first, for one
# the bench paused with SIGSTOP.
PIDS=()
pg_cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    pg_stop
}

# psql_ DB SQL: one statement as deskmux, unaligned output
psql_() { PGPASSWORD=$(cat "$OUT/pg.password") "$PG/psql" -h 127.0.0.1 -p "$PGPORT" -U deskmux -XAtqc "$2" "$1"; }

# wait_line FILE PATTERN TIMEOUT_S
wait_line() {
    local end=$(( $(date +%s) + $3 ))
    until grep -q "$2" "$1" 2>/dev/null; do
        [ "$(date +%s)" -ge "$end" ] && { echo "timeout waiting for '$2' in $1" >&2; exit 1; }
        sleep 0.01
    done
}
