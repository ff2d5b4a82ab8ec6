#!/usr/bin/env bash
# What a merge bomb costs the other tenants (issue 12, "bounded work"): tenant 2's agents run
# loadgen's agent scenario directly against core-server (login, ready, SUBMIT, ACCEPT, STOP:
# the engine and the DB worker), with and without one tenant-1 desktop that keeps sending
# 2 MiB property lists (benches/merge_bomb.py) to SUBMIT and CONTACT_CREATE, 4 in flight.
# Runs alternate (quiet, bombed) REPS times in one session, so the ratio compares like with like.
#
#   benches/merge_bomb.sh                  # N=200 desktops, D=15 s per run, REPS=3
#   RATE=20 benches/merge_bomb.sh          # the bomber paced at 20 bombs/s (default: flat out)
#
# Needs: target/release/{core-server,loadgen}, python3, jq.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DESKMUX_BIN_DIR:-$ROOT/target/release}
N=${N:-200}
D=${D:-15}
REPS=${REPS:-3}
RATE=${RATE:-0}
OUT=${OUT:-$(mktemp -d /tmp/deskmux-bomb.XXXXXX)}
mkdir -p "$OUT"
cd "$OUT"
echo "out dir: $OUT"

PIDS=()
cleanup() { set +e; for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

wait_line() { # file pattern timeout_s
    local end=$(( $(date +%s) + $3 ))
    until grep -q "$2" "$1" 2>/dev/null; do
        [ "$(date +%s)" -ge "$end" ] && { echo "timeout waiting for '$2' in $1" >&2; exit 1; }
        sleep 0.05
    done
}

cat > core.toml <<CONF
listen = "127.0.0.1:0"
db = "$OUT/core.db"

[[tenants]]
id = 1
name = "acme"

[[tenants]]
id = 2
name = "globex"
CONF
head -c $((N * 12)) /dev/urandom | od -An -tx1 -v -w12 | tr -d ' ' |
    awk '{ printf "2\tglobex-%d\t%s\n", NR - 1, $0 }' > t2.tsv
BOMB_PW=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
{ cat t2.tsv; printf '1\tbomber\t%s\n' "$BOMB_PW"; } > all.tsv
chmod 600 t2.tsv all.tsv
"$BIN/core-server" --config core.toml creds import --argon2-m-kib 8 --argon2-t 1 < all.tsv

"$BIN/core-server" --config core.toml > core.out 2> core.err &
PIDS+=($!)
wait_line core.out LISTENING 10
ADDR=$(awk '/LISTENING/{print $2; exit}' core.out)

run() { # name
    "$BIN/loadgen" run --site "$ADDR" --credentials t2.tsv -n "$N" -s agent --ramp 2 --warmup 1 \
        --duration "$D" --drain 2 -q --json "$1.json" > "$1.out" 2> "$1.err" || true
    printf '%-9s requests %8s  p50 %8.0f µs  p99 %8.0f µs  max %8.0f µs  lost %s  errors %s\n' "$1" \
        "$(jq .requests.sent "$1.json")" "$(jq .latency_us.p50 "$1.json")" \
        "$(jq .latency_us.p99 "$1.json")" "$(jq .latency_us.max "$1.json")" \
        "$(jq .requests.lost "$1.json")" "$(jq '.requests.errors // 0' "$1.json")"
}

for r in $(seq 1 "$REPS"); do
    run "quiet-$r"
    python3 "$ROOT/benches/merge_bomb.py" "$ADDR" 1 bomber "$BOMB_PW" 4 "$RATE" > "bomb-$r.out" 2>&1 &
    BOMBER=$!
    PIDS+=("$BOMBER")
    wait_line "bomb-$r.out" answered 60
    run "bombed-$r"
    kill "$BOMBER"; wait "$BOMBER" 2>/dev/null || true
    echo "bomber:   $(tail -n1 "bomb-$r.out")"
done

echo
echo "p99 bombed ÷ quiet, per pair:"
for r in $(seq 1 "$REPS"); do
    echo "  rep $r: $(jq -n --slurpfile q "quiet-$r.json" --slurpfile b "bombed-$r.json" \
        '($b[0].latency_us.p99 / $q[0].latency_us.p99) * 100 | round / 100')"
done
