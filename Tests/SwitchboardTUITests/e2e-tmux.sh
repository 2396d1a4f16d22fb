#!/usr/bin/env bash
# End-to-end test of the terminal client (`sbchat tui`) in real terminals: starts `switchboard serve`
# on an ephemeral loopback port with a temporary data folder, sets up users with the scriptable
# sbchat subcommands, runs two `sbchat tui` sessions in a private tmux server, drives them with keys
# and SGR mouse reports, and checks the screens with `tmux capture-pane` (-e for colours).
#
# usage: e2e-tmux.sh BIN_DIR [OUT_DIR]
#   BIN_DIR holds the built `switchboard` and `sbchat`; OUT_DIR (optional) receives screen captures.
# exit: 0 passed, 1 failed, 77 skipped (tmux missing and not installable).
set -u
BIN=${1:?usage: e2e-tmux.sh BIN_DIR [OUT_DIR]}
OUT=${2:-}
SB="$BIN/switchboard"
SBCHAT="$BIN/sbchat"
TIMEOUT=${E2E_TIMEOUT:-30}   # seconds per wait; generous for slow machines
# A 100,000-character paste must be handled within this (measured well under 1 s; the old client
# froze ~45 s for 70,000): generous for slow CI, far below anything quadratic.
PASTE_LIMIT_MS=${E2E_PASTE_LIMIT_MS:-10000}
PW='e2e-password-1'

for b in "$SB" "$SBCHAT"; do
  [ -x "$b" ] || { echo "e2e-tmux: FAIL: $b is missing (build first)"; exit 1; }
done

"$SBCHAT" --help 2>/dev/null | grep -qE '^ +tui' || { echo "e2e-tmux: FAIL: '$SBCHAT tui' does not exist (register Tui in SBChat.swift)"; exit 1; }

if ! command -v tmux >/dev/null 2>&1; then
  echo "e2e-tmux: tmux missing, trying to install it"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
  ( $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq tmux ) >/dev/null 2>&1 || true
  if ! command -v tmux >/dev/null 2>&1; then
    echo "e2e-tmux: SKIP: tmux is not installed and could not be installed"
    exit 77
  fi
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sb-e2e.XXXXXX")
SOCK="sb-e2e-$$"
T() { tmux -f /dev/null -L "$SOCK" "$@"; }  # -f: no user config (read when the first session starts the server)
SERVER_PID=""
cleanup() {
  T kill-server >/dev/null 2>&1 || true
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

fail() {
  echo "e2e-tmux: FAIL: $*"
  for s in $(T list-sessions -F '#S' 2>/dev/null); do
    if T has-session -t "$s" 2>/dev/null; then
      echo "----- screen of $s -----"; T capture-pane -p -t "$s"; echo "------------------------"
    fi
  done
  for s in alice bob; do
    [ -s "$TMP/$s.stderr" ] && { echo "----- stderr of $s -----"; grep -vE '^\s*$' "$TMP/$s.stderr" | head -40; }
  done
  echo "----- server log (tail) -----"; tail -20 "$TMP/server.log" 2>/dev/null
  exit 1
}

screen() { T capture-pane -p -t "$1"; }
screen_e() { T capture-pane -p -e -t "$1"; }

# wait_for SESSION TEXT: until the plain screen of SESSION contains TEXT.
wait_for() {
  local start=$(date +%s)
  local deadline=$(( start + TIMEOUT ))
  while [ "$(date +%s)" -le "$deadline" ]; do
    if screen "$1" 2>/dev/null | grep -qF -- "$2"; then
      [ $(( $(date +%s) - start )) -ge 3 ] && echo "e2e-tmux: note: '$2' took $(( $(date +%s) - start ))s"
      return 0
    fi
    sleep 0.2
  done
  fail "timed out waiting for '$2' on $1's screen"
}

# line_of SESSION TEXT: 1-based screen row of the first line containing TEXT.
line_of() { screen "$1" | grep -nF -- "$2" | head -1 | cut -d: -f1; }

sb() { env SWITCHBOARD_SERVER="$ADDR" SWITCHBOARD_PASSWORD="$PW" $CLIENT_ENV "$SBCHAT" "$@" </dev/null; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# Local history of every client in this run goes here (never into the real home).
export SWITCHBOARD_DATA_HOME="$TMP/home"
export XDG_CONFIG_HOME="$TMP/config"   # the client keeps its device id here, not in the real ~/.config

# --- server (TLS with a development CA when the server supports it) -------------------------
CLIENT_ENV="SWITCHBOARD_PLAINTEXT=1"
SERVE_FLAGS=""
if "$SB" cert init --help >/dev/null 2>&1; then
  "$SB" cert init --data "$TMP/data" >/dev/null || fail "switchboard cert init"
  CLIENT_ENV="SWITCHBOARD_CA=$TMP/data/tls/ca.pem"
fi
export SWITCHBOARD_KNOWN_SERVERS="$TMP/known_servers"
"$SB" serve --listen 127.0.0.1:0 --data "$TMP/data" --pbkdf2-iterations 1000 $SERVE_FLAGS >"$TMP/server.out" 2>"$TMP/server.log" &
SERVER_PID=$!
ADDR=""
for _ in $(seq 1 $((TIMEOUT * 10))); do
  ADDR=$(sed -n 's/^switchboard listening on //p' "$TMP/server.out" | head -1)
  [ -n "$ADDR" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || fail "the server exited: $(cat "$TMP/server.log")"
  sleep 0.1
done
[ -n "$ADDR" ] || fail "the server did not start"
echo "e2e-tmux: server at $ADDR"

# --- accounts, contacts, offline mail --------------------------------------------------------
for u in alice bob carol dave erin; do sb register --user "$u" >/dev/null || fail "register $u"; done
sb add --user alice bob >/dev/null && sb accept --user bob alice >/dev/null || fail "befriend alice and bob"
sb add --user alice carol >/dev/null && sb accept --user carol alice >/dev/null || fail "befriend alice and carol"
sb add --user dave alice >/dev/null || fail "dave asks alice"
# erin never runs the terminal client: subcommands as erin disturb no running session.
sb add --user erin carol >/dev/null && sb accept --user carol erin >/dev/null || fail "befriend erin and carol"
# alice is offline: these are stored as offline mail.
[ "$(sb send --user bob alice 'first note from bob' | tail -1)" = "stored offline" ] || fail "bob's offline message"
[ "$(sb send --user carol alice 'carol was here' | tail -1)" = "stored offline" ] || fail "carol's offline message"
[ "$(sb send --user bob alice 'second note from bob' | tail -1)" = "stored offline" ] || fail "bob's second offline message"

# --- two terminal clients -------------------------------------------------------------------
start_client() {
  T new-session -d -s "$1" -x 80 -y 24 \
    "env SWITCHBOARD_SERVER=$ADDR SWITCHBOARD_PASSWORD=$PW $CLIENT_ENV SWITCHBOARD_KNOWN_SERVERS=$TMP/known_servers SWITCHBOARD_DATA_HOME=$TMP/home LANG=C.UTF-8 $SBCHAT tui --user ${2:-$1} 2>>$TMP/$1.stderr; echo \"[sbchat exited: \$?]\"; sleep 600" \
    || fail "tmux new-session $1"
}
start_client alice
wait_for alice "online as alice"

# Offline mail at login: its own dialog, grouped by sender, with times.
wait_for alice "Offline messages received at login, by sender"
wait_for alice "From bob (2 messages):"
wait_for alice "From carol (1 message):"
S=$(screen alice)
echo "$S" | grep -qE '\[[0-9]{2}:[0-9]{2}:[0-9]{2}\] first note from bob' || fail "mail without a time"
bob_group=$(line_of alice "From bob (2 messages):")
first_note=$(line_of alice "first note from bob")
second_note=$(line_of alice "second note from bob")
carol_group=$(line_of alice "From carol (1 message):")
carol_note=$(line_of alice "carol was here")
[ "$first_note" -gt "$bob_group" ] && [ "$second_note" -gt "$bob_group" ] && [ "$carol_group" -gt "$second_note" ] \
  && [ "$carol_note" -gt "$carol_group" ] || fail "offline mail is not grouped by sender"

start_client bob
wait_for bob "online as bob"
wait_for alice "● bob"

# Online contacts in colour, offline ones grey (tmux re-encodes SGR; compare the rows' codes).
E=$(screen_e alice)
bob_row=$(echo "$E" | grep -F "● bob" | head -1)
carol_row=$(echo "$E" | grep -F "○ carol" | head -1)
echo "$bob_row" | grep -qE $'\e\\[[0-9;]*32[;m]' || fail "online bob is not green: $(echo "$bob_row" | cat -v)"
echo "$carol_row" | grep -qE $'\e\\[[0-9;]*90[;m]' || fail "offline carol is not grey: $(echo "$carol_row" | cat -v)"
echo "$carol_row" | grep -qE $'\e\\[[0-9;]*32[;m]' && fail "offline carol is coloured like an online contact"

# A pending request is shown and can be accepted with `a` (it is the first row, selected).
wait_for alice "? dave (a: accept)"
T send-keys -t alice Home
T send-keys -t alice -l a
wait_for alice "dave is now a contact"

# alice double-clicks bob (SGR mouse reports, 1-based column;row).
row=$(line_of alice "● bob")
[ -n "$row" ] || fail "bob is not in alice's contact list"
click=$'\e'"[<0;4;${row}M"$'\e'"[<0;4;${row}m"
T send-keys -t alice -l "$click$click"
wait_for alice "Chat with bob  online"

# Typed text shows at once; bob receives it; the mark turns into ✓ on SEND_ACK.
T send-keys -t alice -l 'Hello bob, 你好!'
T send-keys -t alice Enter
wait_for bob "alice: Hello bob, 你好!"
wait_for alice "✓ you: Hello bob, 你好!"

# bob selects alice with the arrow keys and Enter, then answers.
T send-keys -t bob Down
T send-keys -t bob Enter
wait_for bob "Chat with alice  online"
T send-keys -t bob -l 'Hi alice, got it'
T send-keys -t bob Enter
wait_for alice "bob: Hi alice, got it"
wait_for bob "✓ you: Hi alice, got it"

# Newest on top, on both sides.
[ "$(line_of alice 'Hi alice, got it')" -lt "$(line_of alice 'Hello bob')" ] || fail "alice: newest message is not on top"
[ "$(line_of bob 'Hi alice, got it')" -lt "$(line_of bob 'Hello bob')" ] || fail "bob: newest message is not on top"

# Bracketed paste (tmux paste-buffer -p): three lines are inserted, not sent; Enter sends one message.
printf 'pasted line one\npasted line two\npasted line three' >"$TMP/paste3"
T load-buffer -b p3 "$TMP/paste3"
T paste-buffer -p -b p3 -t alice
wait_for alice "> pasted line one↵pasted line two↵pasted line three"
sleep 0.5
screen bob | grep -qF "pasted line" && fail "a pasted line was sent without Enter"
T send-keys -t alice Enter
wait_for bob "alice: pasted line one"
r1=$(line_of bob "alice: pasted line one"); r2=$(line_of bob "pasted line two")
[ "$r2" = $((r1 + 1)) ] || fail "the pasted lines are not one message on consecutive rows (rows $r1, $r2)"
[ "$(screen bob | grep -c 'alice: pasted line')" = 1 ] || fail "the paste arrived as several messages"
# 100,000 characters: refused whole with a notice, quickly, and the client still takes keys.
head -c 100000 /dev/zero | tr '\0' 'x' >"$TMP/paste-big"
T load-buffer -b big "$TMP/paste-big"
start=$(now_ms)
T paste-buffer -p -b big -t alice
wait_for alice "paste not inserted: 100000 bytes"
T send-keys -t alice -l 'still responsive'
wait_for alice "> still responsive"
elapsed=$(( $(now_ms) - start ))
echo "e2e-tmux: 100,000-character paste refused and the next keys shown in ${elapsed} ms (limit ${PASTE_LIMIT_MS})"
[ "$elapsed" -le "$PASTE_LIMIT_MS" ] || fail "a 100,000-character paste took ${elapsed} ms (limit ${PASTE_LIMIT_MS})"
# 60,000 characters fit in one message: inserted (and drawn) in bounded time too.
T send-keys -t alice C-u
yes 'word' | head -c 60000 | tr '\n' ' ' >"$TMP/paste-60k"
T load-buffer -b w60 "$TMP/paste-60k"
start=$(now_ms)
T paste-buffer -p -b w60 -t alice
wait_for alice "> word word word word"
T send-keys -t alice -l 'end'
wait_for alice "word word end"
elapsed=$(( $(now_ms) - start ))
echo "e2e-tmux: 60,000-character paste inserted and the next keys shown in ${elapsed} ms"
[ "$elapsed" -le "$PASTE_LIMIT_MS" ] || fail "a 60,000-character paste took ${elapsed} ms (limit ${PASTE_LIMIT_MS})"
T send-keys -t alice C-u

if [ -n "$OUT" ]; then
  mkdir -p "$OUT"
  screen alice >"$OUT/alice.txt"; screen bob >"$OUT/bob.txt"
  screen_e alice >"$OUT/alice.ansi"; screen_e bob >"$OUT/bob.ansi"
fi

# An offline contact: arrows + Enter, the server's notice, and an offline message marked so.
T send-keys -t alice Tab
row_carol=$(line_of alice "○ carol")
first_contact=$(( $(line_of alice "Contacts ") + 1 ))
T send-keys -t alice Home
for _ in $(seq 1 $((row_carol - first_contact))); do T send-keys -t alice Down; done
T send-keys -t alice Enter
wait_for alice "Chat with carol  offline"
wait_for alice "Contact offline at the moment, send offline message"
T send-keys -t alice -l 'see you later'
T send-keys -t alice Enter
wait_for alice "✉ you (offline): see you later"
# Other users' control characters are printed visibly by the subcommands, never raw.
[ "$(sb send --user erin carol "$(printf 'evil \033[2J\033]2;pwned\007 end')" | tail -1)" = "stored offline" ] || fail "erin's escape-laden message"
# Usage errors exit 2, and a blank message is refused.
sb send --user erin carol "" >/dev/null 2>&1; [ $? = 2 ] || fail "send of an empty message did not exit 2"
sb send --user erin carol "   " >/dev/null 2>&1; [ $? = 2 ] || fail "send of a blank message did not exit 2"
sb contacts --user erin --server nonsense >/dev/null 2>&1; [ $? = 2 ] || fail "a malformed --server did not exit 2"
sb contacts --user erin --no-such-flag >/dev/null 2>&1; [ $? = 2 ] || fail "an unknown flag did not exit 2"
# Ctrl-C at the password prompt cancels (130); it never becomes part of the password.
T new-session -d -s pw -x 80 -y 5 "env SWITCHBOARD_SERVER=$ADDR $CLIENT_ENV $SBCHAT contacts --user erin; echo \"[exited: \$?]\"; sleep 600"
wait_for pw "password:"
T send-keys -t pw -l "$PW"; T send-keys -t pw C-c
wait_for pw "[exited: 130]"
T kill-session -t pw
T new-session -d -s pw -x 80 -y 5 "env SWITCHBOARD_SERVER=$ADDR $CLIENT_ENV $SBCHAT contacts --user erin; echo \"[exited: \$?]\"; sleep 600"
wait_for pw "password:"
T send-keys -t pw -l "x"; T send-keys -t pw BSpace; T send-keys -t pw -l "$PW"; T send-keys -t pw Enter
wait_for pw "[exited: 0]"
T kill-session -t pw
inbox=$(sb inbox --user carol)
echo "$inbox" | grep -qF "from alice:" && echo "$inbox" | grep -qF "see you later" || fail "carol's mailbox lacks alice's message: $inbox"
echo "$inbox" | grep -qF 'evil ^[[2J^[]2;pwned^G end' || fail "inbox does not show the controls visibly: $(echo "$inbox" | cat -v)"
printf '%s' "$inbox" | grep -q $'\e' && fail "inbox printed a raw ESC"

# Several dialogs: bob writes while alice looks at carol's dialog: an unread count on bob's tab.
T send-keys -t bob -l 'are you there?'
T send-keys -t bob Enter
wait_for alice "bob (1)"

# Reconnect: the server restarts; bob's message typed meanwhile waits (…), is resent after the
# reconnect with the same id, and alice sees it exactly once.
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""
wait_for bob "disconnected: "
wait_for alice "disconnected: "
T send-keys -t bob -l 'typed while the server was down'
T send-keys -t bob Enter
wait_for bob "… you: typed while the server was down"
# The back-off is capped at 5 s; wait until bob's next try is more than 3 s away, then Ctrl-R must
# reconnect him sooner (within 3 s, ~0.05-0.3 s measured) once the server is back.
deadline=$(( $(date +%s) + TIMEOUT ))
until screen bob | grep -qE "retry in [45]s"; do
  [ "$(date +%s)" -le "$deadline" ] || fail "bob's retry countdown never reached 4 s"
  screen bob | grep -qE "retry in ([6-9]|[1-9][0-9]+)s" && fail "bob's back-off passed 5 s: $(screen bob | tail -1)"
  sleep 0.1
done
"$SB" serve --listen "$ADDR" --data "$TMP/data" --pbkdf2-iterations 1000 $SERVE_FLAGS >"$TMP/server2.out" 2>>"$TMP/server.log" &
SERVER_PID=$!
for _ in $(seq 1 $((TIMEOUT * 10))); do grep -q "^switchboard listening on" "$TMP/server2.out" && break; sleep 0.1; done
if screen bob | grep -qE "retry in [45]s"; then
  T send-keys -t bob C-r
  start=$(now_ms)
  wait_for bob "online as bob"
  elapsed=$(( $(now_ms) - start ))
  echo "e2e-tmux: Ctrl-R reconnected in ${elapsed} ms"
  [ "$elapsed" -le 3000 ] || fail "Ctrl-R did not reconnect at once (${elapsed} ms)"
else
  echo "e2e-tmux: note: bob retried on his own while the server started; Ctrl-R not measured"
fi
wait_for bob "online as bob"
wait_for alice "online as alice"
deadline=$(( $(date +%s) + TIMEOUT ))
until screen bob | grep -qE "(✓|✉) you: typed while the server was down"; do
  [ "$(date +%s)" -le "$deadline" ] || fail "bob's message was not acknowledged after the reconnect"
  sleep 0.2
done
# Live (✓) it is in bob's dialog; stored (✉, alice was not back yet) in the offline-mail dialog.
if screen bob | grep -qF "✓ you: typed while the server was down"; then
  echo "e2e-tmux: resent message was delivered live"
  T send-keys -t alice C-p   # dialogs: offline mail, bob, carol: back from carol to bob
  wait_for alice "Chat with bob"
else
  echo "e2e-tmux: resent message was stored as offline mail"
  T send-keys -t alice C-p; T send-keys -t alice C-p
  wait_for alice "Offline messages received at login"
fi
wait_for alice "typed while the server was down"
[ "$(screen alice | grep -cF 'typed while the server was down')" = 1 ] || fail "a resent message is shown twice"
[ "$(screen bob | grep -cF 'typed while the server was down')" = 1 ] || fail "bob's resent message is shown twice"

# Resize: the layout follows the new size.
T resize-window -t alice -x 100 -y 30
deadline=$(( $(date +%s) + TIMEOUT ))
until [ "$(screen alice | sed -n 30p | grep -c 'online as alice')" = 1 ]; do
  [ "$(date +%s)" -le "$deadline" ] || fail "no redraw after resizing to 100x30"
  sleep 0.2
done

# Help line and quitting restore the terminal (the shell's echo after exit shows up).
T send-keys -t alice F1
wait_for alice "show or hide this help"
T send-keys -t alice C-c
wait_for alice "[sbchat exited: 0]"
screen alice | grep -qF "Switchboard: alice" && fail "the alternate screen was not left on exit"

# Local history: alice starts again; the dialogs she had open come back with their messages, and
# `sbchat history` prints them. carol never ran the terminal client: she has no history.
start_client alice2 alice
wait_for alice2 "online as alice"
wait_for alice2 "Chat with"
T send-keys -t alice2 C-p; T send-keys -t alice2 C-p
for _ in 1 2 3; do screen alice2 | grep -qF "Chat with bob" && break; T send-keys -t alice2 C-n; sleep 0.3; done
wait_for alice2 "Chat with bob"
wait_for alice2 "you: Hello bob, 你好!"
wait_for alice2 "bob: Hi alice, got it"
hist=$(sb history --user alice bob) || fail "sbchat history failed: $hist"
echo "$hist" | grep -qE '^\[[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:]{8}\] you ✓: Hello bob, 你好!$' || fail "history lacks alice's message: $hist"
echo "$hist" | grep -qF "bob: Hi alice, got it" || fail "history lacks bob's answer: $hist"
echo "$hist" | grep -qF "pasted line one^Jpasted line two" || fail "history lacks the pasted message: $hist"
[ "$(echo "$hist" | grep -c 'typed while the server was down')" = 1 ] || fail "history shows the resent message other than once: $hist"
sb history --user alice carol | grep -qF "you ✉: see you later" || fail "alice's history with carol lacks the offline message"
sb history --user alice carol | grep -qF "Hello bob" && fail "alice's conversations are mixed"
sb history --user bob alice | grep -qF "alice: Hello bob, 你好!" || fail "bob's own history lacks alice's message"
sb history --user carol alice >/dev/null 2>&1 && fail "carol has a history though she never ran the terminal client"
# Quitting with an unsent message asks first; the message is kept and sent at the next start.
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""
wait_for alice2 "disconnected: "
T send-keys -t alice2 -l 'kept across a restart'
T send-keys -t alice2 Enter
wait_for alice2 "… you: kept across a restart"
T send-keys -t alice2 C-c
wait_for alice2 "1 unsent message is kept and sent at the next start. Quit? (y/n)"
T send-keys -t alice2 -l n
wait_for alice2 "not quitting"
T send-keys -t alice2 C-c
wait_for alice2 "Quit? (y/n)"
T send-keys -t alice2 -l y
wait_for alice2 "[sbchat exited: 0]"
"$SB" serve --listen "$ADDR" --data "$TMP/data" --pbkdf2-iterations 1000 $SERVE_FLAGS >"$TMP/server3.out" 2>>"$TMP/server.log" &
SERVER_PID=$!
wait_for bob "online as bob"
start_client alice3 alice
wait_for alice3 "online as alice"
wait_for bob "alice: kept across a restart"
deadline=$(( $(date +%s) + TIMEOUT ))
until sb history --user alice bob | grep -qF "you ✓: kept across a restart"; do
  [ "$(date +%s)" -le "$deadline" ] || fail "the kept message was not delivered after the restart: $(sb history --user alice bob | tail -3)"
  sleep 0.3
done
[ "$(screen bob | grep -cF 'kept across a restart')" = 1 ] || fail "the kept message is shown twice"

# A signal ends the client: the terminal modes it turned on are turned off again.
T kill-session -t alice2
T rename-session -t alice3 alice2
[ "$(T display -p -t alice2 '#{mouse_any_flag}')" = 1 ] || fail "mouse mode is off while sbchat runs"
pane_pid=$(T display -p -t alice2 '#{pane_pid}')
client_pid=""
for stat in /proc/[0-9]*/stat; do   # the pane shell's child (no procps needed)
  read -r pid _ _ ppid _ <"$stat" 2>/dev/null || continue
  [ "$ppid" = "$pane_pid" ] && { client_pid=$pid; break; }
done
[ -n "$client_pid" ] || fail "no sbchat process under the pane"
kill -TERM "$client_pid"
wait_for alice2 "[sbchat exited: 143]"
[ "$(T display -p -t alice2 '#{mouse_any_flag}')" = 0 ] || fail "mouse mode still on after SIGTERM"
[ "$(T display -p -t alice2 '#{alternate_on}')" = 0 ] || fail "alternate screen still on after SIGTERM"

echo "e2e-tmux: PASS"
exit 0
