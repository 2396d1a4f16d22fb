#!/usr/bin/env bash
# TLS bulk throughput against plaintext, alternating in one sitting: each round runs perf/run-relay.sh once
# plaintext, once TLS (read-ahead on, the default) and once TLS with SWITCHBOARD_TLS_READ_AHEAD=0; prints
# every run and the medians of throughput and of server CPU per relayed message (server cores / throughput,
# which moves less than throughput when other work shares the machine).
#   perf/tls-vs-plain.sh                 # 3 rounds, 1000 pairs x window 64, 64 B (run-relay.sh defaults)
#   ROUNDS=5 perf/tls-vs-plain.sh --pairs 100
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd); ROUNDS=${ROUNDS:-3}; PORT=${PORT:-26300}
case ${1:-} in -h|--help) sed -n 2,7p "$0"; exit 0 ;; esac
OUT=$(mktemp -d /tmp/sb-tlsab.XXXXXX); trap 'rm -rf "$OUT"' EXIT
for r in $(seq "$ROUNDS"); do
  for cfg in plain tls tls-no-read-ahead; do
    args=(); ra=1
    case $cfg in tls) args=(--tls) ;; tls-no-read-ahead) args=(--tls); ra=0 ;; esac
    SWITCHBOARD_TLS_READ_AHEAD=$ra PORT=$PORT "$ROOT/perf/run-relay.sh" "${args[@]}" --runs 1 "$@" > "$OUT/$cfg-$r.txt" 2>&1
    dir=$(sed -n 's/^results in //p' "$OUT/$cfg-$r.txt" | tail -1)
    python3 - "$dir/run-1.json" "$cfg" "$r" >> "$OUT/rows.txt" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
t = d['throughputPerSecond']; c = d.get('serverCores') or 0
print(sys.argv[2], sys.argv[3], f"{t:.0f}", f"{c / t * 1e9 if t else 0:.0f}", d['verdict'])
PY
    tail -1 "$OUT/rows.txt" | awk '{printf "round %s %-18s %9s msg/s  %5s ns server CPU per message  %s\n", $2, $1, $3, $4, $5}'
  done
done
python3 - "$OUT/rows.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print("\nmedians:")
med = {}
for cfg in ("plain", "tls", "tls-no-read-ahead"):
    t = [float(r[2]) for r in rows if r[0] == cfg]; n = [float(r[3]) for r in rows if r[0] == cfg]
    if not t: continue
    med[cfg] = (statistics.median(t), statistics.median(n))
    print(f"  {cfg:18s} {med[cfg][0]:10.0f} msg/s  {med[cfg][1]:6.0f} ns/msg  (n={len(t)})")
if "plain" in med and "tls" in med:
    print(f"  TLS / plaintext: throughput {med['tls'][0] / med['plain'][0]:.2f} x, server CPU per message {med['tls'][1] / med['plain'][1]:.2f} x")
if "tls" in med and "tls-no-read-ahead" in med:
    print(f"  read-ahead on / off: throughput {med['tls'][0] / med['tls-no-read-ahead'][0]:.2f} x, CPU per message {med['tls'][1] / med['tls-no-read-ahead'][1]:.2f} x")
PY
