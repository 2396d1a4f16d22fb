#!/usr/bin/env bash
# Wake-ups, syscalls and server CPU per relayed message at light load, Switchboard beside Redis (issue 9).
# Each target's server is started on loopback pinned to CPU 0, `sbload relay` runs pinned to CPU 1 at an open-loop
# rate (1000 pairs, 64 B, each message alone), RUNS times per target. No strace (it slows the server so batches
# grow); instead, over a window inside sbload's measured window, the kernel's own counts of the server:
#   wake-ups   voluntary context switches of the event-loop thread (/proc/PID/task/PID/status): each one is a
#              blocking epoll_wait that slept and was woken
#   syscalls   `perf stat -e raw_syscalls:sys_enter` on the server process (every syscall of every thread), and
#              epoll_wait/epoll_pwait calls; without perf tracepoints, read+write calls from /proc/PID/io
#              (syscr + syscw) only. Redis: also INFO's total_reads_processed/total_writes_processed and the
#              exact PUBLISH count of the window (a cross-check of the message estimate).
#   CPU        utime + stime of the server (/proc/PID/stat), as ns per message; and idle CPU (server up, no
#              clients, 2 s) so a knob that burns an idle core shows.
# Messages in the window = sbload's received rate in its measured window x the window's length.
# Prints per-message medians of RUNS runs per target and each target's ratio to Redis.
#
#   perf/wakeups.sh                                   # sb and redis, 20000 msg/s, 1000 pairs, 3 runs
#   perf/wakeups.sh --rate 10000 --runs 5
#   perf/wakeups.sh --variant arena1:MALLOC_ARENA_MAX=1                # adds target sb-arena1
#
# Options: --rate N, --pairs N, --runs N, --duration S (measured, default 5), --warmup S (default 2, >= 1.5),
# --targets LIST (sb, redis and sb-NAME of the variants; default all), --variant NAME:VAR=VALUE[:VAR=VALUE...]
# (repeatable; a Switchboard run with those environment variables: the TCP_QUICKACK / SO_BUSY_POLL / epoll-spin
# knobs measured in perf/README.md were SWITCHBOARD_EXPERIMENT_* variables of commit ccd1dd9, removed since),
# --port N (Switchboard, default 27900; Redis uses 27379). Needs redis-server (apt-get install redis-server) for
# the redis target; perf (linux-perf) for the syscall columns. Results land in perf/out/wakeups-<timestamp>/.
# The machine's other load shows in these figures: say beside them what else was running.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=perf/lib.sh
. "$ROOT/perf/lib.sh"
SCRATCH=${SCRATCH:-$ROOT/.build-wakeups}
SB_PORT=27900
REDIS_PORT=27379
PAIRS=1000
RUNS=3
RATE=20000
DURATION=5
WARMUP=2
TARGETS=
VARIANTS=()

while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --pairs) PAIRS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    --variant) VARIANTS+=("$2"); shift 2 ;;
    --port) SB_PORT=$2; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in "$RATE" "$PAIRS" "$RUNS"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "--rate, --pairs and --runs take positive integers" >&2; exit 2; }
done
python3 -c "import sys; d, w = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if d >= 1 and w >= 1.5 else 1)" \
  "$DURATION" "$WARMUP" 2>/dev/null || { echo "--duration must be >= 1 and --warmup >= 1.5 (seconds)" >&2; exit 2; }
declare -A VARENV=()
for v in "${VARIANTS[@]}"; do
  name=${v%%:*}; rest=${v#*:}
  [[ "$name" =~ ^[a-z0-9]+$ && "$rest" != "$v" && "$rest" == *=* ]] ||
    { echo "--variant wants NAME:VAR=VALUE[:VAR=VALUE...] with NAME in [a-z0-9], got '$v'" >&2; exit 2; }
  VARENV[sb-$name]=$rest
done
if [ -z "$TARGETS" ]; then
  TARGETS=sb,redis
  for v in "${VARIANTS[@]}"; do TARGETS+=",sb-${v%%:*}"; done
fi

PERF_OK=0
if command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1; then PERF_OK=1
else echo "perf tracepoints unavailable: syscalls are read+write calls from /proc/PID/io only" >&2; fi

OUT=$ROOT/perf/out/wakeups-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
build_release
TARGETS_LIB=$TARGETS
TARGETS=sb  # setup_work creates the Switchboard users when TARGETS lists sb
setup_work wakeups
TARGETS=$TARGETS_LIB

# snapshot PID FILE: one line of the server's counters (main thread's context switches, process CPU ticks, I/O calls).
snapshot() {
  local pid=$1 vol invol stat io
  vol=$(awk '/^voluntary_ctxt_switches/ {print $2}' "/proc/$pid/task/$pid/status")
  invol=$(awk '/^nonvoluntary_ctxt_switches/ {print $2}' "/proc/$pid/task/$pid/status")
  stat=$(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12, $13}')  # utime stime (fields 14, 15)
  io=$(awk '/^sysc[rw]/ {printf "%s ", $2}' "/proc/$pid/io")
  echo "$(date +%s.%N) $vol $invol $stat $io" >>"$2"
}
redis_info() {
  redis-cli -p "$REDIS_PORT" info all 2>/dev/null |
    tr -d '\r' | grep -E '^(total_reads_processed|total_writes_processed|cmdstat_publish):' >"$1" || true
}

# The counting window: from 0.25 s into sbload's measured window to 0.75 s before its end (python once here:
# process start-up costs up to a second on a loaded machine, so nothing slow runs between the marks).
read -r PRE WIN < <(python3 -c "import sys; print(float(sys.argv[1]) - 1 + 0.25, max(0.5, float(sys.argv[2]) - 1))" "$WARMUP" "$DURATION")
# Per-call counts beside the total (what each server's read and write paths use).
BREAKDOWN=syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_sendto,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_ctl,syscalls:sys_enter_futex
STATUS=0
DONE=()
IFS=, read -r -a LIST <<<"$TARGETS"
for name in "${LIST[@]}"; do
  case "$name" in
    sb|redis) DONE+=("$name") ;;
    sb-*) if [ -n "${VARENV[$name]:-}" ]; then DONE+=("$name")
          else echo "unknown target $name (no --variant ${name#sb-}:...)" >&2; STATUS=2; fi ;;
    *) echo "unknown target $name (sb, redis, sb-NAME of a --variant)" >&2; STATUS=2 ;;
  esac
done
# Runs are interleaved (run 1 of every target, then run 2, ...) with a fresh server each, so a change in the
# machine's other load spreads over all targets instead of biasing one.
for i in $(seq "$RUNS"); do
  for name in "${DONE[@]}"; do
    base=sb
    envs=()
    case "$name" in
      redis) base=redis ;;
      sb-*) IFS=: read -r -a envs <<<"${VARENV[$name]}" ;;
    esac
    if [ ${#envs[@]} -gt 0 ]; then export "${envs[@]}"; fi
    start_server "$base" || STATUS=3
    for e in "${envs[@]}"; do unset "${e%%=*}"; done
    [ -n "$SERVER_PID" ] || continue
    [ "$base" = redis ] && mv "$OUT/server-redis.log" "$OUT/server-$name-$i.log" 2>/dev/null || true
    echo "== $name run $i of $RUNS: server pid $SERVER_PID on CPU $SERVER_CPU ${envs[*]:-}, sbload on CPU $LOAD_CPU:" \
         "--rate $RATE --pairs $PAIRS --duration $DURATION --warmup $WARMUP" >&2
    # Idle: server up, no clients.
    sleep 0.5; snapshot "$SERVER_PID" "$OUT/$name-$i.idle"; sleep 2; snapshot "$SERVER_PID" "$OUT/$name-$i.idle"
    taskset -c "$LOAD_CPU" "$BIN/sbload" relay --target "$TARGET" "${EXTRA[@]}" --pairs "$PAIRS" --rate "$RATE" \
      --server-pid "$SERVER_PID" --duration "$DURATION" --warmup "$WARMUP" --json >"$OUT/$name-$i.json" 2>"$OUT/$name-$i.txt" &
    LOAD_PID=$!
    # The first progress line comes 1 s after sending starts; the measured window starts WARMUP s after that start.
    for _ in $(seq 1200); do grep -q '^\[' "$OUT/$name-$i.txt" 2>/dev/null && break; kill -0 "$LOAD_PID" 2>/dev/null || break; sleep 0.05; done
    if grep -q '^\[' "$OUT/$name-$i.txt"; then
      sleep "$PRE"
      [ "$base" = redis ] && redis_info "$OUT/$name-$i.info0"
      snapshot "$SERVER_PID" "$OUT/$name-$i.snap"
      if [ "$PERF_OK" = 1 ]; then
        perf stat -e "raw_syscalls:sys_enter,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,$BREAKDOWN" \
          -p "$SERVER_PID" -o "$OUT/$name-$i.perf" -- sleep "$WIN" 2>/dev/null || sleep "$WIN"
      else
        sleep "$WIN"
      fi
      snapshot "$SERVER_PID" "$OUT/$name-$i.snap"
      [ "$base" = redis ] && redis_info "$OUT/$name-$i.info1"
    fi
    wait "$LOAD_PID" || STATUS=$?
    LOAD_PID=
    grep -E '^(throughput|latency|cpu|verdict|  !)' "$OUT/$name-$i.txt" >&2 || true
    stop_server
  done
done

python3 - "$OUT" "$RUNS" "$(getconf CLK_TCK)" "${DONE[@]}" <<'PY'
import json, sys, statistics, os
out, runs, hz, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
def snaps(path):
    try:
        rows = [list(map(float, l.split())) for l in open(path) if l.strip()]
    except OSError:
        return None
    return rows if len(rows) == 2 else None
def kv(path):
    d = {}
    try:
        for l in open(path):
            k, _, v = l.strip().partition(":")
            if k == "cmdstat_publish":
                v = dict(p.split("=") for p in v.split(","))["calls"]
            d[k] = float(v)
    except (OSError, ValueError, KeyError):
        pass
    return d
def perf(path):
    # perf stat's plain output: "  167,849      raw_syscalls:sys_enter" and "  4.0071 seconds time elapsed"
    # (its CSV duration_time event is summed over the threads, so the elapsed line is the interval).
    d = {}
    try:
        for l in open(path):
            f = l.split()
            if len(f) >= 2 and f[0].replace(",", "").replace(".", "").isdigit():
                if f[1:4] == ["seconds", "time", "elapsed"]:
                    d["elapsed"] = float(f[0])
                elif ":" in f[1]:
                    d[f[1]] = float(f[0].replace(",", ""))
    except OSError:
        pass
    return d
results = {}
for n in names:
    rows = []
    for i in range(1, runs + 1):
        try:
            r = json.load(open(f"{out}/{n}-{i}.json"))
        except (OSError, ValueError):
            continue
        s = snaps(f"{out}/{n}-{i}.snap")
        if not s: continue
        (t0, v0, n0, u0, k0, *io0), (t1, v1, n1, u1, k1, *io1) = s
        secs = t1 - t0
        msgs = r["throughputPerSecond"] * secs
        if msgs <= 0: continue
        row = {"msgs": msgs, "wake": (v1 - v0) / msgs, "invol": (n1 - n0) / msgs,
               "cpu_ns": (u1 + k1 - u0 - k0) / hz * 1e9 / msgs, "rw": (sum(io1) - sum(io0)) / msgs,
               "p99": (r.get("latencyNs") or {}).get("p99"), "tp": r["throughputPerSecond"]}
        p = perf(f"{out}/{n}-{i}.perf")
        if "raw_syscalls:sys_enter" in p and p.get("elapsed"):
            pmsgs = r["throughputPerSecond"] * p["elapsed"]  # perf's own interval
            row["sys"] = p["raw_syscalls:sys_enter"] / pmsgs
            row["epoll"] = (p.get("syscalls:sys_enter_epoll_wait", 0) + p.get("syscalls:sys_enter_epoll_pwait", 0)) / pmsgs
            for call in ("read", "write", "sendto", "writev", "epoll_ctl", "futex"):
                row["c_" + call] = p.get("syscalls:sys_enter_" + call, 0) / pmsgs
        a, b = kv(f"{out}/{n}-{i}.info0"), kv(f"{out}/{n}-{i}.info1")
        if "cmdstat_publish" in a and "cmdstat_publish" in b:
            pub = b["cmdstat_publish"] - a["cmdstat_publish"]
            row["pub_vs_est"] = pub / msgs
            row["redis_rw"] = (b["total_reads_processed"] - a["total_reads_processed"] + b["total_writes_processed"] - a["total_writes_processed"]) / msgs
        rows.append(row)
    idles = []
    for i in range(1, runs + 1):
        idle = snaps(f"{out}/{n}-{i}.idle")
        if idle:
            (t0, _, _, u0, k0, *_), (t1, _, _, u1, k1, *_) = idle
            idles.append((u1 + k1 - u0 - k0) / hz / (t1 - t0))
    idle_cpu = statistics.median(idles) if idles else None
    if rows:
        med = lambda k: statistics.median([x[k] for x in rows if x.get(k) is not None]) if any(x.get(k) is not None for x in rows) else None
        results[n] = {k: med(k) for k in ("wake", "invol", "sys", "epoll", "rw", "cpu_ns", "p99", "tp", "pub_vs_est", "redis_rw",
                                          "c_read", "c_write", "c_sendto", "c_writev", "c_epoll_ctl", "c_futex")}
        results[n]["idle"] = idle_cpu
        results[n]["runs"] = len(rows)
json.dump(results, open(f"{out}/summary.json", "w"), indent=1)
if not results:
    print("no results"); sys.exit(0)
first = json.load(open(f"{out}/{names[0]}-1.json"))
print(f"\n== light load: {first['pairs']} pairs, {first['payloadBytes']} B, open loop {first.get('rate') or 0:,.0f} msg/s; "
      f"per relayed message, medians of {runs} run(s); (x) = ratio to redis")
ref = results.get("redis", {})
def cell(n, k, fmt):
    v = results[n].get(k)
    if v is None: return "-"
    s = fmt.format(v)
    if n != "redis" and ref.get(k):
        s += f" ({v / ref[k]:.2f}x)"
    return s
perf_ok = any(results[n].get("sys") is not None for n in results)
head = ["target", "wake-ups", "syscalls" if perf_ok else "read+write", "epoll_wait", "CPU ns", "invol cs", "p99", "msgs/s", "idle CPU", "runs"]
rows = []
for n in results:
    p99 = results[n].get("p99")
    rows.append([n, cell(n, "wake", "{:.4f}"), cell(n, "sys" if perf_ok else "rw", "{:.3f}"), cell(n, "epoll", "{:.4f}"),
                 cell(n, "cpu_ns", "{:,.0f}"), cell(n, "invol", "{:.4f}"),
                 "-" if p99 is None else (f"{p99/1e3:.0f} µs" if p99 < 1e6 else f"{p99/1e6:.2f} ms"),
                 f"{results[n]['tp']:,.0f}", "-" if results[n]["idle"] is None else f"{results[n]['idle']*100:.1f} %", results[n]["runs"]])
widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
print(line(head)); print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for r in rows: print(line(r))
if perf_ok:
    print("syscalls per message by call (medians): " + "; ".join(
        n + " " + ", ".join(f"{c} {results[n]['c_' + c]:.2f}" for c in ("read", "write", "sendto", "writev", "epoll_ctl", "futex")
                            if (results[n].get("c_" + c) or 0) >= 0.005) for n in results))
if ref.get("pub_vs_est") is not None:
    print(f"redis cross-checks: PUBLISH calls / estimated messages = {ref['pub_vs_est']:.3f}; "
          f"INFO reads+writes per message = {ref['redis_rw']:.2f}")
print("wake-ups = voluntary context switches of the loop thread; syscalls, epoll_wait = perf stat tracepoints on the whole"
      " process (without perf: read+write = /proc/PID/io syscr+syscw, which misses send/recv-family calls);"
      " CPU ns = utime+stime; invol cs = preemptions (the machine's other load); idle CPU = no clients, 2 s.")
PY
echo "results in $OUT" >&2
exit $STATUS
