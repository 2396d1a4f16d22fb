#!/usr/bin/env bash
# Runs the relay scenario against a fresh server: builds release, creates users in a temp data folder,
# starts `switchboard serve` pinned to CPU 0 and `sbload relay` pinned to CPU 1, repeats the run
# RUNS times and prints each report plus the medians. Optional: `perf stat` on the server during a
# run (--perf-stat) and syscalls per message with `strace -c -f` during a shorter run (--strace).
#
#   perf/run-relay.sh                              # 1000 pairs, window 64, 64 B, 5 s + 1 s warm-up, 3 runs
#   perf/run-relay.sh --rate 20000 --pairs 1000    # open loop
#   perf/run-relay.sh --runs 1 --perf-stat --strace
#   perf/run-relay.sh --tls                        # the same over TLS (development CA in the temp data folder)
#
# Every other option is passed to `sbload relay` as is (e.g. --payload 1024 --threads 1).
# Results (JSON per run, perf/strace output) land in perf/out/<timestamp>/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH=${SCRATCH:-$ROOT/.build-load}
PORT=${PORT:-17900}
PASSWORD=loadtest-pw
PREFIX=load
PAIRS=1000
RUNS=3
PERF_STAT=0
STRACE=0
TLS=0
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SBLOAD_ARGS=()
DURATION=5
WARMUP=1

while [ $# -gt 0 ]; do
  case "$1" in
    --pairs) PAIRS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --perf-stat) PERF_STAT=1; shift ;;
    --strace) STRACE=1; shift ;;
    --tls) TLS=1; shift ;;
    --port) PORT=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) SBLOAD_ARGS+=("$1"); shift ;;
  esac
done

OUT=$ROOT/perf/out/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
echo "== building (release, scratch $SCRATCH)" >&2
(cd "$ROOT" && swift build --scratch-path "$SCRATCH" -c release --product switchboard >/dev/null &&
               swift build --scratch-path "$SCRATCH" -c release --product sbload >/dev/null)
BIN=$SCRATCH/release

DATA=$(mktemp -d /tmp/sb-perf-data.XXXXXX)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$DATA"
}
trap cleanup EXIT

echo "== creating $((2 * PAIRS)) users in $DATA" >&2
"$BIN/switchboard" users bulk-create --data "$DATA" --prefix "$PREFIX" --count $((2 * PAIRS)) \
  --password "$PASSWORD" --pair-contacts >/dev/null

SERVE_ARGS=(serve --data "$DATA" --listen 127.0.0.1:$PORT --log-level warning)
if [ "$TLS" = 1 ]; then
  "$BIN/switchboard" cert init --data "$DATA" >/dev/null
  SBLOAD_ARGS+=(--tls --ca "$DATA/tls/ca.pem")
else
  SERVE_ARGS+=(--plaintext)
fi
taskset -c "$SERVER_CPU" "$BIN/switchboard" "${SERVE_ARGS[@]}" >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$OUT/server.log" 2>/dev/null && break; sleep 0.1; done
grep -q "listening on" "$OUT/server.log" || { echo "server did not start:" >&2; cat "$OUT/server.log" >&2; exit 1; }
echo "== server pid $SERVER_PID on CPU $SERVER_CPU, sbload on CPU $LOAD_CPU" >&2

sbload() {
  taskset -c "$LOAD_CPU" "$BIN/sbload" relay --target 127.0.0.1:$PORT --password "$PASSWORD" --prefix "$PREFIX" \
    --pairs "$PAIRS" --server-pid "$SERVER_PID" "$@"
}

# Waits until sbload's first progress line (every connection is logged in and sending).
wait_for_send() {
  for _ in $(seq 600); do grep -q '^\[' "$1" 2>/dev/null && return 0; sleep 0.05; done
}

STATUS=0
for i in $(seq "$RUNS"); do
  echo "== run $i of $RUNS: sbload relay --pairs $PAIRS --duration $DURATION --warmup $WARMUP ${SBLOAD_ARGS[*]:-}" >&2
  sbload --duration "$DURATION" --warmup "$WARMUP" "${SBLOAD_ARGS[@]}" --json >"$OUT/run-$i.json" 2>"$OUT/run-$i.txt" || STATUS=$?
  grep -v '^\[' "$OUT/run-$i.txt" >&2 || true
done

python3 - "$OUT" "$RUNS" <<'PY'
import json, sys, statistics
out, runs = sys.argv[1], int(sys.argv[2])
rs = [json.load(open(f"{out}/run-{i}.json")) for i in range(1, runs + 1)]
def med(f):
    vals = [f(r) for r in rs if f(r) is not None]
    return statistics.median(vals) if vals else None
def us(v): return "-" if v is None else f"{v/1000:.0f} µs" if v < 1e6 else f"{v/1e6:.2f} ms"
tp = med(lambda r: r["throughputPerSecond"])
print(f"\n== medians of {runs} run(s)")
print(f"throughput     {tp:,.0f} msg/s")
for k, name in [("p50","p50"),("p99","p99"),("p999","p99.9"),("max","max")]:
    print(f"latency {name:6s} {us(med(lambda r: r['latencyNs'][k]))}")
print(f"generator CPU  {med(lambda r: r.get('generatorCores')) or 0:.2f} cores   server CPU {med(lambda r: r.get('serverCores')) or 0:.2f} cores")
print("verdicts       " + "; ".join(r["verdict"] for r in rs))
PY

if [ "$PERF_STAT" = 1 ]; then
  echo "== perf stat on the server during one run" >&2
  EVENTS=task-clock,context-switches,cpu-migrations,page-faults
  if perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1; then EVENTS=$EVENTS,raw_syscalls:sys_enter; fi
  if perf stat -e cycles,instructions true >/dev/null 2>&1; then EVENTS=$EVENTS,cycles,instructions; fi
  sbload --duration $((DURATION + 2)) --warmup 0 "${SBLOAD_ARGS[@]}" --json >"$OUT/perf-run.json" 2>"$OUT/perf-run.txt" &
  LOAD=$!
  wait_for_send "$OUT/perf-run.txt"
  if perf stat -e "$EVENTS" -p "$SERVER_PID" -o "$OUT/perf-stat.txt" -- sleep "$DURATION" 2>"$OUT/perf-stat.err"; then
    cat "$OUT/perf-stat.txt"
  else
    echo "perf stat is not supported here: $(head -3 "$OUT/perf-stat.err")" >&2
  fi
  wait $LOAD || true
  python3 - "$OUT" "$DURATION" <<'PY'
import json, re, sys
out, duration = sys.argv[1], float(sys.argv[2])
try:
    text = open(f"{out}/perf-stat.txt").read()
except OSError:
    sys.exit(0)
r = json.load(open(f"{out}/perf-run.json"))
# messages the server relayed while perf watched: received-rate x the watched seconds (approximate).
rate = r["received"] / max(r["measuredSeconds"], 1e-9)
m = re.search(r"([\d,]+)\s+raw_syscalls:sys_enter", text)
if m:
    calls = int(m.group(1).replace(",", ""))
    print(f"syscalls per relayed message (perf, approx.): {calls / (rate * duration):.3f}  ({calls} syscalls, ~{rate*duration:,.0f} messages)")
PY
fi

if [ "$STRACE" = 1 ]; then
  echo "== strace -c -f on the server for 1 s of a 3 s run (strace slows the server: batches grow)" >&2
  sbload --duration 3 --warmup 0 "${SBLOAD_ARGS[@]}" --json >"$OUT/strace-run.json" 2>"$OUT/strace-run.txt" &
  LOAD=$!
  wait_for_send "$OUT/strace-run.txt"
  timeout 1 strace -c -f -p "$SERVER_PID" -o "$OUT/strace.txt" || true
  wait $LOAD || true
  cat "$OUT/strace.txt"
  python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
r = json.load(open(f"{out}/strace-run.json"))
lines = open(f"{out}/strace.txt").read().splitlines()
total = next((l for l in lines if l.strip().endswith("total")), None)
if total:
    calls = int(total.split()[3])
    # strace watched 1 s of the run: compare with the messages of one second.
    per_second = r["received"] / 3.0
    print(f"syscalls per relayed message (strace, 1 s window, approx.): {calls / max(per_second, 1):.3f}"
          f"  ({calls} syscalls, ~{per_second:,.0f} messages/s without strace; strace slows the server, so"
          " this is an estimate)")
    for l in lines:
        f = l.split()
        if len(f) >= 5 and f[-1] in ("read", "sendto", "write", "epoll_wait", "epoll_ctl", "futex", "recvfrom", "writev"):
            print(f"  {f[-1]:12s} {int(f[3]) / max(per_second, 1):.3f} per message")
PY
fi
echo "results in $OUT" >&2
exit $STATUS
