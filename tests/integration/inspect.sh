#!/bin/sh
# apr inspect on the shared fixtures (exit 0, key facts shown), on damaged
# files (exit 1, exactly one line on stderr, no crash), and --json output
# that parses.
APR_BIN=${APR_BIN:-build}
SHARED=${SHARED:-../shared}
APR="$APR_BIN/apr"
M="$SHARED/models"
if [ ! -d "$M" ]; then
    echo "skip: $M absent (set SHARED): inspect integration test not run"
    exit 0
fi
[ -x "$APR" ] || { echo "FAIL: $APR not built"; exit 1; }

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# Runs apr inspect; the output goes to $tmp/out, stderr to $tmp/err.
inspect() { "$APR" inspect "$@" >"$tmp/out" 2>"$tmp/err"; }

expect_text() { # file, pattern...
    f=$1; shift
    for p in "$@"; do
        grep -q -- "$p" "$tmp/out" || fail "$(basename "$f"): output lacks '$p'"
    done
}

f="$M/tiny-qwen2-a.gguf"
inspect "$f" || fail "tiny-qwen2-a: exit $?"
expect_text "$f" 'architecture: "qwen2"' 'n_embd 256' 'n_layer 4' 'n_head 2, n_head_kv 1' \
    '151936 tokens, 151387 merges' 'chat template: yes' 'token_embd.weight  *Q6_K' \
    'blk.2.attn_v.weight  *Q6_K' 'blk.0.attn_q.bias  *F32' 'totals: 50 tensors'

f="$M/tiny-qwen2-b.gguf"
inspect "$f" || fail "tiny-qwen2-b: exit $?"
expect_text "$f" 'token_embd.weight  *Q8_0' 'blk.0.attn_q.weight  *Q5_0' 'n_embd 192'

f="$M/stories260K.gguf"
inspect "$f" || fail "stories260K: exit $?"
expect_text "$f" 'architecture: "llama"' 'rope normal, rope_dim 8' 'n_vocab 512' 'output.weight  *F32'

f="$M/ggml-vocab-llama-spm.gguf"
inspect "$f" || fail "llama-spm vocab: exit $?"
expect_text "$f" '32000 tokens' 'totals: 0 tensors'

for f in "$M"/*.gguf; do
    inspect --json "$f" || fail "$(basename "$f") --json: exit $?"
    python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["version"] == 3 and isinstance(d["tensors"], list)' \
        <"$tmp/out" || fail "$(basename "$f") --json: output is not the expected JSON"
done
inspect --json "$M/tiny-qwen2-a.gguf"
python3 -c '
import json, sys
d = json.load(sys.stdin)
assert d["architecture"] == "qwen2" and d["hparams"]["n_head_kv"] == 1, d["hparams"]
assert d["tokenizer"]["tokens"] == 151936 and d["tokenizer"]["merges"] == 151387
assert d["metadata"]["tokenizer.chat_template"].startswith("{%- if tools %}")
t = {x["name"]: x for x in d["tensors"]}
assert t["token_embd.weight"]["type"] == "Q6_K" and t["token_embd.weight"]["shape"] == [256, 151936]
assert d["totals"]["tensors"] == 50
' <"$tmp/out" || fail "tiny-qwen2-a --json: facts wrong"

# Damaged files: exit status 1, one line on stderr naming the file.
damaged() { # name, file
    "$APR" inspect "$2" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [ "$rc" -eq 1 ] || fail "$1: exit status $rc, expected 1"
    n=$(wc -l <"$tmp/err")
    [ "$n" -eq 1 ] || fail "$1: $n lines on stderr, expected 1"
    grep -q "^apr inspect: $2: " "$tmp/err" || fail "$1: stderr is '$(cat "$tmp/err")'"
}
head -c 3000000 "$M/tiny-qwen2-a.gguf" >"$tmp/truncated.gguf"
damaged truncated-metadata "$tmp/truncated.gguf"
head -c 20000000 "$M/tiny-qwen2-a.gguf" >"$tmp/truncated2.gguf"
damaged truncated-data "$tmp/truncated2.gguf"
grep -q "past end of file" "$tmp/err" || fail "truncated-data: message '$(cat "$tmp/err")'"
head -c 100000 /dev/urandom >"$tmp/garbage.gguf"
damaged garbage "$tmp/garbage.gguf"
printf 'GGUF\003\000\000\000' >"$tmp/header-only.gguf"
damaged header-only "$tmp/header-only.gguf"
: >"$tmp/empty.gguf"
damaged empty "$tmp/empty.gguf"
damaged missing "$tmp/does-not-exist.gguf"
damaged directory "$tmp"

"$APR" inspect --help >"$tmp/out" 2>&1 || fail "--help: exit $?"
grep -q "usage: apr inspect" "$tmp/out" || fail "--help: no usage"
"$APR" inspect >/dev/null 2>&1
[ $? -eq 2 ] || fail "no arguments: expected exit 2"

if [ "$fails" -ne 0 ]; then
    echo "inspect.sh: $fails failure(s)"
    exit 1
fi
echo "inspect.sh: all checks passed"
