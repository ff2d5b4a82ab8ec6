#!/usr/bin/env bash
# `core-server storage copy-from-sqlite`: how long moving an SQLite site to PostgreSQL takes.
#
# On loopback, in a temp dir: an SQLite data file made by core-server (schema migrated with
# `creds list`) and filled by python3's sqlite3 with ROWS contacts (one e-mail attribute each)
# and ROWS history records of 256 bytes; a PostgreSQL server (benches/pg_lib.sh); then the
# copy into an empty database, timed with date, and the rows PostgreSQL then holds.
#
#   cargo build --release -p deskmux-core-server --bins
#   benches/sqlite_copy.sh                 # ROWS=100000
#
# Needs: target/release/core-server, PostgreSQL (/usr/lib/postgresql/*/bin), python3,
# runuser when root.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DESKMUX_BIN_DIR:-$ROOT/target/release}
ROWS=${ROWS:-100000}
OUT=$(mktemp -d /tmp/deskmux-sqlite-copy.XXXXXX)
cd "$OUT"
echo "out dir: $OUT"
# shellcheck source=pg_lib.sh
. "$ROOT/benches/pg_lib.sh"
pg_start
trap pg_cleanup EXIT

cat > sqlite.toml <<CFG
listen = "127.0.0.1:0"
db = "$OUT/site.db"
link_secret = "bench-link-secret-0123456789abcdef"

[[tenants]]
id = 1
name = "acme"
CFG
"$BIN/core-server" --config sqlite.toml creds list > /dev/null
python3 - "$OUT/site.db" "$ROWS" <<'PY'
import sqlite3, sys
db, n = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db)
c.execute("BEGIN")
c.executemany("INSERT INTO contacts(id, tenant, attrs) VALUES (?, 1, ?)",
              ((i, b"a" * 40) for i in range(1, n + 1)))
c.executemany("INSERT INTO contact_attrs(contact, tenant, key, value) VALUES (?, 1, 'email', ?)",
              ((i, f"c{i}@example.com") for i in range(1, n + 1)))
c.executemany("INSERT INTO history(id, tenant, contact, interaction, subject, text, len, created_us)"
              " VALUES (?, 1, ?, ?, 'subject', ?, 256, ?)",
              ((i, i, i, "x" * 256, i) for i in range(1, n + 1)))
c.execute("COMMIT")
PY
echo "# $(date -u +%FT%TZ) ROWS=$ROWS file $(du -h site.db | cut -f1); load: $(cut -d' ' -f1-3 /proc/loadavg)"

psql_ postgres "CREATE DATABASE site"
{ cat sqlite.toml; cat <<CFG

[storage]
backend = "postgres"
port = $PGPORT
dbname = "site"
password_file = "$OUT/pg.password"
CFG
} > pg.toml
t0=$(date +%s%N)
"$BIN/core-server" --config pg.toml storage copy-from-sqlite "$OUT/site.db"
t1=$(date +%s%N)
ms=$(( (t1 - t0) / 1000000 ))
total=$(( 3 * ROWS ))
echo "== copy: $ms ms for $total rows ($(( total * 1000 / (ms > 0 ? ms : 1) )) rows/s)"
echo "== in PostgreSQL: contacts $(psql_ site 'SELECT count(*) FROM contacts'), history $(psql_ site 'SELECT count(*) FROM history'), next contact id $(psql_ site "SELECT nextval('contacts_id_seq')")"
