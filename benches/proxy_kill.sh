#!/usr/bin/env bash
# Desktops outlive their proxy (PROTOCOL.md §4.6), at scale: agent load on N desktops (default
# 20,000) spread over two proxies in front of one core-server. Proxy A is killed with SIGKILL
# (its workers and its supervisor) mid-run and started again; later proxy B is drained
# (SIGTERM: GO_AWAY to its desktops). loadgen's desktops resume through the other proxy.
# Prints loadgen's summary: resumed against re-logged-in, unicast events lost / duplicated /
# replayed, requests lost or retried after resume, and how long each desktop was away.
#
#   benches/proxy_kill.sh [DESKTOPS] [--no-resume]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
EXTRA=${2:-}
cargo build --release -q --workspace --bins
BIN=$PWD/target/release
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do pkill -KILL -P "$p" 2>/dev/null || true; kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s' "$SECRET" >"$work/link.secret"
chmod 600 "$work/link.secret"
for i in $(seq 0 $((N - 1))); do printf '1\tlg-%d\tpw-%d-long-enough\n' "$i" "$i"; done >"$work/creds.tsv"
chmod 600 "$work/creds.tsv"

cat >"$work/core.toml" <<EOF
listen = "127.0.0.1:7190"
http_listen = "127.0.0.1:7191"
db = "$work/core.db"
link_secret_file = "$work/link.secret"
[[tenants]]
id = 1
name = "acme"
EOF
"$BIN/core-server" --config "$work/core.toml" creds import --argon2-m-kib 8 --argon2-t 1 \
    <"$work/creds.tsv" >/dev/null
"$BIN/core-server" --config "$work/core.toml" >"$work/core.out" 2>"$work/core.err" &
pids+=($!)

proxy_cfg() { # name port admin
    cat >"$work/$1.toml" <<EOF
listen = "127.0.0.1:$2"
admin = "127.0.0.1:$3"
workers = 2
link_secret_file = "$work/link.secret"
plaintext_links = true
[limits]
drain_grace_ms = 5000
[[upstream]]
name = "core"
service = ["interaction", "ucs"]
addr = "127.0.0.1:7190"
links = 2
EOF
}
proxy_cfg a 7201 7211
proxy_cfg b 7202 7212
start_proxy() { "$BIN/proxy" --config "$work/$1.toml" >>"$work/$1.out" 2>>"$work/$1.err" & echo $!; }
sleep 1
A=$(start_proxy a); pids+=("$A")
B=$(start_proxy b); pids+=("$B")
sleep 2

RAMP=20 WARM=5 DUR=60
"$BIN/loadgen" run --site 127.0.0.1:7201 --site 127.0.0.1:7202 -s agent -n "$N" \
    --credentials "$work/creds.tsv" --submit-rate 200 --media-share 0.01 \
    --ramp "${RAMP}s" --warmup "${WARM}s" -d "${DUR}s" --drain 10s \
    --json "$work/out.json" $EXTRA >"$work/loadgen.out" 2>&1 &
LG=$!
pids+=("$LG")
# Mid-run: kill A (workers first, so that nothing of it drains), then start it again.
sleep $((RAMP + WARM + 15))
echo "$(date -u +%T) SIGKILL proxy A ($A and its workers)"
pkill -KILL -P "$A" || true
kill -KILL "$A" || true
wait "$A" 2>/dev/null || true
sleep 1
A=$(start_proxy a); pids+=("$A")
echo "$(date -u +%T) proxy A started again ($A)"
# Later: drain B.
sleep 20
echo "$(date -u +%T) SIGTERM proxy B ($B): drain"
kill -TERM "$B"
wait "$LG" || echo "loadgen exit $?"
grep -E '^(clients|requests|events|latency|back after)' "$work/loadgen.out" || cat "$work/loadgen.out"
python3 - "$work/out.json" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))
c, r, e, b = v["clients"], v["requests"], v["events"], v["back_after_drop_us"]
print(f"resumed {c['resumed']} of {c['reconnects']} reconnects, resume refused {c['resume_refused']}, "
      f"logins {r['by_type'].get('agent_login', 0)}, agents going on with interrupted work {c['work_resumed']}")
print(f"unicast lost {e['unicast_lost']}, duplicated {e['unicast_duplicates']}, replayed {e['replayed']}")
print(f"requests lost {r['lost']}, retried after resume {r['retried_after_resume']}, wrong {r['wrong']}, "
      f"outcome-unknown errors {r['errors_by_class']['outcome_unknown']}")
print(f"back after a drop: p50 {b['p50']/1000:.0f} ms, p99 {b['p99']/1000:.0f} ms, max {b['max']/1000:.0f} ms ({b['count']} drops)")
EOF
curl -s http://127.0.0.1:7191/metrics | grep -E '^deskmux_core_(sessions_detached|sessions_resumed|resumes_refused|detached_expired|detached_overflowed)_total|^deskmux_core_replay_bytes'
