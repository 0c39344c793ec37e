#!/bin/sh
# The Python example client (example_client.py, Debian's python3-zmq and
# python3-msgpack) against a real server: its text equals apr generate's for
# the same greedy request, and an error reply gives exit status 1.
. "$(dirname "$0")/common.sh"
CLIENT="$(dirname "$0")/example_client.py"
start_coord

echo "example client vs apr generate"
/usr/bin/python3 "$CLIENT" "$ENDPOINT" "Once upon a time" 40 >"$TMP/py" 2>"$TMP/err"
st=$?
check "exit status $st ($(cat "$TMP/err"))" [ $st -eq 0 ]
check "timings on stderr" grep -q "^40 tokens (length), ttft .* ms, decode .* tok/s$" "$TMP/err"
"$APR" generate --endpoint "$ENDPOINT" -p "Once upon a time" -n 40 --temperature 0 >"$TMP/apr" 2>/dev/null
check "same text as apr generate" cmp -s "$TMP/py" "$TMP/apr"
check "some text" [ -s "$TMP/py" ]
/usr/bin/python3 "$CLIENT" "$ENDPOINT" "Once upon a time" 0 >"$TMP/py" 2>"$TMP/err"
st=$?
check "max_tokens 0: exit status $st, want 1" [ $st -eq 1 ]
check "max_tokens 0: the error code" grep -q "^error invalid_param: " "$TMP/err"
check "under 50 lines" [ "$(wc -l <"$CLIENT")" -lt 50 ]
stop_coord
finish
