#!/usr/bin/env bash
# What security costs, in one run (issue 12): argon2id per password login at the default cost,
# a reconnect storm of N desktops presenting reconnect tokens through the proxy, and the CPU per
# request of TLS links against plaintext links.
#
#   benches/security_costs.sh             # PW=200 password logins, N=20000 storm desktops,
#                                         # REPS=3 link TLS pairs of 5,000 desktops
#   PW=100 N=5000 REPS=1 benches/security_costs.sh
#
# Part 1, direct to core-server: PW agents provisioned with `creds import` at argon2id's default
# cost (19 MiB, 2 passes, 1 lane), each logs in once with its password (loadgen run, no AGENT_LOGIN).
# The server's admin line `auth` reports how many argon2 verifications ran and their total
# wall time on the auth thread; the server's CPU time over the login phase is read from /proc.
#
# Part 2: `loadgen demo -s storm -n N` (proxy in front): every desktop drops and reconnects
# twice; on reconnect it presents the token of its last server hello (the default), then the
# same with --no-reconnect-tokens (passwords, imported at argon2id's cheapest cost by the demo).
#
# Part 3: `loadgen demo -n 5000` closed loop and paced at 10,000 req/s, with TLS links (the
# default) and with --plaintext-links, interleaved REPS times; CPU per request of the proxy and
# of the server over the measured window, from the demo's JSON.
#
# Needs: target/release/{core-server,proxy,loadgen}, jq.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DESKMUX_BIN_DIR:-$ROOT/target/release}
PW=${PW:-200}
N=${N:-20000}
REPS=${REPS:-3}
OUT=${OUT:-$(mktemp -d /tmp/deskmux-auth.XXXXXX)}
mkdir -p "$OUT"
cd "$OUT"
echo "out dir: $OUT"

PIDS=()
cleanup() { set +e; for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_line() { # file pattern timeout_s
    local end=$(( $(date +%s) + $3 ))
    until grep -q "$2" "$1" 2>/dev/null; do
        [ "$(date +%s)" -ge "$end" ] && { echo "timeout waiting for '$2' in $1" >&2; exit 1; }
        sleep 0.05
    done
}

# ---- part 1: argon2id per password login, default cost
cat > core.toml <<EOF
listen = "127.0.0.1:0"
db = "$OUT/core.db"
admin_listen = "127.0.0.1:0"

[[tenants]]
id = 1
name = "acme"
EOF
head -c $((PW * 12)) /dev/urandom | od -An -tx1 -v -w12 | tr -d ' ' |
    awk '{ printf "1\tpw-%d\t%s\n", NR - 1, $0 }' > pw.tsv
chmod 600 pw.tsv
t0=$(date +%s.%N)
"$BIN/core-server" --config core.toml creds import < pw.tsv
t1=$(date +%s.%N)
echo "import of $PW agents at the default cost: $(echo "$t1 - $t0" | bc) s"

"$BIN/core-server" --config core.toml > core.out 2> core.err &
SERVER=$!; PIDS+=("$SERVER")
wait_line core.out ADMIN 10
ADDR=$(awk '/LISTENING/{print $2; exit}' core.out)
ADMIN=$(awk '/ADMIN/{print $2; exit}' core.out)
admin() { exec 3<>"/dev/tcp/${ADMIN%:*}/${ADMIN#*:}"; echo "$1" >&3; head -n1 <&3; exec 3>&-; }
c0=$(cpu_ticks "$SERVER")
"$BIN/loadgen" run --credentials pw.tsv --site "$ADDR" -n "$PW" --no-login --ramp 2 --warmup 0.5 \
    --duration 1 --drain 1 -q --json pw.json > pw.out 2> pw.err || true
c1=$(cpu_ticks "$SERVER")
line=$(admin auth)
echo "admin auth: $line"
runs=$(echo "$line" | tr ' ' '\n' | awk -F= '$1=="argon2_runs"{print $2}')
ns=$(echo "$line" | tr ' ' '\n' | awk -F= '$1=="argon2_ns"{print $2}')
hz=$(getconf CLK_TCK)
echo "logins: $(jq .clients.connected pw.json) of $PW connected"
echo "argon2id (19 MiB, t=2, p=1): $runs verifications, mean $(echo "scale=2; $ns / $runs / 1000000" | bc) ms each (auth thread wall time)"
echo "server CPU over the run: $(echo "scale=2; ($c1 - $c0) * 1000 / $hz" | bc) ms, $(echo "scale=2; ($c1 - $c0) * 1000 / $hz / $runs" | bc) ms per login (echo load included)"
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true

# ---- part 2: a reconnect storm of N desktops, tokens and then passwords
for mode in tokens passwords; do
    extra=()
    [ "$mode" = passwords ] && extra=(--no-reconnect-tokens)
    "$BIN/loadgen" demo -s storm -n "$N" -q --json "storm-$mode.json" "${extra[@]}" \
        > "storm-$mode.out" 2> "storm-$mode.err" || true
    echo "storm with $mode: connected $(jq .clients.connected "storm-$mode.json") of $N, lost $(jq .requests.lost "storm-$mode.json")"
    jq -c '.storm[] | {jitter, reconnected, failed_attempts, reconnect_ms: {p50: (.reconnect_us.p50 / 1000), p99: (.reconnect_us.p99 / 1000), max: (.reconnect_us.max / 1000)}}' \
        "storm-$mode.json"
done

# ---- part 3: link TLS against plaintext, interleaved
row() { # file mode label
    printf '%-7s %-6s %9.0f req/s  proxy %6.2f µs/req  server %6.2f µs/req  p99 %8.0f µs  lost %s\n' \
        "$3" "$2" "$(jq '.throughput_rps // .requests.rate // 0' "$1")" \
        "$(jq .server.proxy_cpu_us_per_request "$1")" "$(jq .server.server_cpu_us_per_request "$1")" \
        "$(jq .latency_us.p99 "$1")" "$(jq .requests.lost "$1")"
}
for i in $(seq 1 "$REPS"); do
    for m in plain tls; do
        f=()
        [ "$m" = plain ] && f=(--plaintext-links)
        "$BIN/loadgen" demo -n 5000 -w 1 -d 10 -q "${f[@]}" --json "c-$m-$i.json" > "c-$m-$i.out" 2>&1 || true
        row "c-$m-$i.json" "$m" "closed"
        "$BIN/loadgen" demo -n 5000 -w 1 -d 10 --rate 10000 -q "${f[@]}" --json "r-$m-$i.json" > "r-$m-$i.out" 2>&1 || true
        row "r-$m-$i.json" "$m" "paced"
    done
done
for shape in c r; do
    for k in proxy server; do
        mean() { cat "$shape"-"$1"-*.json | jq -s "map(.server.${k}_cpu_us_per_request) | add / length"; }
        p=$(mean plain); t=$(mean tls)
        echo "$([ $shape = c ] && echo closed || echo paced) $k µs/req: plain $p, tls $t, tls ÷ plain $(echo "scale=3; $t / $p" | bc)"
    done
done
