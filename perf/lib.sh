# Shared by perf/run-peers.sh and perf/sweep.sh (sourced, not run): the release build, the temporary work
# folder with its traps, and one start_server / stop_server for every target (sb, sb-tls, redis, mqtt0,
# mqtt1, nats). Loopback only: every server listens on 127.0.0.1, and a port already in use skips that
# target (a server the script did not start is never touched). Every server is stopped on exit (trap).
#
# Source it first, then set ROOT, SCRATCH, SB_PORT, PAIRS, TARGETS (and override the defaults below if
# wanted); build_release, then OUT, then setup_work TAG, then start_server NAME / stop_server per target.

PASSWORD=loadtest-pw
PREFIX=load
REDIS_PORT=6379
MQTT_PORT=1883
NATS_PORT=4222
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SERVER_PID=
LOAD_PID=
WORK=

# build_release: switchboard and sbload in release under $SCRATCH; sets BIN. Servers and sbload get the
# highest file limit allowed (2 connections per pair, plus the servers' own).
build_release() {
  echo "== building (release, scratch $SCRATCH)" >&2
  (cd "$ROOT" && swift build --scratch-path "$SCRATCH" -c release --product switchboard >/dev/null &&
                 swift build --scratch-path "$SCRATCH" -c release --product sbload >/dev/null)
  BIN=$SCRATCH/release
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}

stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
}

# Stops a running sbload (LOAD_PID, when the script runs it in the background) and the server, removes WORK.
cleanup() {
  if [ -n "$LOAD_PID" ]; then kill -TERM "$LOAD_PID" 2>/dev/null || true; fi
  stop_server
  if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 100); do port_open "$1" && return 0; sleep 0.1; done
  return 1
}

# setup_work TAG: WORK=/tmp/sb-TAG.XXXXXX (cleaned up on exit, with the traps); when TARGETS lists sb or
# sb-tls, 2 × PAIRS Switchboard users and a development CA in WORK/sb-data (created once with the server
# stopped, shared by the plaintext and TLS runs); the Mosquitto configuration.
setup_work() {
  WORK=$(mktemp -d "/tmp/sb-$1.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  SB_DATA=$WORK/sb-data
  case ",$TARGETS," in
    *,sb,*|*,sb-tls,*)
      echo "== creating $((2 * PAIRS)) Switchboard users, development CA" >&2
      "$BIN/switchboard" users bulk-create --data "$SB_DATA" --prefix "$PREFIX" --count $((2 * PAIRS)) \
        --password "$PASSWORD" --pair-contacts >/dev/null
      "$BIN/switchboard" cert init --data "$SB_DATA" >/dev/null ;;
  esac
  cat >"$WORK/mosquitto.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
max_connections -1
persistence false
# Nagle off, as Redis, NATS and Switchboard do: without it small packets wait for delayed ACKs.
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
EOF
}

# start_server NAME: starts it pinned to SERVER_CPU (log in OUT/server-NAME.log), waits for its port; sets
# SERVER_PID, TARGET and EXTRA (sbload arguments). Returns 1 (and says why) when the binary is missing, the
# port is in use or the server did not start.
start_server() {
  local name=$1 port
  EXTRA=()
  case "$name" in
    sb|sb-tls)
      port=$SB_PORT; TARGET=127.0.0.1:$port
      local args=(serve --data "$SB_DATA" --listen "127.0.0.1:$port" --log-level warning)
      if [ "$name" = sb ]; then args+=(--plaintext); else EXTRA=(--tls --ca "$SB_DATA/tls/ca.pem"); fi
      EXTRA+=(--password "$PASSWORD" --prefix "$PREFIX")
      port_open "$port" && { echo "port $port is in use: skipping $name" >&2; return 1; }
      taskset -c "$SERVER_CPU" "$BIN/switchboard" "${args[@]}" >"$OUT/server-$name.log" 2>&1 & ;;
    redis)
      command -v redis-server >/dev/null || { echo "redis-server not installed (apt-get install redis-server): skipping" >&2; return 1; }
      port=$REDIS_PORT; TARGET=redis://127.0.0.1:$port
      port_open "$port" && { echo "port $port is in use: skipping $name" >&2; return 1; }
      taskset -c "$SERVER_CPU" redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --daemonize no --dir "$WORK" >"$OUT/server-$name.log" 2>&1 & ;;
    mqtt0|mqtt1)
      command -v mosquitto >/dev/null || { echo "mosquitto not installed (apt-get install mosquitto): skipping" >&2; return 1; }
      port=$MQTT_PORT; TARGET=mqtt://127.0.0.1:$port; EXTRA=(--qos "${name#mqtt}")
      port_open "$port" && { echo "port $port is in use: skipping $name" >&2; return 1; }
      taskset -c "$SERVER_CPU" mosquitto -c "$WORK/mosquitto.conf" >"$OUT/server-$name.log" 2>&1 & ;;
    nats)
      command -v nats-server >/dev/null || { echo "nats-server not installed (apt-get install nats-server): skipping" >&2; return 1; }
      port=$NATS_PORT; TARGET=nats://127.0.0.1:$port
      port_open "$port" && { echo "port $port is in use: skipping $name" >&2; return 1; }
      taskset -c "$SERVER_CPU" nats-server -a 127.0.0.1 -p "$port" >"$OUT/server-$name.log" 2>&1 & ;;
    *) echo "unknown target $name (sb, sb-tls, redis, mqtt0, mqtt1, nats)" >&2; return 1 ;;
  esac
  SERVER_PID=$!
  wait_port "$port" || { echo "$name did not start:" >&2; cat "$OUT/server-$name.log" >&2; stop_server; return 1; }
}
