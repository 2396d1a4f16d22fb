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
# shellcheck source=perf/lib.sh
. "$ROOT/perf/lib.sh"
SCRATCH=${SCRATCH:-$ROOT/.build-peers}
SB_PORT=${PORT:-17900}
PAIRS=1000
RUNS=3
DURATION=5
WARMUP=1
TARGETS=sb,sb-tls,redis,mqtt0,mqtt1,nats
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
build_release
setup_work peers

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
