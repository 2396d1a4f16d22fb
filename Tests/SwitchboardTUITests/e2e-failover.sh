#!/usr/bin/env bash
# End-to-end failover of the terminal client over a server list: two independent `switchboard serve`
# (A and B, TLS, each its own data folder and key; the same accounts created on both in the same
# order, so user ids match as they would in a cluster) and `sbchat tui --server A,B` for alice in a
# private tmux server, bob's client on B only. Checks with `tmux capture-pane`:
#   - alice starts on A (the first of the list), pinning A's key;
#   - A is killed with SIGKILL; a message alice types at once waits (…), alice moves to B within the
#     first back-off (status line "online as alice at B"), pins B's key (its own known-servers line),
#     and the message is sent there with its id: delivered (✓) to bob, shown once on both screens;
#   - A comes back and B is killed: alice goes round to A; with both down the status line names both,
#     and Ctrl-R once B is back finds it at once;
#   - the local history (kept under the list as written) holds the message once.
#
# usage: e2e-failover.sh BIN_DIR [OUT_DIR]
# exit: 0 passed, 1 failed, 77 skipped (tmux missing and not installable).
set -u
BIN=${1:?usage: e2e-failover.sh BIN_DIR}
OUT=${2:-}
SB="$BIN/switchboard"
SBCHAT="$BIN/sbchat"
TIMEOUT=${E2E_TIMEOUT:-20}
PW='e2e-password-1'

for b in "$SB" "$SBCHAT"; do
  [ -x "$b" ] || { echo "e2e-failover: FAIL: $b is missing (build first)"; exit 1; }
done
if ! command -v tmux >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
  ( $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq tmux ) >/dev/null 2>&1 || true
  command -v tmux >/dev/null 2>&1 || { echo "e2e-failover: SKIP: tmux is not installed and could not be installed"; exit 77; }
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sb-e2e-failover.XXXXXX")
SOCK="sb-e2e-failover-$$"
T() { tmux -f /dev/null -L "$SOCK" "$@"; }
PID_A=""; PID_B=""
cleanup() {
  if [ -n "$OUT" ]; then mkdir -p "$OUT"; for s in alice bob; do T capture-pane -p -t "$s" >"$OUT/failover-$s.txt" 2>/dev/null; done; fi
  T kill-server >/dev/null 2>&1 || true
  for p in $PID_A $PID_B; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT

fail() {
  echo "e2e-failover: FAIL: $*"
  for s in alice bob; do
    if T has-session -t "$s" 2>/dev/null; then
      echo "----- screen of $s -----"; T capture-pane -p -t "$s"; echo "------------------------"
    fi
    [ -s "$TMP/$s.stderr" ] && { echo "----- stderr of $s -----"; head -20 "$TMP/$s.stderr"; }
  done
  for n in A B; do echo "----- server $n log (tail) -----"; tail -10 "$TMP/server-$n.log" 2>/dev/null; done
  exit 1
}

screen() { T capture-pane -p -t "$1"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
wait_for() {
  local deadline=$(( $(date +%s) + TIMEOUT ))
  while [ "$(date +%s)" -le "$deadline" ]; do
    screen "$1" 2>/dev/null | grep -qF -- "$2" && return 0
    sleep 0.1
  done
  fail "timed out waiting for '$2' on $1's screen"
}

# start_server NAME LISTEN: `switchboard serve` with data folder $TMP/NAME; sets PID_NAME and ADDR_NAME.
start_server() {
  [ -d "$TMP/$1" ] || "$SB" cert init --data "$TMP/$1" >/dev/null || fail "switchboard cert init $1"
  : >"$TMP/server-$1.out"
  "$SB" serve --listen "$2" --data "$TMP/$1" --pbkdf2-iterations 1000 >"$TMP/server-$1.out" 2>>"$TMP/server-$1.log" &
  local pid=$! addr=""
  for _ in $(seq 1 $((TIMEOUT * 10))); do
    addr=$(sed -n 's/^switchboard listening on //p' "$TMP/server-$1.out" | head -1)
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || fail "server $1 exited: $(cat "$TMP/server-$1.log")"
    sleep 0.1
  done
  [ -n "$addr" ] || fail "server $1 did not start"
  eval "PID_$1=$pid; ADDR_$1=$addr"
}
kill9() { local p; eval "p=\$PID_$1"; kill -9 "$p"; wait "$p" 2>/dev/null; eval "PID_$1=''"; }

start_server A 127.0.0.1:0
start_server B 127.0.0.1:0
echo "e2e-failover: A at $ADDR_A, B at $ADDR_B"

# Accounts on both (scripts pin keys in a file of their own: the terminal client's first contacts stay its own).
sb() { local server=$1; shift; env SWITCHBOARD_SERVER="$server" SWITCHBOARD_PASSWORD="$PW" SWITCHBOARD_KNOWN_SERVERS="$TMP/known-scripts" \
  XDG_CONFIG_HOME="$TMP/cfg-scripts" SWITCHBOARD_DATA_HOME="$TMP/home-scripts" "$SBCHAT" "$@" </dev/null; }
for server in "$ADDR_A" "$ADDR_B"; do
  for u in alice bob; do sb "$server" register --user "$u" >/dev/null || fail "register $u on $server"; done
  sb "$server" add --user alice bob >/dev/null && sb "$server" accept --user bob alice >/dev/null || fail "befriend on $server"
done

start_client() {  # SESSION USER SERVERS
  mkdir -p "$TMP/cfg-$1"
  T new-session -d -s "$1" -x 100 -y 24 \
    "env SWITCHBOARD_SERVER=$3 SWITCHBOARD_PASSWORD=$PW SWITCHBOARD_KNOWN_SERVERS=$TMP/known-$1 XDG_CONFIG_HOME=$TMP/cfg-$1 SWITCHBOARD_DATA_HOME=$TMP/home LANG=C.UTF-8 $SBCHAT tui --user $2 2>>$TMP/$1.stderr; echo \"[sbchat exited: \$?]\"; sleep 600" \
    || fail "tmux new-session $1"
}
start_client bob bob "$ADDR_B"
wait_for bob "online as bob at $ADDR_B"
start_client alice alice "$ADDR_A,$ADDR_B"
wait_for alice "online as alice at $ADDR_A"
T send-keys -t alice Enter
wait_for alice "Chat with bob"
grep -qF "first contact with $ADDR_A" "$TMP/alice.stderr" || fail "no first-contact notice for A: $(cat "$TMP/alice.stderr")"

# A dies; alice types at once: the message waits, then goes to B after the failover.
kill9 A
start=$(now_ms)
T send-keys -t alice -l 'typed during the failover'
T send-keys -t alice Enter
# (bob is not on A: the line says the message was written while he was offline.)
wait_for alice "… you (offline): typed during the failover"
wait_for alice "online as alice at $ADDR_B"
elapsed=$(( $(now_ms) - start ))
echo "e2e-failover: alice was online at B ${elapsed} ms after A was killed"
wait_for alice "first contact with $ADDR_B"  # B's key pinned during the failover, said in the status line
# The first back-off is at most 1 s; allow for the connect, TLS handshake and login in a debug build.
[ "$elapsed" -le 4000 ] || fail "the failover to B took ${elapsed} ms (first back-off is at most 1 s)"
wait_for alice "✓ you (offline): typed during the failover"
wait_for bob "alice: typed during the failover"
[ "$(screen alice | grep -cF 'typed during the failover')" = 1 ] || fail "alice shows the resent message other than once"
[ "$(screen bob | grep -cF 'typed during the failover')" = 1 ] || fail "bob shows the message other than once"
# Each server pinned under its own HOST:PORT.
[ "$(grep -c "^$ADDR_A " "$TMP/known-alice")" = 1 ] && [ "$(grep -c "^$ADDR_B " "$TMP/known-alice")" = 1 ] \
  || fail "known servers of alice: $(cat "$TMP/known-alice")"

# Round robin: A back, B killed: alice goes round to A; bob (B only) waits.
start_server A "$ADDR_A"
kill9 B
start=$(now_ms)
wait_for alice "online as alice at $ADDR_A"
echo "e2e-failover: alice was back on A $(( $(now_ms) - start )) ms after B was killed"
wait_for bob "disconnected: "

# Both down: the status line names every server that failed.
kill9 A
wait_for alice "disconnected: none of the 2 servers"  # (shortened while a notice shows)

# B comes back while alice waits out a back-off of 2 s or more: Ctrl-R walks the list at once and finds B.
start_server B "$ADDR_B"
deadline=$(( $(date +%s) + TIMEOUT ))
until screen alice | grep -qE "retry in [2-5]s"; do
  [ "$(date +%s)" -le "$deadline" ] || fail "alice's retry countdown never reached 2 s"
  screen alice | grep -qF "online as alice at $ADDR_B" && break
  sleep 0.05
done
if screen alice | grep -qE "retry in [2-5]s"; then
  T send-keys -t alice C-r
  start=$(now_ms)
  wait_for alice "online as alice at $ADDR_B"
  elapsed=$(( $(now_ms) - start ))
  echo "e2e-failover: Ctrl-R found B in ${elapsed} ms"
  [ "$elapsed" -le 1500 ] || fail "Ctrl-R did not reconnect at once (${elapsed} ms)"
else
  echo "e2e-failover: note: alice found B on her own before Ctrl-R"
fi

# The local history is kept under the list as written: it has the message once.
T send-keys -t alice C-c
hist=""
for _ in $(seq 1 50); do
  hist=$(env SWITCHBOARD_SERVER="$ADDR_A,$ADDR_B" SWITCHBOARD_DATA_HOME="$TMP/home" "$SBCHAT" history --user alice bob 2>&1) && break
  sleep 0.1
done
[ "$(echo "$hist" | grep -c 'you ✓: typed during the failover')" = 1 ] || fail "history of alice at A,B: $hist"

echo "e2e-failover: PASS"
exit 0
