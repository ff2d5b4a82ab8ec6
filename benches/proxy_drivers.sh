#!/usr/bin/env bash
# mio against io_uring in one session: `loadgen compare` (core-server direct, then through a
# proxy with 2 workers and plain TCP links) with each driver, interleaved, the order
# alternating between repetitions; one line per run (proxy CPU per request, lost).
#   benches/proxy_drivers.sh BIN_DIR OUT   (env: CLIENTS 5000, REPS 2, WINDOWS "1 16",
#                                          DRIVERS "mio uring")
# BIN_DIR holds loadgen, core-server and proxy (loadgen starts the ones next to it).
# A driver `uring-plainfd` is the uring driver with registered files off
# (DESKMUX_URING_REGISTERED_FILES=off): `DRIVERS="uring uring-plainfd"` compares the two.
set -uo pipefail
BIN=$1; OUT=$2; mkdir -p "$OUT"
CLIENTS=${CLIENTS:-5000}; REPS=${REPS:-2}; WINDOWS=${WINDOWS:-"1 16"}; DRIVERS=${DRIVERS:-"mio uring"}
for rep in $(seq 1 "$REPS"); do
  for w in $WINDOWS; do
    order=$DRIVERS; [ $((rep % 2)) = 0 ] && order=$(printf '%s\n' $DRIVERS | tac | xargs)
    for drv in $order; do
      json="$OUT/$drv.w$w.$rep.json"
      files=on; [ "$drv" = uring-plainfd ] && files=off
      DESKMUX_URING_REGISTERED_FILES=$files DESKMUX_PROXY_DRIVER=${drv%-plainfd} "$BIN/loadgen" compare -n "$CLIENTS" --window "$w" --plaintext-links -q --json "$json" > "$OUT/$drv.w$w.$rep.log" 2>&1
      python3 - "$json" "$drv" "$w" "$rep" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); drv, w, r = sys.argv[2:5]
x = d["proxy"]; s = x["server"]
print(f"{drv:13} window {w:>2} rep {r}: {x['throughput_rps']:7.0f} req/s  proxy {s['proxy_cpu_us_per_request']:5.2f} us/req  "
      f"server {s['server_cpu_us_per_request']:5.2f} us/req  p99 {x['latency_us']['p99'] / 1000:6.1f} ms  lost {x['requests']['lost']}", flush=True)
PY
      sleep 3
    done
  done
done
