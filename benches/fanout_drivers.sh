#!/usr/bin/env bash
# Fan-out to 20,000 subscribers of one queue, with each of the proxy's I/O drivers, next to the
# floor (one buffer written to 20,000 loopback sockets), in one session (issue 17).
#
# Queue events are per tenant, so for 20,000 subscribers of one queue every desktop must be of
# tenant 1: this script writes such a credentials file (random passwords) and gives it to
# `loadgen demo --credentials`, which imports it into the demo's core-server.
# Links are plain TCP for both drivers (the uring driver has no TLS).
#
# usage: benches/fanout_drivers.sh [SUBMIT_RATES] [REPS]     (defaults "2 20" and 1)
# SUBMIT_RATES are loadgen's `--submit-rate`s: each submit publishes about two queue events
# (loadgen prints "distinct published"), so `--submit-rate 10` is about 20 events/s. The floor
# runs at FLOOR_RATES events/s (default "2,20"). SUBSCRIBERS (default 20000) sizes both.
# Needs `cargo build --release --workspace --bins` and
# `cargo build --release -p deskmux-benches --example fanout_floor` first.
set -euo pipefail
cd "$(dirname "$0")/.."
rates=${1:-"2 20"}
reps=${2:-1}
rel=$PWD/target/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

subs=${SUBSCRIBERS:-20000}
desktops=$((subs + subs / 200))   # the subscribers and their media desktops (--media-share)
for i in $(seq 0 $((desktops - 1))); do
    printf '1\tlg-%d\t%s\n' "$i" "$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
done >"$work/creds1.tsv"
chmod 600 "$work/creds1.tsv"

echo "# $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== floor"
"$rel/examples/fanout_floor" --subscribers "$subs" --rates "${FLOOR_RATES:-2,20}" --duration 10
for rep in $(seq 1 "$reps"); do
    for rate in $rates; do
        for driver in mio uring; do
            echo "== $driver, --submit-rate $rate, rep $rep (load $(cut -d' ' -f1 /proc/loadavg))"
            DESKMUX_PROXY_DRIVER=$driver "$rel/loadgen" demo \
                -s supervisor -n "$desktops" --credentials "$work/creds1.tsv" --media-share 0.00497 \
                --submit-rate "$rate" --duration 10 --ramp 10 --warmup 4 --plaintext-links -q \
                >"$work/run.log" 2>&1 && rc=0 || rc=$?
            grep -E 'publish|^events|subscribers|^loadgen |^server ' "$work/run.log" || true
            echo "exit $rc"
        done
    done
done
