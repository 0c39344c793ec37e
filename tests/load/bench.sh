#!/bin/sh
# apr bench against stories260K: a short run prints the report's table
# (decode mean +- std, CV, TTFT, prefill, runs), the baseline's row and the
# bars; --json keeps every run; --check turns a failed bar into status 3.
# The figures themselves are not judged: tests never assert on speed.
. "$(dirname "$0")/common.sh"
start_coord

echo "5 runs, a baseline, --json"
"$APR" bench --endpoint "$ENDPOINT" --runs 5 --warmup 1 -n 32 --baseline llama.cpp=100 \
    --json "$TMP/bench.json" >"$TMP/out" 2>"$TMP/err"
st=$?
check "exit status $st ($(cat "$TMP/err"))" [ $st -eq 0 ]
check "table header" grep -q "^system  *decode tok/s  *CV  *TTFT ms  *prefill tok/s  *runs$" "$TMP/out"
check "apr row with 5 runs" grep -Eq "^apr  *[0-9.]+ \+- [0-9.]+  *[0-9.]+%  *[0-9.]+  *[0-9.]+  *5$" "$TMP/out"
check "baseline row with the speed-up" grep -Eq "^llama.cpp  *100.0 .*apr [+-][0-9.]+ %" "$TMP/out"
check "inter-token p50/p99" grep -q "inter-token latency: p50 .* ms, p99 .* ms" "$TMP/out"
check "runs bar fails at 5 of 30" grep -Eq "^runs >= 30  *5  *FAIL$" "$TMP/out"
check "baseline bar" grep -Eq "^decode >= \+25 % vs llama.cpp .* (PASS|FAIL)$" "$TMP/out"
check "--json has 6 runs with raw figures" python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
runs = d["runs"]
assert len(runs) == 6 and runs[0]["warmup"] and not any(r["warmup"] for r in runs[1:]), runs
assert all(r["completion_tokens"] >= 2 and r["decode_tok_s"] > 0 and r["ttft_ms"] > 0 for r in runs)
assert all(len(r["itl_ms"]) == r["completion_tokens"] - 1 for r in runs)
assert d["summary"]["runs"] == 5 and d["baselines"][0]["name"] == "llama.cpp"
' "$TMP/bench.json"
[ $fails -eq 0 ] && sed -n "1,8p" "$TMP/out" # the table only: at 5 runs the runs bar fails, as it should

echo "--prompt-tokens, --check"
"$APR" bench --endpoint "$ENDPOINT" --runs 2 --warmup 0 -n 8 --prompt-tokens 40 --check \
    >"$TMP/out" 2>"$TMP/err"
st=$?
check "--check with a failing bar: exit status $st, want 3" [ $st -eq 3 ]
check "the prompt is 40 tokens" grep -q "prompt 40 tokens" "$TMP/out"
"$APR" bench --endpoint "$ENDPOINT" --runs 2 --warmup 0 -n 8 --bars runs=2,cv=1000,min=0 --check \
    >"$TMP/out" 2>"$TMP/err"
st=$?
check "--check with bars met: exit status $st ($(cat "$TMP/err"))" [ $st -eq 0 ]
stop_coord

echo "usage errors and no server"
for args in "--runs 0" "--warmup -1" "--baseline llama.cpp" "--baseline x=0" "--bars cv" \
    "--bars speed=3" "-p hi --prompt-tokens 4" "--prompt-tokens 0" "-n 0" "--bogus"; do
    "$APR" bench --endpoint "$ENDPOINT" $args >"$TMP/out" 2>"$TMP/err"
    st=$?
    check "bench $args: exit status $st, want 2" [ $st -eq 2 ]
    check "bench $args: one line on stderr" [ "$(wc -l <"$TMP/err")" -eq 1 ]
done
"$APR" bench --endpoint "$ENDPOINT" --runs 1 --timeout 0.5 >"$TMP/out" 2>"$TMP/err"
st=$?
check "no server: exit status $st, want 1" [ $st -eq 1 ]
check "no server: the endpoint is named" grep -q "no reply from $ENDPOINT" "$TMP/err"
check "bench --help" sh -c '"$0" bench --help | grep -q "^usage: apr bench"' "$APR"
check "apr --help lists bench" sh -c '"$0" --help | grep -q "^  bench "' "$APR"
finish
