#!/usr/bin/env bash
# The same `sbload relay` scenario against Switchboard (plaintext and TLS) and the peers installed on
# this machine (Redis pub/sub, Mosquitto MQTT QoS 0 and QoS 1, NATS), one after the other in one run:
# each server is started on loopback pinned to CPU 0, sbload runs pinned to CPU 1 with --server-pid,
# RUNS times, then the server is stopped. Prints every report's verdict and a side-by-side table of
# medians (throughput, latency p50/p99/p99.9, generator and server CPU).
#
#   perf/run-peers.sh                              # 1000 pairs, closed loop window 64, 64 B, 1 s warm-up + 5 s, 3 runs
#   perf/run-peers.sh --rate 20000                 # open loop, 20k msg/s in total (coordinated-omission corrected)
#   perf/run-peers.sh --targets redis,nats --runs 1
#
# Targets: sb (switchboard --plaintext), sb-tls, redis, mqtt0, mqtt1 (Mosquitto, QoS 0 / 1), nats.
# Peers run with their Debian package's binary on their default ports (6379, 1883, 4222), loopback only:
#   apt-get install redis-server mosquitto nats-server
# A peer whose binary is missing is skipped (and said so); a port already in use stops that target
# (the script never touches a server it did not start). Every other option goes to `sbload relay`.
# Results (JSON and text per run, server logs) land in perf/out/peers-<timestamp>/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH=${SCRATCH:-$ROOT/.build-peers}
SB_PORT=${PORT:-17900}
PASSWORD=loadtest-pw
PREFIX=load
PAIRS=1000
RUNS=3
DURATION=5
WARMUP=1
TARGETS=sb,sb-tls,redis,mqtt0,mqtt1,nats
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SBLOAD_ARGS=()

while [ $# -gt 0 ]; do
  case "$1" in
    --pairs) PAIRS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    --port) SB_PORT=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) SBLOAD_ARGS+=("$1"); shift ;;
  esac
done

OUT=$ROOT/perf/out/peers-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
echo "== building (release, scratch $SCRATCH)" >&2
(cd "$ROOT" && swift build --scratch-path "$SCRATCH" -c release --product switchboard >/dev/null &&
               swift build --scratch-path "$SCRATCH" -c release --product sbload >/dev/null)
BIN=$SCRATCH/release
# Servers and sbload get the highest file limit allowed (2 connections per pair, plus the servers' own).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d /tmp/sb-peers.XXXXXX)
SERVER_PID=
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
}
cleanup() { stop_server; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 100); do port_open "$1" && return 0; sleep 0.1; done
  return 1
}

# Users for Switchboard (created once, server stopped, shared by the plaintext and TLS runs).
SB_DATA=$WORK/sb-data
case ",$TARGETS," in
  *,sb,*|*,sb-tls,*)
    echo "== creating $((2 * PAIRS)) Switchboard users" >&2
    "$BIN/switchboard" users bulk-create --data "$SB_DATA" --prefix "$PREFIX" --count $((2 * PAIRS)) \
      --password "$PASSWORD" --pair-contacts >/dev/null
    "$BIN/switchboard" cert init --data "$SB_DATA" >/dev/null ;;
esac

cat >"$WORK/mosquitto.conf" <<EOF
listener 1883 127.0.0.1
allow_anonymous true
max_connections -1
persistence false
# Nagle off, as Redis, NATS and Switchboard do: without it small packets wait for delayed ACKs.
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
EOF

# start_server NAME: starts it pinned to SERVER_CPU, sets SERVER_PID, TARGET and EXTRA (sbload arguments).
start_server() {
  local name=$1 port
  EXTRA=()
  case "$name" in
    sb|sb-tls)
      port=$SB_PORT
      local args=(serve --data "$SB_DATA" --listen "127.0.0.1:$port" --log-level warning)
      if [ "$name" = sb ]; then args+=(--plaintext); else EXTRA=(--tls --ca "$SB_DATA/tls/ca.pem"); fi
      EXTRA+=(--password "$PASSWORD" --prefix "$PREFIX")
      TARGET=127.0.0.1:$port
      port_open "$port" && { echo "port $port is in use: skipping $name" >&2; return 1; }
      taskset -c "$SERVER_CPU" "$BIN/switchboard" "${args[@]}" >"$OUT/server-$name.log" 2>&1 & ;;
    redis)
      command -v redis-server >/dev/null || { echo "redis-server not installed (apt-get install redis-server): skipping" >&2; return 1; }
      port=6379; TARGET=redis://127.0.0.1:$port
      port_open "$port" && { echo "port $port is in use: skipping $name" >&2; return 1; }
      taskset -c "$SERVER_CPU" redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --daemonize no --dir "$WORK" >"$OUT/server-$name.log" 2>&1 & ;;
    mqtt0|mqtt1)
      command -v mosquitto >/dev/null || { echo "mosquitto not installed (apt-get install mosquitto): skipping" >&2; return 1; }
      port=1883; TARGET=mqtt://127.0.0.1:$port; EXTRA=(--qos "${name#mqtt}")
      port_open "$port" && { echo "port $port is in use: skipping $name" >&2; return 1; }
      taskset -c "$SERVER_CPU" mosquitto -c "$WORK/mosquitto.conf" >"$OUT/server-$name.log" 2>&1 & ;;
    nats)
      command -v nats-server >/dev/null || { echo "nats-server not installed (apt-get install nats-server): skipping" >&2; return 1; }
      port=4222; TARGET=nats://127.0.0.1:$port
      port_open "$port" && { echo "port $port is in use: skipping $name" >&2; return 1; }
      taskset -c "$SERVER_CPU" nats-server -a 127.0.0.1 -p "$port" >"$OUT/server-$name.log" 2>&1 & ;;
    *) echo "unknown target $name (sb, sb-tls, redis, mqtt0, mqtt1, nats)" >&2; return 1 ;;
  esac
  SERVER_PID=$!
  wait_port "$port" || { echo "$name did not start:" >&2; cat "$OUT/server-$name.log" >&2; stop_server; return 1; }
}

STATUS=0
DONE=()
IFS=, read -r -a LIST <<<"$TARGETS"
for name in "${LIST[@]}"; do
  start_server "$name" || { STATUS=3; continue; }
  echo "== $name: server pid $SERVER_PID on CPU $SERVER_CPU, sbload on CPU $LOAD_CPU" >&2
  for i in $(seq "$RUNS"); do
    echo "== $name run $i of $RUNS: sbload relay --target $TARGET ${EXTRA[*]} --pairs $PAIRS --duration $DURATION --warmup $WARMUP ${SBLOAD_ARGS[*]:-}" >&2
    taskset -c "$LOAD_CPU" "$BIN/sbload" relay --target "$TARGET" "${EXTRA[@]}" --pairs "$PAIRS" --server-pid "$SERVER_PID" \
      --duration "$DURATION" --warmup "$WARMUP" "${SBLOAD_ARGS[@]}" --json >"$OUT/$name-$i.json" 2>"$OUT/$name-$i.txt" || STATUS=$?
    grep -E '^(==|throughput|latency|cpu|verdict|  !)' "$OUT/$name-$i.txt" >&2 || true
  done
  stop_server
  DONE+=("$name")
done

python3 - "$OUT" "$RUNS" "${DONE[@]}" <<'PY'
import json, sys, statistics
out, runs, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
label = {"sb": "switchboard", "sb-tls": "switchboard TLS", "redis": "redis pub/sub", "mqtt0": "mosquitto QoS 0",
         "mqtt1": "mosquitto QoS 1", "nats": "nats"}
def load(n, i):
    try:
        return json.load(open(f"{out}/{n}-{i}.json"))
    except (OSError, ValueError):
        return None
def fmt_ns(v):
    if v is None: return "-"
    return f"{v/1000:.0f} µs" if v < 1e6 else f"{v/1e6:.1f} ms" if v < 1e9 else f"{v/1e9:.2f} s"
rows = []
first = None
for n in names:
    rs = [r for r in (load(n, i) for i in range(1, runs + 1)) if r]
    if not rs: continue
    first = first or rs[0]
    def med(f):
        vals = [v for v in (f(r) for r in rs) if v is not None]
        return statistics.median(vals) if vals else None
    lat = lambda k: med(lambda r: (r.get("latencyNs") or {}).get(k))
    tp = med(lambda r: r["throughputPerSecond"])
    passed = sum(1 for r in rs if r["passed"])
    rows.append([label.get(n, n), f"{tp:,.0f}", fmt_ns(lat("p50")), fmt_ns(lat("p99")), fmt_ns(lat("p999")),
                 f"{med(lambda r: r.get('generatorCores')) or 0:.2f}", f"{med(lambda r: r.get('serverCores')) or 0:.2f}",
                 f"{passed}/{len(rs)}", ", ".join(f"{r['throughputPerSecond']/1000:.0f}k" for r in rs)])
if not rows:
    print("no results"); sys.exit(0)
mode = f"open loop {first['rate']:,.0f} msg/s" if first.get("rate") else f"closed loop window {first.get('window')}"
print(f"\n== relay, {first['pairs']} pairs, {first['payloadBytes']} B, {mode}: medians of {runs} run(s)")
head = ["target", "msgs/s", "p50", "p99", "p99.9", "gen CPU", "server CPU", "passed", "runs"]
widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
print(line(head)); print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for r in rows: print(line(r))
print("ack: switchboard = SEND_ACK after the receiver's DELIVERY_ACK; redis = PUBLISH reply; mosquitto QoS 1 = PUBACK;")
print("     mosquitto QoS 0 and nats = receipt by the receiver in the same sbload thread (no protocol ack).")
PY
echo "results in $OUT" >&2
exit $STATUS
