#!/usr/bin/env bash
# Real-terminal test of the terminal client: `sbchat tui` runs in tmux, and a real xterm under Xvfb is
# attached to that tmux session. xdotool moves the X pointer and clicks the real mouse button, and types
# on the X keyboard, so every event takes the path a user's does: X server -> xterm (which encodes the
# mouse only if the application asked for it with ?1000h/?1002h/?1006h) -> tmux client -> tmux server
# (which forwards mouse reports only while the pane's mouse mode is on) -> sbchat. Nothing is injected
# into the pane. It double-clicks contacts, types, clicks [Send], pastes xterm's own selection with
# shift + middle click (bracketed: a pasted newline is not Enter), scrolls with the wheel (buttons
# 4/5) and clicks a tab. The screen is read with `tmux capture-pane`, a screenshot of the X display
# (`import -window root`) is checked for the colours of the [Send] button and of an online contact,
# `#{mouse_any_flag}` must be 1 while sbchat runs and 0 after it exits, and the receiving side is a
# `sbchat listen` process whose output must hold the message.
#
# usage: e2e-xterm.sh BIN_DIR [OUT_DIR]     (OUT_DIR receives shot.png and the screen captures)
# exit: 0 passed, 1 failed, 77 skipped (Xvfb, xterm, xdotool, import or tmux missing and not installable).
set -u
BIN=${1:?usage: e2e-xterm.sh BIN_DIR [OUT_DIR]}
OUT=${2:-}
SB="$BIN/switchboard"
SBCHAT="$BIN/sbchat"
TIMEOUT=${E2E_TIMEOUT:-30}
PW='e2e-password-1'

for b in "$SB" "$SBCHAT"; do
  [ -x "$b" ] || { echo "e2e-xterm: FAIL: $b is missing (build first)"; exit 1; }
done

install() {
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
  ( $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$1" ) >/dev/null 2>&1 || true
}
need() {  # need COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "e2e-xterm: $1 missing, trying to install $2"
  install "$2"
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "e2e-xterm: SKIP: $1 (Debian package $2) is not installed and could not be installed"
  exit 77
}
need Xvfb xvfb; need xterm xterm; need xdotool xdotool; need import imagemagick; need tmux tmux
# The screenshot uses DejaVu Sans Mono (fonts-dejavu-core), which has the client's symbols (● ✓ ✉).
fc-list 2>/dev/null | grep -q "DejaVu Sans Mono" || install fonts-dejavu-core
fc-list 2>/dev/null | grep -q "DejaVu Sans Mono" || { echo "e2e-xterm: SKIP: font DejaVu Sans Mono (fonts-dejavu-core) missing"; exit 77; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sb-xterm.XXXXXX")
SOCK="sb-xterm-$$"
T() { tmux -L "$SOCK" "$@"; }
SERVER_PID=""; XVFB_PID=""; XTERM_PID=""; LISTEN_PID=""
cleanup() {
  [ -n "$XTERM_PID" ] && kill "$XTERM_PID" 2>/dev/null
  T kill-server >/dev/null 2>&1 || true
  [ -n "$LISTEN_PID" ] && kill "$LISTEN_PID" 2>/dev/null
  [ -n "$XVFB_PID" ] && kill "$XVFB_PID" 2>/dev/null
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; fi
  wait 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

fail() {
  echo "e2e-xterm: FAIL: $*"
  if T has-session -t alice 2>/dev/null; then echo "----- screen -----"; T capture-pane -p -t alice; echo "------------------"; fi
  [ -s "$TMP/alice.stderr" ] && { echo "----- stderr -----"; head -40 "$TMP/alice.stderr"; }
  [ -s "$TMP/xvfb.log" ] && { echo "----- Xvfb log (tail) -----"; tail -5 "$TMP/xvfb.log"; }
  echo "----- listen -----"; cat "$TMP/listen.out" 2>/dev/null
  [ -n "$OUT" ] && mkdir -p "$OUT" && DISPLAY=":$DISPLAY_NUM" import -window root "$OUT/fail.png" 2>/dev/null
  exit 1
}
screen() { T capture-pane -p -t alice; }
wait_for() {
  local deadline=$(( $(date +%s) + TIMEOUT ))
  while [ "$(date +%s)" -le "$deadline" ]; do
    screen 2>/dev/null | grep -qF -- "$1" && return 0
    sleep 0.2
  done
  fail "timed out waiting for '$1' on the screen"
}
# double_click COLUMN ROW TEXT: a real double-click, until TEXT shows. A machine so loaded that the two
# presses reach sbchat more than 400 ms apart is a single click twice: then the user clicks again
# (at most three times, each noted).
double_click() {
  local try
  for try in 1 2 3; do
    xdotool mousemove "$(cell_x "$1")" "$(cell_y "$2")"; sleep 0.2
    xdotool click --repeat 2 --delay 80 1
    local deadline=$(( $(date +%s) + 5 ))
    while [ "$(date +%s)" -le "$deadline" ]; do
      screen | grep -qF -- "$3" && return 0
      sleep 0.2
    done
    echo "e2e-xterm: note: double-click $try did not open '$3'"
  done
  fail "three real double-clicks did not show '$3'"
}
line_of() { screen | grep -nF -- "$1" | head -1 | cut -d: -f1; }
sb() { env SWITCHBOARD_SERVER="$ADDR" SWITCHBOARD_PASSWORD="$PW" $CLIENT_ENV "$SBCHAT" "$@" </dev/null; }

# --- server, accounts -----------------------------------------------------------------------------
"$SB" cert init --data "$TMP/data" >/dev/null || fail "switchboard cert init"
CLIENT_ENV="SWITCHBOARD_CA=$TMP/data/tls/ca.pem SWITCHBOARD_DATA_HOME=$TMP/history"
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
for u in alice bob carol; do sb register --user "$u" >/dev/null || fail "register $u"; done
sb add --user alice bob >/dev/null && sb accept --user bob alice >/dev/null || fail "befriend alice and bob"
sb add --user alice carol >/dev/null && sb accept --user carol alice >/dev/null || fail "befriend alice and carol"
sb listen --user bob --count 100 --timeout $((TIMEOUT * 3)) >"$TMP/listen.out" 2>&1 &
LISTEN_PID=$!
for _ in $(seq 1 $((TIMEOUT * 10))); do grep -q "listening as bob" "$TMP/listen.out" && break; sleep 0.1; done

# --- X display, tmux session, xterm attached to it ----------------------------------------------------
DISPLAY_NUM=$(( 200 + $$ % 700 ))
while [ -e "/tmp/.X11-unix/X$DISPLAY_NUM" ] || [ -e "/tmp/.X$DISPLAY_NUM-lock" ]; do DISPLAY_NUM=$((DISPLAY_NUM + 1)); done
Xvfb ":$DISPLAY_NUM" -screen 0 800x600x24 -nolisten tcp >"$TMP/xvfb.log" 2>&1 &
XVFB_PID=$!
export DISPLAY=":$DISPLAY_NUM"
for _ in $(seq 1 $((TIMEOUT * 10))); do xdotool getmouselocation >/dev/null 2>&1 && break; sleep 0.1; done
xdotool getmouselocation >/dev/null 2>&1 || fail "Xvfb did not start on $DISPLAY"

T -f /dev/null new-session -d -s alice -x 80 -y 24 \
  "env SWITCHBOARD_SERVER=$ADDR SWITCHBOARD_PASSWORD=$PW $CLIENT_ENV LANG=C.UTF-8 $SBCHAT tui --user alice 2>>$TMP/alice.stderr; echo \"[sbchat exited: \$?]\"; sleep 600" \
  || fail "tmux new-session"
# No status line: the pane is the whole xterm, so pane rows are xterm rows.
T set -g status off
# No window manager: the xterm sits at +0+0 and gets the keyboard while the pointer is over it.
# -b 0: no inner border, so cell (c, r) starts at pixel (c * cellWidth, r * cellHeight).
LANG=C.UTF-8 xterm -geometry 80x24+0+0 -b 0 -fa 'DejaVu Sans Mono' -fs 9 -bg black -fg grey90 -u8 -xrm 'XTerm*allowWindowOps: true' \
  -e env TMUX= tmux -u -L "$SOCK" attach -t alice >"$TMP/xterm.log" 2>&1 &
XTERM_PID=$!
wait_for "online as alice"
wait_for "● bob"

WIN=""
for _ in $(seq 1 $((TIMEOUT * 10))); do WIN=$(xdotool search --pid "$XTERM_PID" 2>/dev/null | head -1); [ -n "$WIN" ] && break; sleep 0.1; done
[ -n "$WIN" ] || fail "no xterm window"
eval "$(xdotool getwindowgeometry --shell "$WIN")"   # WIDTH, HEIGHT, X, Y
CW=$(( WIDTH / 80 )); CH=$(( HEIGHT / 24 ))
[ "$CW" -gt 0 ] && [ "$CH" -gt 0 ] || fail "xterm geometry ${WIDTH}x${HEIGHT}"
echo "e2e-xterm: xterm ${WIDTH}x${HEIGHT} at $X,$Y, cells ${CW}x${CH} px, tmux $(tmux -V)"
cell_x() { echo $(( X + $1 * CW + CW / 2 )); }   # 0-based column -> pixel
cell_y() { echo $(( Y + $1 * CH + CH / 2 )); }   # 0-based row -> pixel

# The pane asked for the mouse (and nothing turned it off again).
[ "$(T display -p -t alice '#{mouse_any_flag}')" = 1 ] || fail "mouse mode is off while sbchat runs (#{mouse_any_flag} = $(T display -p -t alice '#{mouse_any_flag}'))"
[ "$(T display -p -t alice '#{mouse_sgr_flag}')" = 1 ] || fail "SGR mouse encoding is off while sbchat runs"

# A real double-click on bob (left button, twice, 80 ms apart).
row=$(( $(line_of "● bob") - 1 ))
double_click 3 "$row" "Chat with bob"

# Typed on the X keyboard, sent with a real click on [Send] (the last six columns of the input row).
xdotool type --delay 20 "clicked in a real xterm"
wait_for "> clicked in a real xterm"
input_row=$(( $(line_of "[Send]") - 1 ))
[ "$input_row" -eq 22 ] || fail "the input row is $input_row, not 22: the pane is not the whole 80x24 xterm"
xdotool mousemove "$(cell_x 76)" "$(cell_y $input_row)"
sleep 0.2
xdotool click 1
wait_for "you: clicked in a real xterm"
for _ in $(seq 1 $((TIMEOUT * 10))); do grep -qF "alice: clicked in a real xterm" "$TMP/listen.out" && break; sleep 0.1; done
grep -qF "alice: clicked in a real xterm" "$TMP/listen.out" || fail "bob's listen did not receive the message"
wait_for "✓ you: clicked in a real xterm"

# A real paste: shift + double-click selects a word in xterm (shift bypasses mouse reporting),
# shift + middle click pastes it; xterm sends it bracketed, so it lands in the input, unsent.
row=$(( $(line_of "✓ you: clicked in a real xterm") - 1 ))
col=$(screen | sed -n "$((row + 1))p" | grep -bo "xterm" | head -1 | cut -d: -f1)
[ -n "$col" ] || fail "no word to select"
col=$(screen | sed -n "$((row + 1))p" | cut -c1-$((col + 1)) | sed 's/./x/g' | wc -c); col=$((col - 2))  # bytes -> cells
xdotool mousemove "$(cell_x $((col + 1)))" "$(cell_y $row)"; sleep 0.2
xdotool keydown shift click --repeat 2 --delay 80 1 keyup shift
sleep 0.3
xdotool mousemove "$(cell_x 30)" "$(cell_y $input_row)"; sleep 0.2
xdotool keydown shift click 2 keyup shift
wait_for "> xterm"
xdotool key ctrl+u
# Shift + triple-click selects a whole line, newline included: pasted, the newline stays in the input
# (shown as ↵) where a terminal without bracketed paste would have pressed Enter.
xdotool mousemove "$(cell_x 30)" "$(cell_y $((row - 1)))"; sleep 0.2
xdotool keydown shift click --repeat 3 --delay 60 1 keyup shift
sleep 0.3
xdotool mousemove "$(cell_x 30)" "$(cell_y $input_row)"; sleep 0.2
xdotool keydown shift click 2 keyup shift
deadline=$(( $(date +%s) + TIMEOUT ))
until screen | grep -qE "^> .*Chat with bob  online *↵"; do
  [ "$(date +%s)" -le "$deadline" ] || fail "the pasted line (with its newline) is not in the input"
  sleep 0.2
done
sleep 0.5
[ "$(grep -c "alice:" "$TMP/listen.out")" = 1 ] || fail "a paste was sent: $(cat "$TMP/listen.out")"
xdotool key ctrl+u
sleep 0.3
screen | grep -qF "↵" && fail "Ctrl-U did not clear the pasted input"

# The wheel scrolls, a click on a tab switches: open carol with a double-click, carol writes 25 notes,
# the wheel scrolls down and up, then a click on bob's tab.
row=$(( $(line_of "○ carol") - 1 ))
double_click 3 "$row" "Chat with carol"
for i in $(seq 1 25); do sb send --user carol alice "note $i from carol" >/dev/null || fail "carol's note $i"; done
wait_for "carol: note 25 from carol"
wait_for "more (PgDn)"
xdotool mousemove "$(cell_x 50)" "$(cell_y 10)"; sleep 0.2
xdotool click 5   # wheel down: three rows older
wait_for "▲ 3 newer (PgUp)"
xdotool click 4   # wheel up
wait_for "▼ "
screen | grep -qF "newer (PgUp)" && fail "the wheel did not scroll back up"
col=$(screen | head -1 | grep -bo " bob " | head -1 | cut -d: -f1)
[ -n "$col" ] || fail "no tab for bob"
xdotool mousemove "$(cell_x $((col + 2)))" "$(cell_y 0)"; sleep 0.2
xdotool click 1
wait_for "Chat with bob"

# Screenshot: the [Send] button is green, the online contact's row is green text.
sleep 0.5
import -window root "$TMP/shot.png" || fail "import -window root"
[ -n "$OUT" ] && { mkdir -p "$OUT"; cp "$TMP/shot.png" "$OUT/shot.png"; screen >"$OUT/xterm-screen.txt"; }
average() {  # average colour "R G B" (0-255) of a rectangle: average X Y W H
  convert "$TMP/shot.png" -crop "$3x$4+$1+$2" +repage -scale '1x1!' -depth 8 -format '%[fx:int(255*r)] %[fx:int(255*g)] %[fx:int(255*b)]' info:
}
read -r r g b <<<"$(average $((X + 74 * CW)) $((Y + 22 * CH)) $((6 * CW)) "$CH")"
echo "e2e-xterm: [Send] button average colour $r $g $b"
[ "$g" -gt 80 ] && [ "$g" -gt $((r + 40)) ] && [ "$g" -gt $((b + 40)) ] || fail "the [Send] button is not green in the screenshot ($r $g $b)"
row=$(( $(line_of "● bob") - 1 ))
# The contact row with the bright background of the selection or not: the name's text pixels are green.
read -r r g b <<<"$(average "$X" $((Y + row * CH)) $((8 * CW)) "$CH")"
echo "e2e-xterm: bob's contact row average colour $r $g $b"
[ "$g" -gt $((r + 10)) ] && [ "$g" -gt $((b + 10)) ] || fail "online bob is not drawn green in the screenshot ($r $g $b)"
read -r r g b <<<"$(average $((X + 30 * CW)) $((Y + 12 * CH)) $((20 * CW)) "$CH")"
[ "$r" -lt 60 ] && [ "$g" -lt 60 ] && [ "$b" -lt 60 ] || fail "the empty dialog area is not dark ($r $g $b)"

# Quit (the unsent-message check has nothing to warn about): the mouse mode is restored.
xdotool key ctrl+c
wait_for "[sbchat exited: 0]"
[ "$(T display -p -t alice '#{mouse_any_flag}')" = 0 ] || fail "mouse mode still on after sbchat exited"
[ "$(T display -p -t alice '#{mouse_sgr_flag}')" = 0 ] || fail "SGR mouse mode still on after sbchat exited"
echo "e2e-xterm: PASS"
exit 0
