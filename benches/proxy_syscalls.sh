#!/usr/bin/env bash
# Syscalls of one proxy worker per request, 1 in flight: strace -c on the worker for a
# window of the measured phase of `loadgen compare`, requests counted from the proxy's
# /metrics (deskmux_proxy_requests_total) over the same window.
#   benches/proxy_syscalls.sh BIN_DIR DRIVER CLIENTS OUTDIR   (DRIVER: mio or uring)
set -uo pipefail
BIN=$1; DRV=$2; N=$3; OUT=$4; mkdir -p "$OUT"; rm -f "$OUT/$DRV".*
DESKMUX_PROXY_DRIVER=$DRV "$BIN/loadgen" compare -n "$N" --window 1 --plaintext-links \
  --proxy-workers 1 -d 25s -q --json "$OUT/$DRV.json" > "$OUT/$DRV.log" 2>&1 &
LG=$!
line=""
for _ in $(seq 1 400); do
  line=$(grep -m1 "demo: proxy (pid" "$OUT/$DRV.log")
  [ -n "$line" ] && break
  sleep 0.5
done
sup=$(echo "$line" | sed -E 's/.*pid ([0-9]+),.*/\1/')
admin=$(echo "$line" | sed -E 's/.*admin ([0-9.:]+).*/\1/')
w=$(pgrep -P "$sup" | head -1)
[ -z "$w" ] && { echo "no worker"; wait $LG; exit 1; }
sleep 12   # ramp 5 s + warm-up 2 s + margin
reqs() { curl -s "http://$admin/metrics" | awk '/^deskmux_proxy_requests_total/ {s += $NF} END {printf "%d", s}'; }
r0=$(reqs)
timeout -s INT 5 strace -c -f -p "$w" -o "$OUT/$DRV.strace" >/dev/null 2>&1
r1=$(reqs)
echo "$DRV: supervisor $sup worker $w admin $admin, requests in the window $((r1 - r0))"
head -14 "$OUT/$DRV.strace"
wait $LG
