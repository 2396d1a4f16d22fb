#!/usr/bin/env bash
# TLS handshakes per second, full and resumed, Switchboard beside `openssl s_server`, both on CPU 0 with the
# same certificate (development CA, ECDSA P-256), clients on CPU 1.
#   perf/handshakes.sh                 # 3 rounds, alternating servers; prints every figure and the medians
#   ROUNDS=5 SECONDS_EACH=5 perf/handshakes.sh
# Measurements:
# - `openssl s_time -new` / `-reuse` against each server: one client, sequential handshakes (each waits for
#   the previous one), so the rate is 1 / (client + server + loopback time); the same client against both
#   servers makes the server's share comparable. TLS 1.3 by default; -reuse resumes with a ticket.
# - `sbload login-storm` against Switchboard: 4 client threads, full then resumed (TLS 1.3 tickets) plus
#   HELLO/WELCOME, i.e. what the server sustains when it is the bottleneck.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd); SCRATCH=${SCRATCH:-$ROOT/.build-load}; BIN=$SCRATCH/release
PORT=${PORT:-26200}; OPORT=$((PORT + 1)); ROUNDS=${ROUNDS:-3}; T=${SECONDS_EACH:-4}; STORM=${STORM:-3000}
case ${1:-} in -h|--help) sed -n 2,11p "$0"; exit 0 ;; esac
command -v openssl >/dev/null || { echo "openssl not installed" >&2; exit 1; }
if [ -z "${NO_BUILD:-}" ]; then
  (cd "$ROOT" && swift build --scratch-path "$SCRATCH" -c release --product switchboard >/dev/null &&
                 swift build --scratch-path "$SCRATCH" -c release --product sbload >/dev/null) || exit 1
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK=$(mktemp -d /tmp/sb-hs.XXXXXX); SPID=; OPID=
cleanup() { for p in $SPID $OPID; do kill -TERM "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
D=$WORK/data
"$BIN/switchboard" users bulk-create --data "$D" --prefix load --count 10 --password loadtest-pw --pbkdf2-iterations 1 >/dev/null || exit 1
"$BIN/switchboard" cert init --data "$D" >/dev/null || exit 1
taskset -c 0 "$BIN/switchboard" serve --data "$D" --listen 127.0.0.1:$PORT --log-level warning > "$WORK/sb.log" 2>&1 &
SPID=$!
taskset -c 0 openssl s_server -quiet -accept 127.0.0.1:$OPORT -cert "$D/tls/server.pem" -key "$D/tls/server.key" \
  -CAfile "$D/tls/ca.pem" > "$WORK/ossl.log" 2>&1 < /dev/null &
OPID=$!
for p in $PORT $OPORT; do for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done; done
# s_time prints a '*' per new session and an 'r' per resumed one, then "N connections in Xs; ..." (X is the
# client's CPU time) and "N connections in T real seconds" (whole seconds): the rate here is N over the wall
# time around the run. `-reuse` needs TLS 1.2: s_time never reads a TLS 1.3 ticket (it arrives after the
# handshake), so over 1.3 every "reuse" is a full handshake; the script checks the 'r' count.
stime() { # port new|reuse tls1_2|tls1_3 -> "rate resumed%"
  local t0 t1 out
  t0=$(date +%s.%N)
  out=$(taskset -c 1 openssl s_time -connect 127.0.0.1:$1 -CAfile "$D/tls/ca.pem" -$2 -$3 -time "$T" 2>/dev/null)
  t1=$(date +%s.%N)
  echo "$out" | awk -v w="$(echo "$t1 - $t0" | bc -l)" '
    /^[*r]+$/ { for (i = 1; i <= length($0); i++) { c = substr($0, i, 1); if (c == "r") r++; n++ } }
    /real seconds/ { total = $1 }
    END { if (total == "") { print "0 0" } else printf "%.0f %.0f\n", total / w, (n ? 100 * r / n : 0) }'
}
declare -A R
for r in $(seq "$ROUNDS"); do
  for target in sb ossl; do
    port=$PORT; [ $target = ossl ] && port=$OPORT
    for mode in new:tls1_3 new:tls1_2 reuse:tls1_2; do
      set -- $(stime $port ${mode%%:*} ${mode##*:}); R[$target-$mode]+="$1 "
      echo "round $r: s_time -${mode%%:*} -${mode##*:} against $target: $1 handshakes/s ($2 % resumed)"
    done
  done
  out=$(taskset -c 1 "$BIN/sbload" login-storm --target 127.0.0.1:$PORT --tls --ca "$D/tls/ca.pem" --threads 4 --connections $STORM 2>/dev/null)
  full=$(echo "$out" | awk '$1 == "full" && $3 == "per" {print $2}'); res=$(echo "$out" | awk '$1 == "resumed" && $3 == "per" {print $2}')
  R[storm-full]+="$full "; R[storm-resumed]+="$res "
  echo "round $r: sbload login-storm (4 threads) against sb: full $full/s, resumed $res/s"
done
med() { echo $1 | tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "medians of $ROUNDS (server on CPU 0, client on CPU 1; the machine is shared, so ±20 %):"
printf "  %-46s %10s %10s %12s\n" "" "full 1.3" "full 1.2" "resumed 1.2"
printf "  %-46s %10s %10s %12s\n" "openssl s_time -> openssl s_server" "$(med "${R[ossl-new:tls1_3]}")" "$(med "${R[ossl-new:tls1_2]}")" "$(med "${R[ossl-reuse:tls1_2]}")"
printf "  %-46s %10s %10s %12s\n" "openssl s_time -> switchboard serve" "$(med "${R[sb-new:tls1_3]}")" "$(med "${R[sb-new:tls1_2]}")" "$(med "${R[sb-reuse:tls1_2]}")"
printf "  %-46s %10s %10s %12s\n" "" "full 1.3" "" "resumed 1.3"
printf "  %-46s %10s %10s %12s\n" "sbload login-storm (4 threads) -> switchboard" "$(med "${R[storm-full]}")" "" "$(med "${R[storm-resumed]}")"
