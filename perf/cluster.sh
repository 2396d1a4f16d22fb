#!/usr/bin/env bash
# Same-node vs cross-node relay through a cluster (issue 12), measured in one run beside a single node:
#   single  one `switchboard serve` on its own LMDB (the baseline)
#   same    two cluster nodes, each pair's sender and receiver on the same node (sbload --spread same)
#   cross   two cluster nodes, every pair split across them (--spread cross): each message takes the NATS hop
# A three-server nats-server cluster with JetStream runs on loopback (ports 4231-4233, routes 4241-4243,
# monitoring 8231-8233); the nodes are plaintext on 17931/17932, the single node on 17930. Users come from
# `switchboard users bulk-create --cluster` (through the log, so both nodes have them).
#   perf/cluster.sh                          # 100 pairs, closed loop window 64, 64 B, 1 s warm-up + 5 s, 3 rounds
#   perf/cluster.sh --pairs 1000 --rounds 1
#   perf/cluster.sh --rate 5000              # open loop (latency at a fixed rate)
#   perf/cluster.sh --storm 5000 --rounds 0  # login storm on node a only: how fast node b's directory follows,
#                                            # and node b's RSS per user online on a (the directory's cost)
# Prints each run's verdict line, then medians per mode: msg/s, p50/p99 latency, server CPU per message
# (sum over the nodes), NATS messages per relayed message (sum of in_msgs over the three servers' /varz).
# This machine has 2 cores: nodes, NATS servers and sbload share them, so cross vs same is a ratio measured in
# one sitting, not a capacity figure (the capacity model in perf/README.md says how they scale).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH=${SCRATCH:-$ROOT/.build-load}
PAIRS=100; ROUNDS=3; DURATION=5; WARMUP=1; EXTRA=(); STORM=0
while [ $# -gt 0 ]; do
  case $1 in
    --pairs) PAIRS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --storm) STORM=$2; shift 2 ;;
    -h|--help) sed -n 2,16p "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
[ ${#EXTRA[@]} -eq 0 ] && EXTRA=(--window 64)
command -v nats-server >/dev/null || { echo "perf/cluster.sh: nats-server is needed (apt-get install nats-server)" >&2; exit 2; }
echo "== building (release, scratch $SCRATCH)" >&2
(cd "$ROOT" && swift build --scratch-path "$SCRATCH" -c release --product switchboard >/dev/null &&
               swift build --scratch-path "$SCRATCH" -c release --product sbload >/dev/null)
BIN=$SCRATCH/release
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK=$(mktemp -d /tmp/sb-cluster-perf.XXXXXX)
OUT=$ROOT/perf/out/cluster-$(date +%Y%m%d-%H%M%S); mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; sleep 0.5
            for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_line() { for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1; }
for p in 4231 4232 4233 17930 17931 17932; do port_open $p && { echo "port $p is in use" >&2; exit 1; }; done
for i in 1 2 3; do
  cat >"$WORK/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:$((4230 + i))
http: 127.0.0.1:$((8230 + i))
jetstream { store_dir: "$WORK/js$i", max_memory_store: 256MB, max_file_store: 2GB }
cluster { name: sbperf, listen: 127.0.0.1:$((4240 + i)), routes: [nats-route://127.0.0.1:4241, nats-route://127.0.0.1:4242, nats-route://127.0.0.1:4243] }
CONF
  nats-server -c "$WORK/n$i.conf" >"$OUT/nats$i.log" 2>&1 & PIDS+=($!)
done
for _ in $(seq 200); do
  ok=0; for i in 1 2 3; do curl -sf "http://127.0.0.1:$((8230 + i))/healthz?js-enabled-only=true" >/dev/null && ok=$((ok + 1)); done
  [ $ok = 3 ] && break; sleep 0.1
done
NATS=nats://127.0.0.1:4231,nats://127.0.0.1:4232,nats://127.0.0.1:4233
PW=loadtest-pw
start_node() {  # name port nats-order
  "$BIN/switchboard" serve --plaintext --listen "127.0.0.1:$2" --data "$WORK/$1" --cluster "$3" --node "$1" --log-level warning \
    --metrics "127.0.0.1:$(( $2 - 17931 + 8291 ))" >"$OUT/$1.log" 2>&1 & PIDS+=($!); eval "PID_$1=$!"
}
start_node a 17931 "$NATS"
start_node b 17932 "nats://127.0.0.1:4232,nats://127.0.0.1:4233,nats://127.0.0.1:4231"
for n in a:17931 b:17932; do
  up=0; for _ in $(seq 300); do port_open "${n#*:}" && { up=1; break; }; sleep 0.1; done
  [ $up = 1 ] || { echo "node ${n%%:*} did not start:" >&2; cat "$OUT/${n%%:*}.log" >&2; exit 1; }
done
USERS=$((2 * PAIRS)); [ "$STORM" -gt "$USERS" ] && USERS=$STORM
echo "== creating $USERS users through the cluster log" >&2
"$BIN/switchboard" users bulk-create --cluster "$NATS" --prefix load --count "$USERS" --password "$PW" --pair-contacts >"$OUT/bulk.log"
"$BIN/switchboard" users bulk-create --data "$WORK/single" --prefix load --count $((2 * PAIRS)) --password "$PW" --pair-contacts >/dev/null
"$BIN/switchboard" serve --plaintext --listen 127.0.0.1:17930 --data "$WORK/single" --log-level warning >"$OUT/single.log" 2>&1 & PIDS+=($!); PID_single=$!
for _ in $(seq 300); do port_open 17930 && break; sleep 0.1; done
sleep 1
nats_in() { local t=0; for i in 1 2 3; do t=$((t + $(curl -s "http://127.0.0.1:$((8230 + i))/varz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["in_msgs"])'))); done; echo $t; }
run() {  # mode round
  local mode=$1 args
  case $mode in
    single) args=(--target 127.0.0.1:17930 --server-pid "$PID_single") ;;
    same)   args=(--target 127.0.0.1:17931,127.0.0.1:17932 --spread same --server-pid "$PID_a" --server-pid "$PID_b") ;;
    cross)  args=(--target 127.0.0.1:17931,127.0.0.1:17932 --spread cross --server-pid "$PID_a" --server-pid "$PID_b") ;;
  esac
  local before; before=$(nats_in)
  local prof=
  if [ -n "${PROFILE:-}" ] && [ "$mode" = "$PROFILE" ]; then
    # PROFILE=cross (or same): perf record of node a during the measured seconds (perf report -i the file).
    (sleep "$WARMUP"; perf record -g -p "$PID_a" -o "$OUT/perf-$mode-$2.data" -- sleep "$DURATION" >/dev/null 2>&1) & prof=$!
  fi
  "$BIN/sbload" relay "${args[@]}" --pairs "$PAIRS" --duration "$DURATION" --warmup "$WARMUP" --password "$PW" --prefix load \
    "${EXTRA[@]}" --json >"$OUT/$mode-$2.json" 2>"$OUT/$mode-$2.txt" || true
  [ -n "$prof" ] && wait "$prof"
  local after; after=$(nats_in)
  echo "$((after - before))" >"$OUT/$mode-$2.nats"
  printf '%-7s round %d: %s\n' "$mode" "$2" "$(grep -m1 -E 'PASS|FAIL' "$OUT/$mode-$2.txt" || tail -1 "$OUT/$mode-$2.txt")"
}
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
if [ "$STORM" -gt 0 ]; then
  echo "== login storm: $STORM connections log in on node a and stay" >&2
  rss0=$(rss_kib "$PID_b")
  "$BIN/sbload" connect --target 127.0.0.1:17931 --connections "$STORM" --hold 20 --password "$PW" --prefix load >"$OUT/storm.txt" 2>&1 & SB=$!
  t0=$(date +%s%N); ta=; tb=
  for _ in $(seq 1200); do
    a=$(metric 8291 switchboard_users_online); b=$(metric 8292 switchboard_cluster_remote_users)
    [ -z "$ta" ] && [ "${a:-0}" -ge "$STORM" ] && ta=$(date +%s%N)
    [ -z "$tb" ] && [ "${b:-0}" -ge "$STORM" ] && { tb=$(date +%s%N); break; }
    sleep 0.05
  done
  sleep 2; rss1=$(rss_kib "$PID_b")
  kill -TERM $SB 2>/dev/null; wait $SB 2>/dev/null || true
  grep -E "logged in|login" "$OUT/storm.txt" | head -3
  if [ -n "$tb" ] && [ -n "$ta" ]; then
    echo "storm: $STORM online on a after $(( (ta - t0) / 1000000 )) ms; b's directory had all of them $(( (tb - ta) / 1000000 )) ms later; b's RSS +$(( (rss1 - rss0) * 1024 / STORM )) B per user online on a"
  else
    echo "storm: b's directory did not reach $STORM (a: ${a:-?}, b: ${b:-?})"
  fi
fi
for r in $(seq "$ROUNDS"); do for mode in single same cross; do run $mode "$r"; done; done
[ "$ROUNDS" -gt 0 ] || { echo "results in $OUT"; exit 0; }
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys, statistics, os
out, rounds = sys.argv[1], int(sys.argv[2])
def med(xs): return statistics.median(xs) if xs else float('nan')
rows = {}
for mode in ("single", "same", "cross"):
    tp, p50, p99, cpu, natsper = [], [], [], [], []
    for r in range(1, rounds + 1):
        try: j = json.load(open(f"{out}/{mode}-{r}.json"))
        except Exception: continue
        rate = j.get("throughputPerSecond", 0)
        tp.append(rate)
        lat = j.get("latencyNs") or {}
        p50.append(lat.get("p50", 0) / 1000); p99.append(lat.get("p99", 0) / 1000)
        if j.get("serverCores") and rate: cpu.append(j["serverCores"] * 1e9 / rate)
        n = int(open(f"{out}/{mode}-{r}.nats").read() or 0)
        if j.get("sent"): natsper.append(n / j["sent"])
    rows[mode] = (med(tp), med(p50), med(p99), med(cpu), med(natsper))
base = rows["single"][0] or 1
print(f"\n{'mode':7} {'msg/s':>10} {'x single':>9} {'p50 us':>8} {'p99 us':>8} {'srv ns/msg':>11} {'NATS msgs/msg':>13}")
for mode, (tp, p50, p99, cpu, natsper) in rows.items():
    print(f"{mode:7} {tp:10.0f} {tp / base:9.2f} {p50:8.0f} {p99:8.0f} {cpu:11.0f} {natsper:13.2f}")
print(f"\nresults in {out}")
PY
