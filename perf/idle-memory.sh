#!/usr/bin/env bash
# Memory per idle connection and after a handshake storm, with a live-heap breakdown.
#   perf/idle-memory.sh                       # plaintext, 5000 idle logged-in connections
#   perf/idle-memory.sh --tls                 # TLS (development CA), same
#   perf/idle-memory.sh --tls --breakdown     # + LD_PRELOAD perf/malloc-live.c: live bytes per OpenSSL
#                                             #   allocation site and per malloc size class, per connection
#   perf/idle-memory.sh --tls --storms 3      # then 3 more rounds of connect-all/close-all: RSS after each
# Prints RSS before, with the connections held, and 3 s after they closed (the server's trim runs then).
# Environment: CONNECTIONS (5000), PORT (26100), SERVE_ENV (extra env for the server, e.g. MALLOC_ARENA_MAX=1).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd); SCRATCH=${SCRATCH:-$ROOT/.build-load}; BIN=$SCRATCH/release
PORT=${PORT:-26100}; N=${CONNECTIONS:-5000}; TLS=0; BREAKDOWN=0; STORMS=0; HOLD=${HOLD:-4}
while [ $# -gt 0 ]; do
  case $1 in
    --tls) TLS=1 ;; --breakdown) BREAKDOWN=1 ;; --storms) STORMS=$2; shift ;;
    --connections) N=$2; shift ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac; shift
done
if [ -z "${NO_BUILD:-}" ]; then
  (cd "$ROOT" && swift build --scratch-path "$SCRATCH" -c release --product switchboard >/dev/null &&
                 swift build --scratch-path "$SCRATCH" -c release --product sbload >/dev/null) || exit 1
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK=$(mktemp -d /tmp/sb-idlemem.XXXXXX); PID=
cleanup() { [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
[ -n "${KEEP_LOG:-}" ] && trap 'cp "$WORK/server.log" "$KEEP_LOG"; cleanup' EXIT
D=$WORK/data
"$BIN/switchboard" users bulk-create --data "$D" --prefix load --count "$N" --password loadtest-pw --pbkdf2-iterations 1 >/dev/null || exit 1
TLSARGS=(--plaintext); CLIENT=()
if [ $TLS = 1 ]; then
  "$BIN/switchboard" cert init --data "$D" >/dev/null || exit 1
  TLSARGS=(); CLIENT=(--tls --ca "$D/tls/ca.pem")
fi
PRE=()
if [ $BREAKDOWN = 1 ]; then
  gcc -O2 -shared -fPIC -o "$WORK/malloc-live.so" "$ROOT/perf/malloc-live.c" -ldl -lcrypto -lpthread || exit 1
  PRE=(LD_PRELOAD="$WORK/malloc-live.so" MALLOC_LIVE_FILE="$WORK/live.txt")
fi
env ${SERVE_ENV:-} "${PRE[@]}" taskset -c 0 "$BIN/switchboard" serve --data "$D" --listen 127.0.0.1:$PORT --log-level ${LOG_LEVEL:-warning} \
  "${TLSARGS[@]}" > "$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' /proc/$PID/status; }
parts() { awk '/RssAnon|RssFile/ {printf "%s %s KiB  ", $1, $2}' /proc/$PID/status; }
snap() { [ $BREAKDOWN = 1 ] && { kill -USR2 $PID; sleep 0.5; }; }
sleep 1; snap; R0=$(rss); echo "baseline: $(parts)"
round() {
  taskset -c 1 "$BIN/sbload" connect --target 127.0.0.1:$PORT --password loadtest-pw --connections "$N" --hold "$HOLD" \
    --server-pid $PID "${CLIENT[@]}" > "$WORK/load.txt" 2>&1 &
  local L=$!
  for _ in $(seq 600); do [ "$(ls /proc/$PID/fd | wc -l)" -ge "$N" ] && break; sleep 0.1; done
  sleep 1.5; snap; R1=$(rss)
  wait $L; grep -E "server RSS|logged|fail" "$WORK/load.txt" | head -3
  sleep 3; snap; R2=$(rss); P2=$(parts)
}
round
echo "RSS: baseline $R0 KiB, $N connections held $R1 KiB ($(( (R1-R0)*1024/N )) B/conn), 3 s after close $R2 KiB (+$(( (R2-R0)/1024 )) MiB; $P2)"
for i in $(seq "$STORMS"); do round; echo "storm $i: held $R1 KiB, 3 s after close $R2 KiB (+$(( (R2-R0)/1024 )) MiB over baseline; $P2)"; done
if [ $BREAKDOWN = 1 ]; then
  python3 - "$WORK/live.txt" "$N" <<'PY'
import sys
snaps, cur = [], None
for line in open(sys.argv[1]):
    p = line.split()
    if p[0] == 'snapshot': cur = {}
    elif p[0] == 'end': snaps.append(cur)
    elif p[0] == 'allocs': pass
    else: cur[(p[0], p[1]) if p[0] in ('ossl', 'size') else (p[0], '')] = (int(p[-2]), int(p[-1]))
n = int(sys.argv[2])
def diff(a, b):
    rows = []
    for k in set(a) | set(b):
        db = b.get(k, (0, 0))[0] - a.get(k, (0, 0))[0]; dc = b.get(k, (0, 0))[1] - a.get(k, (0, 0))[1]
        rows.append((db, dc, k))
    return sorted(rows, reverse=True)
print(f"live heap per held connection (held - baseline, / {n}):")
for db, dc, k in diff(snaps[0], snaps[1]):
    if abs(db) / n >= 8 or k[0].endswith('total'):
        print(f"  {db/n:9.1f} B  {dc/n:6.2f} blocks  {k[0]} {k[1]}")
if len(snaps) > 2:
    print("live heap still held 3 s after all closed (after close - baseline, whole process):")
    for db, dc, k in diff(snaps[0], snaps[2]):
        if abs(db) >= 64 << 10 or k[0].endswith('total'):
            print(f"  {db/1024:9.0f} KiB  {dc:7d} blocks  {k[0]} {k[1]}")
PY
fi
