#!/usr/bin/env bash
# QUIC and TLS against TCP desktops (issue 7), three measurements on loopback:
#
#  1. scale:  `loadgen transports` with N desktops open loop at RATE req/s (TCP then QUIC
#             through one stack, then TLS through a second stack whose proxy speaks TLS):
#             all must end with lost = 0; throughput and proxy CPU per request side by side.
#  2. peak:   `loadgen transports` with PEAK_N desktops closed loop (1 outstanding each):
#             the most each transport pushes through the proxy on these 2 shared cores.
#  3. spread: `loadgen demo --transport quic` closed loop with 1 proxy worker (one endpoint
#             driver), and with 2 workers fed from 1 client UDP socket in all (one 4-tuple) and
#             from 8 per loadgen thread: how the kernel's SO_REUSEPORT hash spreads QUIC flows
#             over the workers' sockets (per-worker CPU from /proc over the measured window).
#
#  4. ab:     the peak run (2.) with two builds of the stack, interleaved REPS times (A then B
#             each repetition), so that a change's QUIC÷TCP ratio is compared with its baseline
#             measured in the same session: A = BASE_BIN_DIR (e.g. a copy of the binaries built
#             before the change), B = DESKMUX_BIN_DIR. The same loadgen (B's) drives both.
#
#   benches/quic_transports.sh                 # defaults below
#   N=20000 RATE=5000 HB=30000 benches/quic_transports.sh   # the settings of runs 1 and 2
#   ONLY=ab BASE_BIN_DIR=/tmp/before REPS=2 benches/quic_transports.sh
#
# Needs: target/release/{core-server,proxy,loadgen} (cargo build --release --workspace --bins),
# jq.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DESKMUX_BIN_DIR:-$ROOT/target/release}
N=${N:-20000}            # desktops, scale run
RATE=${RATE:-5000}       # open loop rate of the scale run, req/s over all desktops
RAMP=${RAMP:-60}         # s, scale run ramp (N QUIC handshakes spread over it)
HB=${HB:-5000}           # proxy desktop heartbeat_ms (idle desktops heartbeat after HB of silence)
PEAK_N=${PEAK_N:-2000}   # desktops, peak and spread runs
DURATION=${DURATION:-20} # s measured
ONLY=${ONLY:-all}         # all | scale | peak | spread | ab (not part of all)
REPS=${REPS:-2}           # ab: repetitions
OUT=${OUT:-$(mktemp -d /tmp/deskmux-quic.XXXXXX)}
mkdir -p "$OUT"
echo "out dir: $OUT"
LG="$BIN/loadgen"

line() { # name json -> one summary line per transport
    jq -r --arg n "$1" '
      ["tcp","tls","quic"][] as $t | .[$t] |
      "\($n) \($t): connected \(.clients.connected)/\(.clients.target) failed \(.clients.failed) lost \(.requests.lost) wrong \(.requests.wrong) errors \(.requests.errors) | \(.throughput_rps|floor) req/s, proxy \(.server.proxy_cpu_us_per_request*100|floor/100) µs cpu/req (\(.server.proxy_cpu_percent|floor) % cpu), p50 \(.latency_us.p50|floor) µs p99 \(.latency_us.p99|floor) µs"
    ' "$2"
    for t in quic tls; do
        jq -r --arg n "$1" --arg t "$t" '.["ratios_\($t)_over_tcp"] as $r | "\($n) \($t)/tcp: throughput \($r.throughput*100|floor/100)×, proxy cpu per request \($r.proxy_cpu_per_request*100|floor/100)×, p99 \($r.p99*100|floor/100)×"' "$2"
    done
}

if [ "$ONLY" = all ] || [ "$ONLY" = scale ]; then
echo "== 1. scale: $N desktops, open loop $RATE req/s, heartbeat $HB ms =="
"$LG" transports -q -n "$N" --rate "$RATE" --ramp "$RAMP" --warmup 5 --duration "$DURATION" \
    --drain 5 --heartbeat-ms "$HB" --json "$OUT/scale.json" >"$OUT/scale.log" 2>&1 || true
line scale "$OUT/scale.json"
fi

if [ "$ONLY" = all ] || [ "$ONLY" = peak ]; then
echo "== 2. peak: $PEAK_N desktops, closed loop =="
"$LG" transports -q -n "$PEAK_N" --ramp 3 --warmup 2 --duration "$DURATION" --drain 3 \
    --heartbeat-ms "$HB" --json "$OUT/peak.json" >"$OUT/peak.log" 2>&1 || true
line peak "$OUT/peak.json"
fi

if [ "$ONLY" = all ] || [ "$ONLY" = spread ]; then
echo "== 3. spread: QUIC, $PEAK_N desktops closed loop, by proxy workers x client sockets =="
for cfg in "1 8 2" "2 8 2" "2 1 1" "2 8 1"; do
    set -- $cfg
    W=$1 # proxy workers
    S=$2 # client UDP sockets per loadgen thread
    T=$3 # loadgen threads
    J="$OUT/spread-w$W-s$S-t$T.json"
    "$LG" demo -q --transport quic --proxy-workers "$W" --quic-sockets "$S" --threads "$T" \
        -n "$PEAK_N" \
        --ramp 3 --warmup 2 --duration "$DURATION" --drain 3 --heartbeat-ms "$HB" \
        --json "$J" >"$OUT/spread-w$W-s$S-t$T.log" 2>&1 &
    LPID=$!
    # Per-worker CPU over the middle of the measured window (workers: children of the proxy
    # supervisor started by this loadgen).
    sleep $((5 + DURATION / 4))
    SUP=$(pgrep -P "$LPID" -x proxy | head -1 || true)
    WORKERS=$(pgrep -P "$SUP" 2>/dev/null | tr '\n' ' ' || true)
    ticks() { for p in $WORKERS; do awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0; done | tr '\n' ' '; }
    A=($(ticks))
    sleep $((DURATION / 2))
    B=($(ticks))
    SPLIT=""
    for i in "${!A[@]}"; do SPLIT+="$(( ${B[$i]:-0} - ${A[$i]} )) "; done
    wait "$LPID" || true
    jq -r --arg c "workers $W, client sockets $S/thread × $T thread(s)" --arg s "$SPLIT" \
        '"spread \($c): \(.throughput_rps|floor) req/s, proxy \(.server.proxy_cpu_us_per_request*100|floor/100) µs cpu/req, lost \(.requests.lost), worker CPU ticks over \(.duration_s/2) s: \($s)"' "$J"
done
fi

if [ "$ONLY" = ab ]; then
: "${BASE_BIN_DIR:?ab needs BASE_BIN_DIR (the binaries to compare against)}"
echo "== 4. ab: $PEAK_N desktops closed loop, A=$BASE_BIN_DIR B=$BIN, $REPS repetitions =="
for rep in $(seq 1 "$REPS"); do
    for side in A B; do
        if [ "$side" = A ]; then DIR=$BASE_BIN_DIR; else DIR=$BIN; fi
        J="$OUT/ab-$side-$rep.json"
        DESKMUX_BIN_DIR=$DIR "$LG" transports -q -n "$PEAK_N" --ramp 3 --warmup 2 \
            --duration "$DURATION" --drain 3 --heartbeat-ms "$HB" --json "$J" \
            >"$OUT/ab-$side-$rep.log" 2>&1 || true
        jq -r --arg s "$side#$rep" '"ab \($s): tcp \(.tcp.throughput_rps|floor) req/s \(.tcp.server.proxy_cpu_us_per_request*100|floor/100) µs | tls \(.tls.server.proxy_cpu_us_per_request*100|floor/100) µs | quic \(.quic.throughput_rps|floor) req/s \(.quic.server.proxy_cpu_us_per_request*100|floor/100) µs, lost \(.quic.requests.lost) | quic/tcp proxy cpu per request \(.ratios_quic_over_tcp.proxy_cpu_per_request*100|floor/100)×"' "$J"
    done
done
fi
