#!/usr/bin/env bash
# Two proxy builds side by side in one session: `loadgen compare` (core-server direct, then
# through the proxy) with each build, interleaved, for each in-flight window, REPS times.
# Each folder holds `loadgen`, `core-server` and `proxy` (loadgen starts the binaries next to
# it); give both folders the same loadgen and core-server so that only the proxy differs.
#
#   benches/proxy_before_after.sh OLD_DIR NEW_DIR
#
# Env: CLIENTS (15000), REPS (4; even, so each build goes first equally often), WINDOWS
# ("1 16"), OUT (a folder for the JSON and logs).
# Prints one line per run (proxy CPU per request is the figure to compare), then a summary.
set -uo pipefail
OLD=${1:?old bin dir}; NEW=${2:?new bin dir}
CLIENTS=${CLIENTS:-15000}; REPS=${REPS:-4}; WINDOWS=${WINDOWS:-"1 16"}
OUT=${OUT:-$(mktemp -d -t before-after.XXXX)}; mkdir -p "$OUT"
for rep in $(seq 1 "$REPS"); do
  for w in $WINDOWS; do
    # The order alternates between repetitions: a run leaves ~30,000 TIME_WAIT sockets and a
    # warm page cache behind it, which would otherwise always favour the same build.
    order="old new"; [ $((rep % 2)) = 0 ] && order="new old"
    for which in $order; do
      dir=$OLD; [ "$which" = new ] && dir=$NEW
      json="$OUT/$which.w$w.$rep.json"
      "$dir/loadgen" compare -n "$CLIENTS" --window "$w" -q --json "$json" > "$OUT/$which.w$w.$rep.log" 2>&1
      python3 - "$json" "$which" "$w" "$rep" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); which, w, r = sys.argv[2:5]
x = d["proxy"]; s = x["server"]
print(f"{which} window {w:>2} rep {r}: {x['throughput_rps']:7.0f} req/s  proxy {s['proxy_cpu_us_per_request']:5.2f} us/req  "
      f"server {s['server_cpu_us_per_request']:5.2f} us/req  p99 {x['latency_us']['p99'] / 1000:6.1f} ms  lost {x['requests']['lost']}")
PY
      sleep 3
    done
  done
done
python3 - "$OUT" "$WINDOWS" <<'PY'
import glob, json, statistics, sys
out, windows = sys.argv[1], sys.argv[2].split()
for w in windows:
    cpu = {}
    for which in ("old", "new"):
        v = [json.load(open(f))["proxy"]["server"]["proxy_cpu_us_per_request"]
             for f in sorted(glob.glob(f"{out}/{which}.w{w}.*.json"))]
        cpu[which] = v
    mo, mn = statistics.median(cpu["old"]), statistics.median(cpu["new"])
    print(f"window {w}: proxy CPU per request, median of {len(cpu['old'])}: old {mo:.2f} us, new {mn:.2f} us, new/old {mn / mo:.3f}")
PY
echo "$OUT"
