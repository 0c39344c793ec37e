#!/bin/sh
# Issue 7's figures on the device: the report's table (apr bench through
# apr-coord with the CUDA worker on a synthetic Qwen2.5-1.5B, beside
# llama.cpp's 532 tok/s) and apr load at 1/8/32/64 concurrent streams
# (throughput, TTFT and inter-token percentiles). Builds nothing: prepare
# with `make && make gpu && sh tests/gpu/bundle.sh`, run from the repo root
# with carry [".carry"]. Logs and JSON go to $OUT (or /tmp/apr-load).
set -u
C=$(cd "${CARRY:-.carry}" && pwd) || exit 1
export LD_LIBRARY_PATH="$C/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
B="$C/bin"
O=${OUT:-/tmp/apr-load}
mkdir -p "$O"
M=${MODEL:-/tmp/apr-load-1.5b.gguf}
SHAPE=${SHAPE:-qwen2.5-1.5b}
[ -f "$M" ] || "$B/apr" mkmodel --shape "$SHAPE" --vocab-from "$C/models/vocab-qwen2.gguf" -o "$M" || exit 1
W=${WORKERS:-cuda}
case "$W" in *cuda*) "$B/apr-worker" --devices || exit 1 ;; esac

E="tcp://127.0.0.1:${PORT:-5611}"
"$B/apr-coord" -m "$M" --listen "$E" --workers "$W" --max-batch 64 --ctx 2048 --queue 256 2>"$O/coord.log" &
coord=$!
trap 'kill $coord 2>/dev/null; wait $coord 2>/dev/null' EXIT
i=0
until "$B/apr" status --endpoint "$E" --timeout 1 >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -ge 120 ] || ! kill -0 $coord 2>/dev/null; then
        echo "load.sh: apr-coord did not become ready" >&2
        cat "$O/coord.log" >&2
        exit 1
    fi
    sleep 0.5
done
"$B/apr" status --endpoint "$E"

echo "== apr bench: 1.5B, CUDA worker via apr-coord, 32-token prompt, 128 tokens, 30 runs"
"$B/apr" bench --endpoint "$E" --prompt-tokens 32 -n 128 --runs "${RUNS:-30}" --warmup 3 \
    --baseline llama.cpp=532 --json "$O/bench.json" 2>&1 | tee "$O/bench.txt"

for c in ${CONC:-1 8 32 64}; do
    echo "== apr load: concurrency $c, $((c * 4)) requests, prompts 32-128 tokens, 128 new tokens"
    "$B/apr" load --endpoint "$E" --concurrency $c --requests $((c * 4)) --prompt-len 32-128 \
        --max-tokens 128 --json "$O/load-$c.json" 2>&1 | tee "$O/load-$c.txt"
done
kill $coord
wait $coord 2>/dev/null
tail -n 5 "$O/coord.log"
