#!/bin/sh
# The apr client commands without a server: --help of generate, chat and
# status; bad usage exits 2 with one line on stderr and nothing on stdout;
# bad input exits 1; and with nothing listening, each command gives up after
# --timeout with exit 1 and a message that names the endpoint. Streaming is
# tested end to end against apr-coord elsewhere.
APR_BIN=${APR_BIN:-build}
APR="$APR_BIN/apr"
[ -x "$APR" ] || { echo "FAIL: $APR not built"; exit 1; }
unset APR_ENDPOINT

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM
fails=0
checks=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# A loopback port nobody listens on: one the kernel just handed out and took back.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null)
[ -n "$port" ] || port=1
NOBODY="tcp://127.0.0.1:$port"

for cmd in generate chat status; do
    checks=$((checks + 1))
    "$APR" $cmd --help >"$tmp/out" 2>"$tmp/err" || fail "$cmd --help: exit $?"
    grep -q "^usage: apr $cmd" "$tmp/out" || fail "$cmd --help: no usage line on stdout"
    [ -s "$tmp/err" ] && fail "$cmd --help: wrote to stderr: $(cat "$tmp/err")"
    checks=$((checks + 1))
    "$APR" --help | grep -q "^  $cmd " || fail "apr --help does not list $cmd"
done
checks=$((checks + 1))
"$APR" chat --help | grep -q "/reset" || fail "chat --help does not mention /reset"

# expect STATUS WHAT COMMAND...: that exit status, one line on stderr, no stdout.
expect() {
    want=$1; what=$2; shift 2
    checks=$((checks + 1))
    "$@" >"$tmp/out" 2>"$tmp/err" </dev/null
    st=$?
    [ "$st" -eq "$want" ] || fail "$what: exit $st, want $want ($(cat "$tmp/err"))"
    [ "$(wc -l <"$tmp/err")" -eq 1 ] || fail "$what: stderr is not one line: $(cat "$tmp/err")"
    [ -s "$tmp/out" ] && fail "$what: printed on stdout: $(cat "$tmp/out")"
}

# Usage errors: checked before anything is sent, so no server is needed.
E="--endpoint $NOBODY"
expect 2 "generate without a prompt" "$APR" generate $E
expect 2 "generate with two prompts" "$APR" generate $E -p hi --tokens 1,2
expect 2 "unknown flag" "$APR" generate $E -p hi --bogus
expect 2 "flag without its value" "$APR" generate $E -p hi --top-k
expect 2 "-p without its value" "$APR" generate $E -p
expect 2 "-n 0" "$APR" generate $E -p hi -n 0
expect 2 "-n 1.5" "$APR" generate $E -p hi -n 1.5
expect 2 "--top-p 0" "$APR" generate $E -p hi --top-p 0
expect 2 "--top-p 1.5" "$APR" generate $E -p hi --top-p 1.5
expect 2 "--temperature abc" "$APR" generate $E -p hi --temperature abc
expect 2 "--temperature nan" "$APR" generate $E -p hi --temperature nan
expect 2 "--min-p 2" "$APR" generate $E -p hi --min-p 2
expect 2 "--repeat-penalty 0" "$APR" generate $E -p hi --repeat-penalty 0
expect 2 "--repeat-last-n -2" "$APR" generate $E -p hi --repeat-last-n -2
# apr eval's candidates a position: 1..5
expect 2 "eval --cands 0" "$APR" eval -m none.gguf -p hi --cands 0
expect 2 "eval --cands 6" "$APR" eval -m none.gguf -p hi --cands 6
expect 2 "eval --cands two" "$APR" eval -m none.gguf -p hi --cands two
expect 2 "--presence-penalty 3" "$APR" generate $E -p hi --presence-penalty 3
expect 2 "--frequency-penalty -3" "$APR" generate $E -p hi --frequency-penalty -3
expect 2 "--seed -2" "$APR" generate $E -p hi --seed -2
expect 2 "--seed past 2^64" "$APR" generate $E -p hi --seed 18446744073709551616
expect 2 "empty --stop" "$APR" generate $E -p hi --stop ""
expect 2 "--tokens 1,,2" "$APR" generate $E --tokens 1,,2
expect 2 "--tokens -1" "$APR" generate $E --tokens -1
expect 2 "--timeout -1" "$APR" generate $E -p hi --timeout -1
expect 2 "--timeout 5s" "$APR" generate $E -p hi --timeout 5s
expect 2 "http endpoint" "$APR" generate --endpoint http://127.0.0.1:5555 -p hi
expect 2 "endpoint without a port" "$APR" generate --endpoint tcp://127.0.0.1 -p hi
expect 2 "port 70000" "$APR" status --endpoint tcp://127.0.0.1:70000
expect 2 "empty ipc path" "$APR" status --endpoint ipc://
expect 2 "bad APR_ENDPOINT" env APR_ENDPOINT=localhost:5555 "$APR" status
expect 2 "chat --top-k -1" "$APR" chat $E --top-k -1
expect 2 "chat unknown flag" "$APR" chat $E --json
expect 2 "status unknown flag" "$APR" status $E -p hi
expect 2 "status --timeout x" "$APR" status $E --timeout x
"$APR" generate $E -p hi --top-p 2 2>&1 | grep -q -- "--top-p" || fail "the message does not name --top-p"

# Bad input: exit 1.
expect 1 "invalid UTF-8 prompt" "$APR" generate $E -p "$(printf 'x\377')"
expect 1 "missing prompt file" "$APR" generate $E -f "$tmp/none.txt"
head -c 1048577 /dev/zero | tr '\0' a >"$tmp/big"
expect 1 "prompt over 1 MiB" "$APR" generate $E -f "$tmp/big"

# Nothing listening: exit 1 after the timeout, naming the endpoint.
expect 1 "status, no server" "$APR" status --endpoint "$NOBODY" --timeout 1
grep -q "$NOBODY" "$tmp/err" && grep -q "apr-coord" "$tmp/err" || fail "status: unclear message: $(cat "$tmp/err")"
expect 1 "generate, no server" "$APR" generate --endpoint "$NOBODY" --timeout 1 -p hi
grep -q "$NOBODY" "$tmp/err" && grep -q "apr-coord" "$tmp/err" || fail "generate: unclear message: $(cat "$tmp/err")"
expect 1 "generate --json, no server" env APR_ENDPOINT="$NOBODY" "$APR" generate --timeout 0.5 --json --tokens 1,2
grep -q "$NOBODY" "$tmp/err" || fail "APR_ENDPOINT is not used: $(cat "$tmp/err")"
checks=$((checks + 1))
echo hello | "$APR" chat --endpoint "$NOBODY" --timeout 0.5 >"$tmp/out" 2>"$tmp/err"
st=$?
[ "$st" -eq 1 ] || fail "chat, no server: exit $st, want 1"
grep -q "$NOBODY" "$tmp/err" || fail "chat: unclear message: $(cat "$tmp/err")"
# A chat that sends nothing needs no server: /reset and end of input.
checks=$((checks + 1))
printf '/reset\n\n' | "$APR" chat --endpoint "$NOBODY" --timeout 0.5 >"$tmp/out" 2>"$tmp/err" ||
    fail "chat with nothing to send: exit $?: $(cat "$tmp/err")"

echo "client: $((checks - fails))/$checks checks passed"
[ "$fails" -eq 0 ]
