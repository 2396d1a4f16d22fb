#!/usr/bin/env bash
# mallocs per relayed message in the real server: two sbload runs of different length against one server
# under a counting malloc (LD_PRELOAD); the difference of the differences divided by the extra messages.
#   perf/mallocs-per-message.sh            # builds release into .build-load, 100 pairs, runs of 2 s and 6 s
#   perf/mallocs-per-message.sh --tls      # the same over TLS (development CA; sbload's TLS runs in the same engine)
set -uo pipefail
SERVE_TLS=(--plaintext); LOAD_TLS=()
ROOT=$(cd "$(dirname "$0")/.." && pwd); BIN=$ROOT/.build-load/release; PORT=${PORT:-17950}
(cd "$ROOT" && swift build --scratch-path .build-load -c release --product switchboard >/dev/null &&
               swift build --scratch-path .build-load -c release --product sbload >/dev/null) || exit 1
SO=$ROOT/.build-load/malloc-count.so
gcc -O2 -shared -fPIC -o "$SO" "$ROOT/perf/malloc-count.c" -ldl || exit 1
DATA=$(mktemp -d /tmp/sbmalloc.XXXXXX); CNT=$DATA/count.txt
"$BIN/switchboard" users bulk-create --data "$DATA" --prefix load --count 200 --password loadtest-pw --pair-contacts >/dev/null
if [ "${1:-}" = --tls ]; then
  "$BIN/switchboard" cert init --data "$DATA" >/dev/null; SERVE_TLS=(); LOAD_TLS=(--tls --ca "$DATA/tls/ca.pem")
fi
MALLOC_COUNT_FILE=$CNT LD_PRELOAD=$SO taskset -c 0 "$BIN/switchboard" serve --data "$DATA" --listen 127.0.0.1:$PORT --log-level warning "${SERVE_TLS[@]}" > $DATA/server.log 2>&1 &
PID=$!
for _ in $(seq 100); do grep -q "listening on" $DATA/server.log && break; sleep 0.1; done
run() { taskset -c 1 "$BIN/sbload" relay --target 127.0.0.1:$PORT --password loadtest-pw --prefix load --pairs 100 --duration $1 --warmup 1 "${LOAD_TLS[@]}" 2>&1 | grep -E "^messages" | awk '{print $3}'; }
kill -USR2 $PID; sleep 0.3
m1=$(run 2); sleep 0.5; kill -USR2 $PID; sleep 0.3
m2=$(run 6); sleep 0.5; kill -USR2 $PID; sleep 0.3
kill -TERM $PID; wait $PID 2>/dev/null
mapfile -t c < $CNT
python3 -c "
c0,c1,c2=$((${c[0]})),$((${c[1]})),$((${c[2]})); m1,m2=$m1,$m2
d1,d2=c1-c0,c2-c1
print(f'run1 {m1} msgs {d1} mallocs; run2 {m2} msgs {d2} mallocs; marginal {(d2-d1)/(m2-m1):.4f} mallocs/msg')"
rm -rf $DATA
