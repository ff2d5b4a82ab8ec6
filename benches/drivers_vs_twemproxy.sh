#!/usr/bin/env bash
# The proxy's CPU per request against twemproxy's, with each of the proxy's I/O drivers, in one
# session (issue 17): per repetition, twemproxy in front of redis (redis-benchmark, GET, 64 B,
# through ../shared/peers/bench_one.sh), then `loadgen compare` with the mio driver, then with
# the io_uring driver (DESKMUX_PROXY_DRIVER=uring). Links are plain TCP for both drivers
# (`--plaintext-links`: the uring driver has no TLS). Run from the project root after
# `cargo build --release --workspace --bins`, with the peers installed (`env.sh --install`).
# Env: CLIENTS (15000), REPS (2), N (700000), OUT (a folder), PEERS (../shared/peers).
set -uo pipefail
PEERS=${PEERS:-$(cd "$(dirname "$0")/../../shared/peers" && pwd)}
CLIENTS=${CLIENTS:-15000}; REPS=${REPS:-2}; N=${N:-700000}
OUT=${OUT:-$(mktemp -d -t drivers.XXXX)}; mkdir -p "$OUT"
LG=target/release/loadgen
[ -x "$LG" ] || { echo "run from the project root after cargo build --release --workspace --bins" >&2; exit 1; }
"$PEERS/start_servers.sh" redis tw1 >/dev/null || exit 1
for rep in $(seq 1 "$REPS"); do
    row=$("$PEERS/bench_one.sh" tw1 "$CLIENTS" 1 get "$N" "$rep" "$OUT/redis.csv" | tail -1)
    echo "$row" | awk -F, '{printf "twemproxy    rep %s: %7.0f req/s  proxy %5.2f us/req  client %5.2f us/req\n", $8, $9, $17, $19}'
    for driver in mio uring; do
        DESKMUX_PROXY_DRIVER=$driver "$LG" compare -n "$CLIENTS" -q --plaintext-links \
            --json "$OUT/$driver.$rep.json" >"$OUT/$driver.$rep.log" 2>&1
        python3 - "$OUT/$driver.$rep.json" "$rep" "$driver" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); x = d["proxy"]; s = x["server"]
print(f"deskmux-{sys.argv[3]:<5} rep {sys.argv[2]}: {x['throughput_rps']:7.0f} req/s  proxy {s['proxy_cpu_us_per_request']:5.2f} us/req  "
      f"client {x['loadgen_cpu_us_per_request']:5.2f} us/req  lost {x['requests']['lost']}  (direct leg: server {d['direct']['server']['server_cpu_us_per_request']:5.2f} us/req)")
PY
    done
done
"$PEERS/stop_servers.sh" redis tw1 >/dev/null
echo "$OUT"
