#!/bin/sh
# apr load --chaos: the worker is killed twice (kill -9) while 8 streams run;
# every request must complete, equal to its single-stream reference, and the
# report must show both restarts. A kill planned after the load ends is a
# failure the exit status shows.
. "$(dirname "$0")/common.sh"
start_coord

echo "two kills while 8 streams run, --verify"
"$APR" load --endpoint "$ENDPOINT" --concurrency 8 --duration 2.5 --prompts 8 --max-tokens 48-96 \
    --verify --chaos kill-worker@0.6,1.6 --json "$TMP/chaos.json" >"$TMP/out" 2>"$TMP/err"
st=$?
check "exit status $st ($(cat "$TMP/err"))" [ $st -eq 0 ]
check "no request failed" grep -q "sent: [0-9]* done, 0 failed" "$TMP/out"
check "two restarts reported" [ "$(grep -c "ready again after [0-9]* ms" "$TMP/out")" -eq 2 ]
check "in-flight streams and their silence reported" grep -q "requests in flight, longest silence" "$TMP/out"
check "verify line" grep -q "completed streams equal the single-stream reference" "$TMP/out"
check "--json has both kills with restart times" python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert len(d["chaos"]) == 2 and all(c["killed"] and c["restart_ms"] > 0 for c in d["chaos"]), d["chaos"]
assert d["failed"] == 0 and d["verify"]["mismatched"] == 0
' "$TMP/chaos.json"
"$APR" status --endpoint "$ENDPOINT" >"$TMP/status"
check "the server counts 2 restarts" grep -q "^restarts  *2$" "$TMP/status"
[ $fails -eq 0 ] && grep chaos "$TMP/out"
[ $fails -eq 0 ] || cat "$TMP/out"

echo "a kill after the load has ended"
"$APR" load --endpoint "$ENDPOINT" --requests 2 --max-tokens 4 --chaos kill-worker@30 \
    >"$TMP/out" 2>"$TMP/err"
st=$?
check "exit status $st, want 1" [ $st -eq 1 ]
check "the kill is reported as not done" grep -q "FAILED: not done, the load ended" "$TMP/out"
stop_coord
finish
