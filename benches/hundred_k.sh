#!/usr/bin/env bash
# 100,000 desktops on one `proxy` command (issue 17): the README's demo stack with a proxy of
# enough workers (each under the 20,000 open-file cap), loadgen over several processes and
# 127.0.0.x source addresses (its defaults), every desktop logged in, plus an open-loop ping
# load. Prints: the proxy workers' summed VmRSS before any desktop and with all of them
# connected (→ bytes per idle desktop), the time from the first worker sample to all desktops
# counted by the proxy's /status, and loadgen's summary (lost must be 0).
#
# usage: benches/hundred_k.sh [DESKTOPS] [WORKERS] [RAMP]   (defaults 100000 7 10s)
# Needs `cargo build --release --workspace --bins` first.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
workers=${2:-7}
ramp=${3:-10s}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Heartbeats every 30 s per idle desktop (half of 60 s): at the default 5 s, 100,000 desktops
# would send 40,000 heartbeats a second, which is a load test of its own.
target/release/loadgen demo -n "$n" --proxy-workers "$workers" -s ping --rate 5000 \
    --ramp "$ramp" --warmup 5s --duration 30s --heartbeat-ms 60000 -q \
    --json "$out/run.json" >"$out/log" 2>&1 &
demo=$!

# The proxy's pid and admin address, from demo's own line (bounded wait: 60 s).
for _ in $(seq 600); do
    grep -q 'demo: proxy (pid' "$out/log" && break
    kill -0 "$demo" 2>/dev/null || { cat "$out/log"; exit 1; }
    sleep 0.1
done
line=$(grep 'demo: proxy (pid' "$out/log")
pid=$(sed -E 's/.*pid ([0-9]+),.*/\1/' <<<"$line")
admin=$(sed -E 's/.*admin ([0-9.:]+).*/\1/' <<<"$line")

workers_rss() {
    local t=0 p r
    for p in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
        r=$(awk '/VmRSS/ {print $2}' /proc/"$p"/status 2>/dev/null || echo 0)
        t=$((t + r))
    done
    echo "$t"
}
desktops() {
    curl -s "http://$admin/status" | python3 -c 'import sys, json; print(json.load(sys.stdin).get("desktops", 0))' 2>/dev/null || echo 0
}

# Every worker up (its links too) before the baseline sample.
for _ in $(seq 600); do
    [ "$(grep -c 'deskmux_proxy::core::response: link up' "$out/log")" -ge $((workers * 2)) ] && break
    sleep 0.1
done
base=$(workers_rss)
start=$(date +%s.%N)
# Poll /status (bounded: 5 min) until every desktop is counted; the RSS is sampled whenever
# the count reaches a new high, so a run that never gets all of them still reports its peak.
peak=0 full=0 all=
for _ in $(seq 3000); do
    d=$(desktops)
    if [ "$d" -gt "$peak" ]; then
        peak=$d
        full=$(workers_rss)
    fi
    if [ "$d" -ge "$n" ]; then
        all=$(date +%s.%N)
        break
    fi
    kill -0 "$demo" 2>/dev/null || break
    sleep 0.1
done
wait "$demo" && rc=0 || rc=$?

printf 'desktops counted by the proxy: %s of %s (peak)\n' "$peak" "$n"
if [ -n "$all" ]; then
    printf 'time from the baseline sample to all desktops counted: %.1f s (ramp %s)\n' "$(echo "$all - $start" | bc)" "$ramp"
else
    echo "not every desktop was counted at once"
fi
if [ "$peak" -gt 0 ]; then
    printf 'proxy workers VmRSS: %s KiB before, %s KiB at the peak: %s B per desktop\n' \
        "$base" "$full" "$(((full - base) * 1024 / peak))"
fi
grep -v -E ' (INFO|DEBUG|WARN) ' "$out/log" | grep -E '^(clients|requests|throughput|  |loadgen|server|verification)' || true
echo "loadgen exit code: $rc"
exit "$rc"
