#!/usr/bin/env bash
# End-to-end test of several devices of one user in real terminals: starts `switchboard serve` on an
# ephemeral loopback port (TLS with a development CA), runs two `sbchat tui` of alice (two devices:
# each its own XDG_CONFIG_HOME, so its own device id) and one of bob in a private tmux server, and
# checks with `tmux capture-pane` (each client with its own config and data folders, as on two machines) that both of alice's devices receive bob's message, that what alice
# sends from one device shows on the other, and that `sbchat contacts` run meanwhile (a short-lived
# device of its own) leaves both of alice's clients connected.
#
# usage: e2e-devices.sh BIN_DIR
# exit: 0 passed, 1 failed, 77 skipped (tmux missing and not installable).
set -u
BIN=${1:?usage: e2e-devices.sh BIN_DIR}
SB="$BIN/switchboard"
SBCHAT="$BIN/sbchat"
TIMEOUT=${E2E_TIMEOUT:-30}
PW='e2e-password-1'

for b in "$SB" "$SBCHAT"; do
  [ -x "$b" ] || { echo "e2e-devices: FAIL: $b is missing (build first)"; exit 1; }
done
if ! command -v tmux >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
  ( $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq tmux ) >/dev/null 2>&1 || true
  command -v tmux >/dev/null 2>&1 || { echo "e2e-devices: SKIP: tmux is not installed and could not be installed"; exit 77; }
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sb-e2e-devices.XXXXXX")
SOCK="sb-e2e-devices-$$"
T() { tmux -f /dev/null -L "$SOCK" "$@"; }  # -f: no user config (read when the first session starts the server)
SERVER_PID=""
SESSIONS="laptop phone bob"
cleanup() {
  T kill-server >/dev/null 2>&1 || true
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

fail() {
  echo "e2e-devices: FAIL: $*"
  for s in $SESSIONS; do
    if T has-session -t "$s" 2>/dev/null; then
      echo "----- screen of $s -----"; T capture-pane -p -t "$s"; echo "------------------------"
    fi
    [ -s "$TMP/$s.stderr" ] && { echo "----- stderr of $s -----"; head -20 "$TMP/$s.stderr"; }
  done
  echo "----- server log (tail) -----"; tail -20 "$TMP/server.log" 2>/dev/null
  exit 1
}

screen() { T capture-pane -p -t "$1"; }
wait_for() {
  local deadline=$(( $(date +%s) + TIMEOUT ))
  while [ "$(date +%s)" -le "$deadline" ]; do
    screen "$1" 2>/dev/null | grep -qF -- "$2" && return 0
    sleep 0.2
  done
  fail "timed out waiting for '$2' on $1's screen"
}
# still_online SESSION USER: the client is connected (status line) and was not taken over.
still_online() {
  screen "$1" | grep -qF "online as $2" || fail "$1 is no longer online as $2"
  screen "$1" | grep -qF "logged in from" && fail "$1 was taken over"
  return 0
}

"$SB" cert init --data "$TMP/data" >/dev/null || fail "switchboard cert init"
CLIENT_ENV="SWITCHBOARD_CA=$TMP/data/tls/ca.pem SWITCHBOARD_KNOWN_SERVERS=$TMP/known_servers"
"$SB" serve --listen 127.0.0.1:0 --data "$TMP/data" --pbkdf2-iterations 1000 >"$TMP/server.out" 2>"$TMP/server.log" &
SERVER_PID=$!
ADDR=""
for _ in $(seq 1 $((TIMEOUT * 10))); do
  ADDR=$(sed -n 's/^switchboard listening on //p' "$TMP/server.out" | head -1)
  [ -n "$ADDR" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || fail "the server exited: $(cat "$TMP/server.log")"
  sleep 0.1
done
[ -n "$ADDR" ] || fail "the server did not start"

sb() { env SWITCHBOARD_SERVER="$ADDR" SWITCHBOARD_PASSWORD="$PW" XDG_CONFIG_HOME="$TMP/cfg-scripts" XDG_DATA_HOME="$TMP/data-scripts" $CLIENT_ENV "$SBCHAT" "$@" </dev/null; }
for u in alice bob; do sb register --user "$u" >/dev/null || fail "register $u"; done
sb add --user alice bob >/dev/null && sb accept --user bob alice >/dev/null || fail "befriend alice and bob"

# start_client SESSION USER: a terminal client with its own config folder (its own device id) and its
# own data folder (its own local history), as on another machine.
start_client() {
  mkdir -p "$TMP/cfg-$1" "$TMP/data-$1"
  T new-session -d -s "$1" -x 80 -y 24 \
    "env SWITCHBOARD_SERVER=$ADDR SWITCHBOARD_PASSWORD=$PW $CLIENT_ENV XDG_CONFIG_HOME=$TMP/cfg-$1 XDG_DATA_HOME=$TMP/data-$1 LANG=C.UTF-8 $SBCHAT tui --user $2 --device-name $1 2>>$TMP/$1.stderr; echo \"[sbchat exited: \$?]\"; sleep 600" \
    || fail "tmux new-session $1"
}
start_client laptop alice
wait_for laptop "online as alice"
start_client phone alice
wait_for phone "online as alice"
start_client bob bob
wait_for bob "online as bob"
still_online laptop alice
[ -s "$TMP/cfg-laptop/switchboard/device" ] && [ -s "$TMP/cfg-phone/switchboard/device" ] || fail "no device id was kept"
cmp -s "$TMP/cfg-laptop/switchboard/device" "$TMP/cfg-phone/switchboard/device" && fail "two config folders got the same device id"

# bob writes to alice: both of alice's devices show it.
T send-keys -t bob Enter
wait_for bob "Chat with alice  online"
T send-keys -t bob -l 'hello both devices'
T send-keys -t bob Enter
wait_for laptop "bob: hello both devices"
wait_for phone "bob: hello both devices"
wait_for bob "✓ you: hello both devices"

# alice answers from the laptop: bob gets it, and the phone shows it as alice's own message.
T send-keys -t laptop Enter
wait_for laptop "Chat with bob  online"
T send-keys -t laptop -l 'reply from the laptop'
T send-keys -t laptop Enter
wait_for bob "alice: reply from the laptop"
wait_for laptop "✓ you: reply from the laptop"
wait_for phone "you: reply from the laptop"
wait_for phone "✓ you: reply from the laptop"

# A scripted command as alice meanwhile: a device of its own, it disturbs neither terminal client.
contacts=$(sb contacts --user alice) || fail "sbchat contacts failed: $contacts"
echo "$contacts" | grep -qE '^bob[[:space:]]+online' || fail "sbchat contacts: $contacts"
sleep 1
still_online laptop alice
still_online phone alice
screen bob | grep -qF "● alice" || fail "bob no longer sees alice online"
# And both still receive live messages afterwards.
T send-keys -t bob -l 'after the contacts command'
T send-keys -t bob Enter
wait_for laptop "bob: after the contacts command"
wait_for phone "bob: after the contacts command"
still_online laptop alice
still_online phone alice

echo "e2e-devices: PASS"
exit 0
