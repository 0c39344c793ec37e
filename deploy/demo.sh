#!/bin/sh
# The main job, on one host: a model (MODEL=path, or a synthetic Qwen2.5-0.5B
# made by `apr mkmodel` with the vocabulary of the shared fixture) served by
# apr-coord with a CPU worker (WORKERS=cuda,cpu where there is a GPU), and a
# chat prompt's completion streamed back by `apr generate`.
set -e
BUILD=${BUILD:-build}
SHARED=${SHARED:-../shared}
apr="$BUILD/apr"
if [ -z "$MODEL" ]; then
    MODEL="$BUILD/demo-qwen2.5-0.5b.gguf"
    if [ ! -f "$MODEL" ]; then
        vocab="$SHARED/models/tiny-qwen2-a.gguf"
        [ -f "$vocab" ] || { echo "demo: no MODEL given and $vocab is absent" >&2; exit 1; }
        echo "== apr mkmodel --shape qwen2.5-0.5b (synthetic weights, real vocabulary)"
        "$apr" mkmodel --shape qwen2.5-0.5b --vocab-from "$vocab" -o "$MODEL"
    fi
fi
echo "== apr inspect $MODEL (summary)"
"$apr" inspect "$MODEL" | head -n 12

dir=$(mktemp -d /tmp/apr-demo.XXXXXX)
endpoint="ipc://$dir/apr.sock"
echo "== apr-coord -m $MODEL --listen $endpoint --workers ${WORKERS:-cpu} --ctx 1024"
"$BUILD/apr-coord" -m "$MODEL" --listen "$endpoint" --workers "${WORKERS:-cpu}" --ctx 1024 --max-batch 4 \
    2>"$dir/coord.log" &
coord=$!
trap 'kill $coord 2>/dev/null; wait $coord 2>/dev/null; rm -rf "$dir"' EXIT INT TERM
tries=0
until "$apr" status --endpoint "$endpoint" --timeout 1 >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ $tries -ge 120 ] || ! kill -0 $coord 2>/dev/null; then
        echo "demo: apr-coord did not become ready:" >&2
        cat "$dir/coord.log" >&2
        exit 1
    fi
    sleep 0.5
done
"$apr" status --endpoint "$endpoint"
PROMPT=${PROMPT:-"<|im_start|>user
Write a haiku about GPUs.<|im_end|>
<|im_start|>assistant
"}
echo "== apr generate (streamed; synthetic weights print gibberish)"
"$apr" generate --endpoint "$endpoint" -p "$PROMPT" -n "${N:-32}" --temperature 0.7 --seed 42
echo
