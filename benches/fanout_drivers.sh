#!/usr/bin/env bash
# Fan-out to 20,000 subscribers of one queue, with each of the proxy's I/O drivers, next to the
# floor (one buffer written to 20,000 loopback sockets), in one session (issue 17).
#
# `loadgen demo` provisions its own credentials alternating tenants 1 and 2; queue events are
# per tenant, so for 20,000 subscribers of one queue every desktop must be of tenant 1. This
# script writes such a credentials file (20,100 lines, random passwords), gives it to loadgen
# (`--credentials`) and to the demo's `core-server creds import` (through a wrapper in a
# directory that DESKMUX_BIN_DIR points at; every other invocation is the real binary).
# Links are plain TCP for both drivers (the uring driver has no TLS).
#
# usage: benches/fanout_drivers.sh [SUBMIT_RATES] [REPS]     (defaults "2 20" and 1)
# SUBMIT_RATES are loadgen's `--submit-rate`s: each submit publishes about two queue events
# (loadgen prints "distinct published"), so `--submit-rate 10` is about 20 events/s. The floor
# runs at FLOOR_RATES events/s (default "2,20").
# Needs `cargo build --release --workspace --bins` and
# `cargo build --release -p deskmux-benches --example fanout_floor` first.
set -euo pipefail
cd "$(dirname "$0")/.."
rates=${1:-"2 20"}
reps=${2:-1}
rel=$PWD/target/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for i in $(seq 0 20099); do
    printf '1\tlg-%d\t%s\n' "$i" "$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
done >"$work/creds1.tsv"
chmod 600 "$work/creds1.tsv"
mkdir "$work/wrap"
ln -s "$rel/proxy" "$rel/loadgen" "$work/wrap/"
cat >"$work/wrap/core-server" <<WRAP
#!/usr/bin/env bash
for a in "\$@"; do
    if [ "\$a" = import ]; then exec "$rel/core-server" "\$@" < "$work/creds1.tsv"; fi
done
exec "$rel/core-server" "\$@"
WRAP
chmod +x "$work/wrap/core-server"

echo "# $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== floor"
"$rel/examples/fanout_floor" --subscribers 20000 --rates "${FLOOR_RATES:-2,20}" --duration 10
for rep in $(seq 1 "$reps"); do
    for rate in $rates; do
        for driver in mio uring; do
            echo "== $driver, --submit-rate $rate, rep $rep (load $(cut -d' ' -f1 /proc/loadavg))"
            DESKMUX_PROXY_DRIVER=$driver DESKMUX_BIN_DIR=$work/wrap "$rel/loadgen" demo \
                -s supervisor -n 20100 --credentials "$work/creds1.tsv" --media-share 0.00497 \
                --submit-rate "$rate" --duration 10 --ramp 10 --warmup 4 --plaintext-links -q \
                >"$work/run.log" 2>&1 && rc=0 || rc=$?
            grep -E 'publish|^events|subscribers|^loadgen |^server ' "$work/run.log" || true
            echo "exit $rc"
        done
    done
done
