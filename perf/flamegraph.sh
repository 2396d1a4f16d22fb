#!/usr/bin/env bash
# CPU flame graph of the server during the bulk relay: builds release, creates users in a temp data folder,
# starts `switchboard serve` pinned to CPU 0 and `sbload relay` (1000 pairs × window 64, closed loop) pinned
# to CPU 1; once every connection is sending, runs `perf stat` and
# `perf record -e cpu-clock -F 999 -g -p SERVER_PID` for SECONDS, then `perf script` → perf/flamegraph.py
# (stack folding, Swift demangling, SVG). The server and sbload are always stopped (trap).
#
#   perf/flamegraph.sh                          # plaintext, 5 s of profile
#   perf/flamegraph.sh --seconds 8 --tls        # over TLS
#   perf/flamegraph.sh --rate 20000             # open loop instead (options it does not know go to sbload relay)
#
# Options: --seconds S (5), --freq HZ (999), --pairs N (1000), --window W (64), --tls, --top N (10), --port P,
# --call-graph fp|dwarf (fp = -g; dwarf also unwinds glibc's send/read, which have no frame pointer, at a
# much larger perf.data).
# Writes perf/out/flame-<timestamp>/: flame.svg, flame.folded, perf-script.txt.gz, perf-stat.txt, top.txt,
# sbload.json/.txt, server.log (perf.data is deleted: it is large and the folded stacks keep what matters).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH=${SCRATCH:-$ROOT/.build-load}
PORT=${PORT:-17930}
PASSWORD=loadtest-pw
PREFIX=load
PAIRS=1000
WINDOW=64
SECONDS_PROFILED=5
FREQ=999
CALL_GRAPH=fp
TOP=10
TLS=0
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SBLOAD_ARGS=()

while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_PROFILED=$2; shift 2 ;;
    --freq) FREQ=$2; shift 2 ;;
    --call-graph) CALL_GRAPH=$2; shift 2 ;;
    --pairs) PAIRS=$2; shift 2 ;;
    --window) WINDOW=$2; shift 2 ;;
    --top) TOP=$2; shift 2 ;;
    --tls) TLS=1; shift ;;
    --port) PORT=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) SBLOAD_ARGS+=("$1"); shift ;;
  esac
done
command -v perf >/dev/null || { echo "perf not installed (apt-get install linux-perf)" >&2; exit 1; }

OUT=$ROOT/perf/out/flame-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
echo "== building (release, scratch $SCRATCH)" >&2
(cd "$ROOT" && swift build --scratch-path "$SCRATCH" -c release --product switchboard >/dev/null &&
               swift build --scratch-path "$SCRATCH" -c release --product sbload >/dev/null)
BIN=$SCRATCH/release
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

DATA=$(mktemp -d /tmp/sb-flame.XXXXXX)
SERVER_PID=
LOAD_PID=
cleanup() {
  if [ -n "$LOAD_PID" ] && kill -0 "$LOAD_PID" 2>/dev/null; then kill -TERM "$LOAD_PID" 2>/dev/null || true; fi
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$DATA" "$OUT/perf.data" "$OUT/perf.data.old"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== creating $((2 * PAIRS)) users in $DATA" >&2
"$BIN/switchboard" users bulk-create --data "$DATA" --prefix "$PREFIX" --count $((2 * PAIRS)) \
  --password "$PASSWORD" --pair-contacts >/dev/null
SERVE_ARGS=(serve --data "$DATA" --listen 127.0.0.1:$PORT --log-level warning)
MODE=plaintext
if [ "$TLS" = 1 ]; then
  "$BIN/switchboard" cert init --data "$DATA" >/dev/null
  SBLOAD_ARGS+=(--tls --ca "$DATA/tls/ca.pem"); MODE=TLS
else
  SERVE_ARGS+=(--plaintext)
fi
taskset -c "$SERVER_CPU" "$BIN/switchboard" "${SERVE_ARGS[@]}" >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$OUT/server.log" 2>/dev/null && break; sleep 0.1; done
grep -q "listening on" "$OUT/server.log" || { echo "server did not start:" >&2; cat "$OUT/server.log" >&2; exit 1; }
echo "== server pid $SERVER_PID on CPU $SERVER_CPU ($MODE), sbload on CPU $LOAD_CPU" >&2

# sbload runs 3 s longer than the profile (logins + margin); perf starts at its first progress line.
taskset -c "$LOAD_CPU" "$BIN/sbload" relay --target 127.0.0.1:$PORT --password "$PASSWORD" --prefix "$PREFIX" \
  --pairs "$PAIRS" --window "$WINDOW" --server-pid "$SERVER_PID" --warmup 1 --duration $((SECONDS_PROFILED + 3)) \
  "${SBLOAD_ARGS[@]}" --json >"$OUT/sbload.json" 2>"$OUT/sbload.txt" &
LOAD_PID=$!
for _ in $(seq 600); do grep -q '^\[' "$OUT/sbload.txt" 2>/dev/null && break; sleep 0.05; done
sleep 1   # past the logins and the first second

echo "== perf record -e cpu-clock -F $FREQ -g -p $SERVER_PID for $SECONDS_PROFILED s (+ perf stat)" >&2
EVENTS=task-clock,context-switches,cpu-migrations,page-faults
if perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1; then EVENTS=$EVENTS,raw_syscalls:sys_enter; fi
perf stat -e "$EVENTS" -p "$SERVER_PID" -o "$OUT/perf-stat.txt" -- sleep "$SECONDS_PROFILED" 2>/dev/null &
STAT_PID=$!
perf record -e cpu-clock -F "$FREQ" --call-graph "$CALL_GRAPH" -p "$SERVER_PID" -o "$OUT/perf.data" -- sleep "$SECONDS_PROFILED" \
  2>"$OUT/perf-record.err" || { echo "perf record failed:" >&2; cat "$OUT/perf-record.err" >&2; exit 1; }
wait "$STAT_PID" || true
wait "$LOAD_PID" || echo "sbload exited with $? (see $OUT/sbload.txt)" >&2
LOAD_PID=
grep -E '^(throughput|latency|cpu|verdict)' "$OUT/sbload.txt" >&2 || true

perf script -i "$OUT/perf.data" >"$OUT/perf-script.txt" 2>/dev/null
"$ROOT/perf/flamegraph.py" "$OUT/perf-script.txt" --folded "$OUT/flame.folded" --top "$TOP" \
  --title "switchboard serve ($MODE), sbload relay $PAIRS pairs × window $WINDOW: perf cpu-clock ${FREQ} Hz, ${SECONDS_PROFILED} s" \
  >"$OUT/flame.svg" 2>"$OUT/top.txt"
cat "$OUT/top.txt"
grep -E 'task-clock|context-switches|sys_enter' "$OUT/perf-stat.txt" 2>/dev/null || true
gzip -f "$OUT/perf-script.txt"
echo "flame graph: $OUT/flame.svg" >&2
