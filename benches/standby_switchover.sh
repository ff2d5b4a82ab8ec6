#!/usr/bin/env bash
# Warm-standby switchover at 20,000 desktops through the proxy (issue 6).
#
# On loopback, in a temp dir: a core-server primary, a core-server --standby on the same data
# file, a proxy (2 workers) pairing them (backup = "standby"), and loadgen's ping scenario with
# N desktops (sharded over processes past the fd limit). KILL_AFTER seconds into the measured
# window the primary is killed with SIGKILL (time taken with date +%s.%N just before). The
# proxy's /status is polled every 100 ms. Everything started here is stopped by pid at the end.
#
#   benches/standby_switchover.sh                      # defaults below
#   N=20000 RATE=10000 LINK_HB=100 benches/standby_switchover.sh
#
# Needs: target/release/{core-server,proxy,loadgen}, curl, jq.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DESKMUX_BIN_DIR:-$ROOT/target/release}
N=${N:-20000}                # desktops
RATE=${RATE:-10000}          # open loop, requests/s over all desktops
RAMP=${RAMP:-12}             # s, desktops connect evenly over it
WARMUP=${WARMUP:-2}          # s
DURATION=${DURATION:-20}     # s measured
KILL_AFTER=${KILL_AFTER:-6}  # s into the measured window
LINK_HB=${LINK_HB:-0}        # proxy [limits] link_heartbeat_ms (0 = the server's)
# PERF=1 also profiles the proxy workers for 3 s after the kill (perf.data in the out dir)
OUT=${OUT:-$(mktemp -d /tmp/deskmux-standby.XXXXXX)}
mkdir -p "$OUT"
cd "$OUT"
echo "out dir: $OUT"

PIDS=()
POLL_PID=""
cleanup() {
    set +e
    [ -n "$POLL_PID" ] && kill "$POLL_PID" 2>/dev/null
    for p in "${PIDS[@]}"; do
        # the proxy supervisor's workers first (its children, by parent pid)
        for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do kill -KILL "$c" 2>/dev/null; done
        kill -KILL "$p" 2>/dev/null
    done
    wait 2>/dev/null
}
trap cleanup EXIT

now() { date +%s.%N; }
# stamp each stdout line of a process with the wall clock
stamp() { while IFS= read -r l; do echo "$(now) $l"; done; }
wait_line() { # file pattern timeout_s
    local end=$(( $(date +%s) + $3 ))
    until grep -q "$2" "$1" 2>/dev/null; do
        [ "$(date +%s)" -ge "$end" ] && { echo "timeout waiting for '$2' in $1" >&2; exit 1; }
        sleep 0.05
    done
}

SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat > core.toml <<EOF
listen = "127.0.0.1:0"
role = "both"
db = "$OUT/core.db"
instance = "primary"
link_secret = "$SECRET"
heartbeat_ms = 5000
max_in_flight = 256

[[tenants]]
id = 1
name = "acme"

[[tenants]]
id = 2
name = "globex"
EOF

# N agents, tenants alternating, random passwords; imported with argon2id's cheapest cost (the
# bench measures the switchover, not logins), and given to loadgen as its --credentials.
head -c $((N * 12)) /dev/urandom | od -An -tx1 -v -w12 | tr -d ' ' |
    awk '{ printf "%d\tlg-%d\t%s\n", 1 + (NR - 1) % 2, NR - 1, $0 }' > credentials.tsv
chmod 600 credentials.tsv
"$BIN/core-server" --config core.toml creds import --argon2-m-kib 8 --argon2-t 1 < credentials.tsv

"$BIN/core-server" --config core.toml > >(stamp > primary.out) 2> primary.err &
PRIMARY=$!; PIDS+=("$PRIMARY")
wait_line primary.out LISTENING 10
PA=$(awk '/LISTENING/{print $3; exit}' primary.out)
"$BIN/core-server" --config core.toml --standby --instance standby --listen 127.0.0.1:0 \
    > >(stamp > standby.out) 2> standby.err &
STANDBY=$!; PIDS+=("$STANDBY")
wait_line standby.out "ROLE backup" 10
SA=$(awk '/LISTENING/{print $3; exit}' standby.out)

cat > proxy.toml <<EOF
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
workers = 2
link_secret = "$SECRET"
# Loopback links in plain TCP, by choice (the proxy refuses plaintext links otherwise).
plaintext_links = true
backlog = 8192

[limits]
max_desktops = 20000
max_in_flight = 256
heartbeat_ms = 5000
link_backoff_min_ms = 50
link_backoff_max_ms = 200
link_heartbeat_ms = $LINK_HB

[[upstream]]
name = "primary"
service = ["interaction", "ucs"]
addr = "$PA"
links = 2
backup = "standby"

[[upstream]]
name = "standby"
service = ["interaction", "ucs"]
addr = "$SA"
links = 2
EOF

"$BIN/proxy" --config proxy.toml > >(stamp > proxy.out) 2> proxy.err &
PROXY=$!; PIDS+=("$PROXY")
wait_line proxy.out LISTENING 15
ADMIN=$(awk '/ADMIN/{print $3; exit}' proxy.out)
LISTEN=$(awk '/LISTENING/{print $3; exit}' proxy.out)
echo "primary $PA (pid $PRIMARY), standby $SA (pid $STANDBY), proxy $LISTEN admin $ADMIN (pid $PROXY)"

states() { curl -s -m 1 "http://$ADMIN/status" | jq -c '[.instances[] | {name, state, sessions, links_up}]'; }
end=$(( $(date +%s) + 10 ))
until states | jq -e 'map({(.name): .state}) | add | .primary == "running" and .standby == "backup"' >/dev/null; do
    [ "$(date +%s)" -ge "$end" ] && { echo "instances not running/backup" >&2; states >&2; exit 1; }
    sleep 0.1
done

# /status every 100 ms: "<unix time> <instances>"
# (each poll in the background so that a slow answer does not stretch the 100 ms cadence)
: > status.log
# line: "<poll sent> <answer received> <instances>"; figures below use the answer time
( while :; do t=$(now); ( j=$(states 2>/dev/null || echo null); echo "$t $(now) $j" >> status.log ) & sleep 0.1; done ) &
POLL_PID=$!

LO0=$(nstat -asz TcpExtListenOverflows 2>/dev/null | awk '/ListenOverflows/{print $2}')
T_LG=$(now)
"$BIN/loadgen" run --credentials credentials.tsv --site "$LISTEN" -n "$N" --rate "$RATE" --ramp "$RAMP" --warmup "$WARMUP" \
    --duration "$DURATION" --drain 5 --no-login --interval-ms 100 \
    --json loadgen.json --hdr-log loadgen.hlog > loadgen.out 2> loadgen.err &
LG=$!; PIDS+=("$LG")

# loadgen's t = 0 is 0.4 s after it starts when sharded (past the fd limit less 200), else
# 0.05 s (runner::schedule); kill KILL_AFTER s into the measured window
LEAD=0.05; [ "$N" -gt $(( $(ulimit -n) - 200 )) ] && LEAD=0.4
sleep "$(echo "$T_LG + $LEAD + $RAMP + $WARMUP + $KILL_AFTER - $(now)" | bc)"
T_KILL=$(now)
kill -KILL "$PRIMARY"
# CPU (utime + stime, clock ticks) and run-queue wait of our processes, at the kill and 8 s later
cpu_of() { for p in "$STANDBY" $(ps -o pid= --ppid "$PROXY") $(ps -o pid= --ppid "$LG"); do
    echo "$p $(ps -o comm= -p "$p") $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) $(awk '{print int($2 / 1e6)}' "/proc/$p/schedstat" 2>/dev/null)"; done; }
cpu_of > cpu_at_kill.txt
# PERF=1: profile the proxy workers for 3 s from the kill (diagnostic; perf adds overhead)
if [ "${PERF:-0}" = 1 ]; then
    perf record -F 499 -g -o perf.data -p "$(ps -o pid= --ppid "$PROXY" | paste -sd, | tr -d ' ')" \
        -- sleep 3 > perf.out 2>&1 &
fi
T_KILL_S=$(echo "$T_KILL - $T_LG - $LEAD - $RAMP - $WARMUP" | bc -l | awk '{printf "%.3f", $1}')
echo "KILL $T_KILL (primary pid $PRIMARY, SIGKILL), ~${T_KILL_S} s into loadgen's measured window"

sleep 8
cpu_of > cpu_after.txt
set +e
wait "$LG"; LG_RC=$?
set -e
kill "$POLL_PID" 2>/dev/null; POLL_PID=""
LO1=$(nstat -asz TcpExtListenOverflows 2>/dev/null | awk '/ListenOverflows/{print $2}')
echo "loadgen exit status $LG_RC"

# ---- figures ------------------------------------------------------------------------------
rel() { echo "$1 - $T_KILL" | bc -l | awk '{printf "%.3f s", $1}'; }
T_ROLE=$(awk '/ROLE primary/{print $1; exit}' standby.out)
echo "standby printed ROLE primary:           +$(rel "$T_ROLE") after the kill"
first() { # jq predicate on the instance map -> first poll time after the kill
    sort -n status.log | awk -v k="$T_KILL" '$1 > k' | while read -r _ t j; do
        if echo "$j" | jq -e "map({(.name): .}) | add | $1" >/dev/null 2>&1; then echo "$t"; break; fi
    done
}
T_PSTOP=$(first '.primary.state == "stopped"')
T_SRUN=$(first '.standby.state == "running"')
T_S1=$(first '.standby.sessions > 0')
T_SALL=$(first ".standby.sessions >= $N")
[ -n "$T_PSTOP" ] && echo "/status primary stopped:                +$(rel "$T_PSTOP")"
[ -n "$T_SRUN" ] && echo "/status standby running:                +$(rel "$T_SRUN")"
[ -n "$T_S1" ] && echo "/status standby sessions > 0:           +$(rel "$T_S1")"
[ -n "$T_SALL" ] && echo "/status standby sessions >= $N:      +$(rel "$T_SALL")"
echo "(/status polled every 100 ms; times above are when the answer arrived, the state held no later)"
echo "last poll before the kill and polls around it (sent, answered, relative to the kill):"
sort -n status.log | awk -v k="$T_KILL" '$1 <= k {last=$0} $1 > k && n < 12 {if (last) {print last; last=""} print; n++}' |
    awk -v k="$T_KILL" '{t=$1; u=$2; $1=""; $2=""; printf "  %+.3f %+.3f%s\n", t-k, u-k, $0}'
echo "from the kill to +8 s, per process: CPU used (ticks of 10 ms), time runnable but waiting for a CPU (ms, main thread, /proc/PID/schedstat)"
join <(sort cpu_at_kill.txt) <(sort cpu_after.txt) | awk '{printf "  %s %s cpu %d ticks, runqueue wait %d ms\n", $1, $2, $6 - $3, $7 - $4}'
echo "TcpExtListenOverflows during the run (machine-wide; somaxconn $(cat /proc/sys/net/core/somaxconn)): $(( ${LO1:-0} - ${LO0:-0} ))"
echo "proxy log (link down / standby announced primary), relative to the kill:"
sed 's/\x1b\[[0-9;]*m//g' proxy.err | grep -E 'link down.*primary.*(read error|closed)|primary=true' | head -n 8 |
    while read -r ts rest; do
        u=$(date -d "$ts" +%s.%N); echo "  $(rel "$u")  ${rest:0:100}"; done

K_EL=$(echo "$T_KILL - $T_LG" | bc -l)
echo "loadgen progress (every ~2 s, elapsed since loadgen started; the kill at $(printf %.1f "$K_EL") s):"
grep '^\[' loadgen.err | awk -v k="$K_EL" '{t=$0; sub(/^\[ */, "", t); if (t+0 >= k - 4 && t+0 <= k + 12) print "  " $0}' | cut -c1-160
grep -E '^(clients|requests|latency|throughput)' loadgen.out || tail -n 30 loadgen.out
jq '{clients, requests, throughput_rps, latency_us, loadgen_saturated, loadgen_saturation_reasons}' loadgen.json
# latency over time (by intended send time, 100 ms intervals) around the kill
echo "latency_over_time (t_s: interval start, by intended send time, s into the window; kill at ~${T_KILL_S} s):"
jq -r --argjson k "$T_KILL_S" '.latency_over_time[] | select(.t_s >= $k - 0.5 and .t_s <= $k + 2.5)
    | "  t=\(.t_s)s count=\(.count) p50=\(.p50)us p99=\(.p99)us max=\(.max)us"' loadgen.json
echo "loadgen samples:"; jq -r '.samples[]?' loadgen.json | head -n 8
echo "out dir: $OUT"
