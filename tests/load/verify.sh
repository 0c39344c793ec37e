#!/bin/sh
# apr load against stories260K: 32 concurrent greedy streams, each checked
# against its single-stream reference (--verify) and for lost or repeated
# tokens; an open-loop run; and a server with a tiny queue, whose busy
# replies are counted by code without failing the run.
. "$(dirname "$0")/common.sh"
start_coord

echo "closed loop: 32 streams, 64 requests, --verify"
"$APR" load --endpoint "$ENDPOINT" --concurrency 32 --requests 64 --max-tokens 8-40 --verify \
    --json "$TMP/load.json" >"$TMP/out" 2>"$TMP/err"
st=$?
check "exit status $st ($(cat "$TMP/err"))" [ $st -eq 0 ]
check "64 requests done" grep -q "64 sent: 64 done, 0 failed, 0 busy" "$TMP/out"
check "verify line" grep -q "64 of 64 completed streams equal the single-stream reference" "$TMP/out"
check "no lost tokens" grep -q "no token lost or repeated" "$TMP/out"
check "throughput line" grep -q "requests/s, .* generated tok/s" "$TMP/out"
check "TTFT percentiles" grep -q "TTFT .*p50 .*p90 .*p99" "$TMP/out"
check "inter-token percentiles" grep -q "inter-token .*p50 .*p90 .*p99" "$TMP/out"
check "--json holds 64 done requests" python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert len(d["requests"]) == 64 and all(r["state"] == "done" for r in d["requests"]), d
assert d["verify"] == {"compared": 64, "mismatched": 0, "not_compared": 0}, d["verify"]
assert d["generated_tokens"] == sum(r["tokens"] for r in d["requests"])
' "$TMP/load.json"
[ $fails -eq 0 ] || cat "$TMP/out"

echo "open loop: 40 requests/s over 4 sockets"
"$APR" load --endpoint "$ENDPOINT" --rate 40 --concurrency 4 --requests 24 --prompt-len 4-200 \
    --max-tokens 1-24 --seed 7 >"$TMP/out" 2>"$TMP/err"
st=$?
check "open loop: exit status $st ($(cat "$TMP/err"))" [ $st -eq 0 ]
check "open loop: all done" grep -q "24 sent: 24 done, 0 failed" "$TMP/out"
check "open loop named" grep -q "open loop, 40 requests/s over 4 sockets" "$TMP/out"
stop_coord

echo "busy: 16 streams on a server that runs 2 and queues 2"
start_coord --max-batch 2 --queue 2
"$APR" load --endpoint "$ENDPOINT" --concurrency 16 --requests 48 --max-tokens 24 \
    >"$TMP/out" 2>"$TMP/err"
st=$?
check "busy: exit status $st ($(cat "$TMP/err"))" [ $st -eq 0 ]
check "busy replies counted by code" grep -q "errors  *busy [1-9]" "$TMP/out"
check "busy is not a failure" grep -q "48 sent: .* 0 failed, [1-9][0-9]* busy" "$TMP/out"
stop_coord

echo "usage errors"
for args in "--requests 0" "--concurrency 0 --requests 1" "--requests 1 --prompt-len 9-3" \
    "--requests 1 --max-tokens x" "--requests 1 --chaos kill@1" "--concurrency 2" \
    "--requests 1 --rate 0" "--requests 1 --bogus"; do
    "$APR" load --endpoint tcp://127.0.0.1:9 $args >"$TMP/out" 2>"$TMP/err"
    st=$?
    check "load $args: exit status $st, want 2" [ $st -eq 2 ]
    check "load $args: one line on stderr" [ "$(wc -l <"$TMP/err")" -eq 1 ]
done
check "load --help" sh -c '"$0" load --help | grep -q "^usage: apr load"' "$APR"
check "apr --help lists load" sh -c '"$0" --help | grep -q "^  load "' "$APR"
finish
