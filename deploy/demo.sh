#!/bin/sh
# The main job, on one host: a model (MODEL=path, or a synthetic Qwen2.5-0.5B
# made by `apr mkmodel` with the vocabulary of the shared fixture), inspected,
# a prompt tokenized, and a greedy completion streamed from the CPU engine.
# (The apr-coord/apr-worker pipeline replaces the last step when it lands.)
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
"$apr" inspect "$MODEL" | head -n 24
PROMPT=${PROMPT:-"<|im_start|>user
Write a haiku about GPUs.<|im_end|>
<|im_start|>assistant
"}
echo "== apr tokenize"
"$apr" tokenize -m "$MODEL" "$PROMPT"
echo "== apr eval (streamed greedy completion; synthetic weights print gibberish)"
"$apr" eval -m "$MODEL" -p "$PROMPT" -n "${N:-32}"
