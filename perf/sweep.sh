#!/usr/bin/env bash
# Open-loop rate sweep: `sbload relay --rate R --pairs 1000` from a low offered rate up to saturation, for
# Switchboard plaintext and TLS (by default with Redis pub/sub; also Mosquitto QoS 0/1 and NATS), in one run.
# Each server is started on loopback pinned to CPU 0 (one server at a time), sbload runs pinned to CPU 1.
# A target's sweep stops at the first rate where the delivered rate falls short of the offered one (below
# --min-delivered, default 97 %) or p99 explodes (above --stop-p99-ms, default 50 ms).
#
#   perf/sweep.sh                                   # 5k … 320k msg/s (finer under 60k), 3 s measured + 1 s warm-up per point
#   perf/sweep.sh --rates 10000,20000,40000 --targets sb,redis --duration 5 --runs 3
#   perf/sweep.sh --plot-only perf/out/sweep-YYYYmmdd-HHMMSS   # re-render the PNG and summary from a CSV
#
# Options: --rates LIST (msg/s, comma separated, ascending), --targets LIST (sb,sb-tls,redis; also mqtt0,
# mqtt1, nats: a peer not installed is skipped; servers in perf/lib.sh), --pairs N (1000),
# --duration S (3), --warmup S (1), --drain S (2), --runs N (per point, median; 1), --p99-ms L (2: the figure
# reported), --stop-p99-ms M (50), --min-delivered F (0.97), --port P (17920), --redis-port P (6379).
# Every other option goes to `sbload relay` (e.g. --threads 1, --payload 64, --busy-poll false).
# Writes perf/out/sweep-<timestamp>/: sweep.csv, sweep.png, summary.txt, and per point JSON/text/server logs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=perf/lib.sh
. "$ROOT/perf/lib.sh"
SCRATCH=${SCRATCH:-$ROOT/.build-load}
SB_PORT=${PORT:-17920}
PAIRS=1000
RUNS=1
DURATION=3
WARMUP=1
DRAIN=2
RATES=5000,10000,15000,20000,25000,30000,40000,50000,60000,80000,120000,160000,240000,320000
TARGETS=sb,sb-tls,redis
P99_MS=2
STOP_P99_MS=50
MIN_DELIVERED=0.97
PLOT_ONLY=
SBLOAD_ARGS=()

while [ $# -gt 0 ]; do
  case "$1" in
    --rates) RATES=$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    --pairs) PAIRS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --drain) DRAIN=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --p99-ms) P99_MS=$2; shift 2 ;;
    --stop-p99-ms) STOP_P99_MS=$2; shift 2 ;;
    --min-delivered) MIN_DELIVERED=$2; shift 2 ;;
    --port) SB_PORT=$2; shift 2 ;;
    --redis-port) REDIS_PORT=$2; shift 2 ;;
    --plot-only) PLOT_ONLY=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) SBLOAD_ARGS+=("$1"); shift ;;
  esac
done

# ---------------------------------------------------------------------------------------------------------
# Summary (table + highest rate with p99 under the limit + ratio to Redis) and the gnuplot PNG, from the CSV.
report() {
  local out=$1
  python3 - "$out/sweep.csv" "$P99_MS" "$MIN_DELIVERED" <<'PY' | tee "$out/summary.txt"
import csv, sys
path, limit_ms, min_deliv = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = list(csv.DictReader(open(path)))
label = {"sb": "switchboard", "sb-tls": "switchboard TLS", "redis": "redis pub/sub", "mqtt0": "mosquitto QoS 0",
         "mqtt1": "mosquitto QoS 1", "nats": "nats"}
def ms(v): return f"{float(v)/1000:.2f} ms" if float(v) >= 1000 else f"{float(v):.0f} µs"
print(f"== open-loop sweep ({path})")
print("| target | offered | delivered | p50 | p99 | p99.9 | server CPU | gen CPU | passed |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {label.get(r['target'], r['target'])} | {int(r['offered']):,} | {float(r['delivered']):,.0f} | "
          f"{ms(r['p50_us'])} | {ms(r['p99_us'])} | {ms(r['p999_us'])} | {float(r['server_cores']):.2f} | "
          f"{float(r['generator_cores']):.2f} | {r['passed']} |")
best = {}
for t in dict.fromkeys(r["target"] for r in rows):
    pts = [r for r in rows if r["target"] == t]
    ok = [r for r in pts if float(r["p99_us"]) < limit_ms * 1000 and float(r["delivered"]) >= min_deliv * int(r["offered"])]
    first_bad = next((r for r in pts if r not in ok), None)
    best[t] = (max(ok, key=lambda r: int(r["offered"])) if ok else None, first_bad)
print(f"\n== highest offered rate with p99 < {limit_ms:g} ms (and delivered >= {min_deliv:.0%} of offered)")
print("| target | rate | p50 | p99 | p99.9 | server CPU | gen CPU | first rate over the limit | × redis |")
print("|---|---|---|---|---|---|---|---|---|")
redis = best.get("redis", (None, None))[0]
for t, (b, bad) in best.items():
    ratio = f"{int(b['offered']) / int(redis['offered']):.2f}" if b and redis else "-"
    badtxt = f"{int(bad['offered']):,} (p99 {ms(bad['p99_us'])})" if bad else "none (not saturated)"
    if b:
        print(f"| {label.get(t, t)} | **{int(b['offered']):,}** | {ms(b['p50_us'])} | {ms(b['p99_us'])} | "
              f"{ms(b['p999_us'])} | {float(b['server_cores']):.2f} | {float(b['generator_cores']):.2f} | {badtxt} | {ratio} |")
    else:
        print(f"| {label.get(t, t)} | none | - | - | - | - | - | {badtxt} | - |")
if redis and "sb" in best and best["sb"][0]:
    print(f"\nswitchboard ÷ redis = {int(best['sb'][0]['offered']) / int(redis['offered']):.2f} (target ≥ 2)"
          + (f"; TLS ÷ redis = {int(best['sb-tls'][0]['offered']) / int(redis['offered']):.2f}"
             if best.get("sb-tls", (None,))[0] else ""))
print("(the sweep's grid bounds the figure: the true limit lies between that rate and the next one swept; tails are"
      " noisy on a shared machine, so a lower rate can cross the limit while a higher one does not: see the"
      " 'first rate over the limit' column)")
PY
  if ! command -v gnuplot >/dev/null; then
    echo "gnuplot not installed (apt-get install gnuplot-nox): no PNG" >&2
    return 0
  fi
  # One data block per target (gnuplot index), delivered rate on x, latencies in ms.
  python3 - "$out/sweep.csv" "$out/sweep.dat" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
with open(sys.argv[2], "w") as f:
    for t in dict.fromkeys(r["target"] for r in rows):
        f.write(f"# {t}\n")
        for r in (r for r in rows if r["target"] == t):
            lat = [max(float(r[k]) / 1000, 0.001) for k in ("p50_us", "p99_us", "p999_us")]
            f.write(f"{float(r['delivered'])/1000:.3f} {lat[0]:.4f} {lat[1]:.4f} {lat[2]:.4f} {int(r['offered'])/1000:.0f}\n")
        f.write("\n\n")
PY
  local targets plot="" i=0 t color name
  targets=$(python3 -c 'import csv,sys; print(" ".join(dict.fromkeys(r["target"] for r in csv.DictReader(open(sys.argv[1])))))' "$out/sweep.csv")
  for t in $targets; do
    case "$t" in sb) color='#1f77b4'; name=switchboard ;; sb-tls) color='#2ca02c'; name='switchboard TLS' ;;
                 redis) color='#d62728'; name='redis pub/sub' ;; mqtt0) color='#ff7f0e'; name='mosquitto QoS 0' ;;
                 mqtt1) color='#9467bd'; name='mosquitto QoS 1' ;; nats) color='#17becf'; name=nats ;;
                 *) color='#7f7f7f'; name=$t ;; esac
    plot+="'$out/sweep.dat' index $i using 1:2 with linespoints dt 3 pt 6 ps 1.2 lw 2 lc rgb '$color' title '$name p50', "
    plot+="'$out/sweep.dat' index $i using 1:3 with linespoints dt 1 pt 7 ps 1.2 lw 2.5 lc rgb '$color' title '$name p99', "
    plot+="'$out/sweep.dat' index $i using 1:4 with linespoints dt 2 pt 5 ps 1.0 lw 1.5 lc rgb '$color' title '$name p99.9', "
    i=$((i + 1))
  done
  plot+="$P99_MS with lines dt 4 lw 1 lc rgb '#000000' title 'p99 limit ($P99_MS ms)'"
  gnuplot <<EOF
set terminal pngcairo size 1400,850 font 'DejaVu Sans,12'
set output '$out/sweep.png'
set title "sbload relay, open loop, $PAIRS pairs, 64 B: latency against delivered throughput (server CPU 0, sbload CPU 1)"
set xlabel 'delivered throughput (k msg/s)'
set ylabel 'latency from the intended send time (ms, log scale)'
set logscale y 10
set format y '%g'
set yrange [0.01:*]
set xrange [0:*]
set grid xtics ytics mytics
set key outside right top vertical spacing 1.1
plot $plot
EOF
  echo "plot: $out/sweep.png" >&2
}

if [ -n "$PLOT_ONLY" ]; then
  report "$PLOT_ONLY"
  exit 0
fi

OUT=$ROOT/perf/out/sweep-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
build_release
setup_work sweep

# point_row NAME RATE: one CSV row from the point's JSON files (median over the runs).
point_row() {
  python3 - "$OUT" "$1" "$2" "$RUNS" <<'PY'
import json, statistics, sys
out, name, rate, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rs = []
for i in range(1, runs + 1):
    try: rs.append(json.load(open(f"{out}/{name}-{rate}-{i}.json")))
    except (OSError, ValueError): pass
if not rs:
    print(f"{name},{rate},0,0,0,0,0,0,no,0,0"); sys.exit(0)
med = lambda f: statistics.median([f(r) or 0 for r in rs])
lat = lambda k: med(lambda r: (r.get("latencyNs") or {}).get(k)) / 1000
print(f"{name},{rate},{med(lambda r: r['throughputPerSecond']):.0f},{lat('p50'):.1f},{lat('p99'):.1f},{lat('p999'):.1f},"
      f"{med(lambda r: r.get('serverCores')):.3f},{med(lambda r: r.get('generatorCores')):.3f},"
      f"{'yes' if all(r.get('passed') for r in rs) else 'no'},{lat('max'):.1f},{med(lambda r: r.get('scheduleStalls')):.0f}")
PY
}

CSV=$OUT/sweep.csv
echo "target,offered,delivered,p50_us,p99_us,p999_us,server_cores,generator_cores,passed,max_us,schedule_stalls" >"$CSV"
IFS=, read -r -a TLIST <<<"$TARGETS"
IFS=, read -r -a RLIST <<<"$RATES"
STATUS=0
for name in "${TLIST[@]}"; do
  start_server "$name" || { STATUS=3; continue; }
  echo "== $name: server pid $SERVER_PID on CPU $SERVER_CPU, sbload on CPU $LOAD_CPU" >&2
  for rate in "${RLIST[@]}"; do
    for i in $(seq "$RUNS"); do
      taskset -c "$LOAD_CPU" "$BIN/sbload" relay --target "$TARGET" "${EXTRA[@]}" --pairs "$PAIRS" --rate "$rate" \
        --server-pid "$SERVER_PID" --duration "$DURATION" --warmup "$WARMUP" --drain "$DRAIN" "${SBLOAD_ARGS[@]}" \
        --json >"$OUT/$name-$rate-$i.json" 2>"$OUT/$name-$rate-$i.txt" &
      LOAD_PID=$!
      # Bounded: warm-up + measured + drain + logins; killed past that.
      ( sleep $((WARMUP + DURATION + DRAIN + 30)); kill -TERM "$LOAD_PID" 2>/dev/null ) &
      WATCHDOG=$!
      rc=0; wait "$LOAD_PID" || rc=$?
      # 2 = lost, duplicated or corrupted: always a failure. 3 (e.g. unacknowledged after the drain) is what
      # a saturated point looks like, so it only shows in the "passed" column.
      if [ "$rc" = 2 ]; then STATUS=2; fi
      LOAD_PID=
      kill "$WATCHDOG" 2>/dev/null || true; wait "$WATCHDOG" 2>/dev/null || true
    done
    row=$(point_row "$name" "$rate")
    echo "$row" >>"$CSV"
    IFS=, read -r _ _ deliv p50 p99 p999 scpu gcpu passed _ <<<"$row"
    printf '   %-7s offered %7d  delivered %9.0f  p50 %9.1f µs  p99 %10.1f µs  p99.9 %10.1f µs  server %.2f  gen %.2f  %s\n' \
      "$name" "$rate" "$deliv" "$p50" "$p99" "$p999" "$scpu" "$gcpu" "$passed" >&2
    if python3 -c 'import sys; d,o,p99,stop,mind=map(float,sys.argv[1:]); sys.exit(0 if d < mind*o or p99 > stop*1000 else 1)' \
         "$deliv" "$rate" "$p99" "$STOP_P99_MS" "$MIN_DELIVERED"; then
      echo "   $name saturated at $rate msg/s: sweep of this target stops" >&2
      break
    fi
  done
  stop_server
done

report "$OUT"
echo "results in $OUT" >&2
exit $STATUS
