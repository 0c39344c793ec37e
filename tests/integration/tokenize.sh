#!/bin/sh
# apr tokenize against reference ids: cases of ../shared/tokenizer/{qwen2,llama-spm}
# (Hugging Face's ids), the golden prompts (llama.cpp's prompt_tokens, special
# tokens parsed), text given as an argument, with -f FILE and with -f -; then
# bad input (invalid UTF-8, missing or damaged model, bad usage): exit 1 (2 for
# usage) with exactly one error line, never a crash.
APR_BIN=${APR_BIN:-build}
SHARED=${SHARED:-../shared}
APR="$APR_BIN/apr"
if [ ! -d "$SHARED/models" ]; then
    echo "skip: $SHARED/models absent (set SHARED): tokenize integration test not run"
    exit 0
fi
[ -x "$APR" ] || { echo "FAIL: $APR not built"; exit 1; }
command -v python3 >/dev/null || { echo "FAIL: python3 is needed to read the reference files"; exit 1; }

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM
fails=0
checks=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

QWEN="$SHARED/models/tiny-qwen2-a.gguf"
SPM="$SHARED/models/ggml-vocab-llama-spm.gguf"

# Writes case N of a vocab test file to $tmp/in and its ids as JSON to $tmp/want.
ref_case() { # name, N
    python3 - "$SHARED/tokenizer/$1" "$2" "$tmp" <<'EOF'
import json, sys
base, n, tmp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cases = open(base + ".inp", "rb").read().split(b"\n__ggml_vocab_test__\n")
ids = open(base + ".out", "rb").read().split(b"\n")
open(tmp + "/in", "wb").write(cases[n])
open(tmp + "/want", "w").write(json.dumps([int(x) for x in ids[n].split()]) + "\n")
EOF
}

same_ids() { # what: compares $tmp/out with $tmp/want as JSON
    checks=$((checks + 1))
    python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1])) != json.load(open(sys.argv[2])))' \
        "$tmp/out" "$tmp/want" 2>/dev/null || fail "$1: got $(cat "$tmp/out") want $(cat "$tmp/want")"
}

# Case 0 'ied 4 ½ months', 11 'Hello world', 18 ' this is 🦙.cpp', 20 Bulgarian,
# 22 emoji with joiners, 28 indented lines, 32 mixed with CJK, 42 digits,
# 45 whitespace torture.
for n in 0 11 18 20 22 28 32 42 45; do
    ref_case qwen2 $n
    "$APR" tokenize -m "$QWEN" -f "$tmp/in" >"$tmp/out" 2>"$tmp/err" || fail "qwen2 case $n: exit $?: $(cat "$tmp/err")"
    same_ids "qwen2 case $n (-f FILE)"
    ref_case llama-spm $n
    "$APR" tokenize -m "$SPM" -f - <"$tmp/in" >"$tmp/out" 2>"$tmp/err" || fail "spm case $n: exit $?: $(cat "$tmp/err")"
    same_ids "llama-spm case $n (-f -)"
done

# A case given as an argument (no trailing newline is added by the shell).
ref_case qwen2 16
"$APR" tokenize -m "$QWEN" "$(cat "$tmp/in")" >"$tmp/out" 2>"$tmp/err" || fail "argument text: exit $?"
same_ids "qwen2 case 16 (argument)"

# Golden prompts: special tokens parsed, BOS as the record says.
python3 - "$SHARED/golden" "$tmp" <<'EOF'
import glob, json, sys
i = 0
for f in sorted(glob.glob(sys.argv[1] + "/*.jsonl")):
    for line in open(f, encoding="utf-8"):
        r = json.loads(line)
        open("%s/g%d.txt" % (sys.argv[2], i), "wb").write(r["prompt"].encode("utf-8"))
        open("%s/g%d.want" % (sys.argv[2], i), "w").write(json.dumps(r["prompt_tokens"]) + "\n")
        open("%s/g%d.args" % (sys.argv[2], i), "w").write(
            r["model"] + (" --bos" if r["add_bos"] else "") + "\n")
        i += 1
EOF
for args in "$tmp"/g*.args; do
    g=${args%.args}
    read -r model bos <"$args"
    # shellcheck disable=SC2086
    "$APR" tokenize -m "$SHARED/models/$model" $bos -f "$g.txt" >"$tmp/out" 2>"$tmp/err" ||
        fail "golden $(basename "$g") ($model): exit $?: $(cat "$tmp/err")"
    cp "$g.want" "$tmp/want"
    same_ids "golden $(basename "$g") ($model)"
done

# --no-special keeps <|im_end|> as text; --bos; --pieces is JSON with pieces.
"$APR" tokenize -m "$QWEN" "<|im_end|>" >"$tmp/out" && echo '[151645]' >"$tmp/want" && same_ids "special on"
"$APR" tokenize -m "$QWEN" --no-special "<|im_end|>" >"$tmp/out"
grep -q 151645 "$tmp/out" && fail "--no-special still gives 151645: $(cat "$tmp/out")"
"$APR" tokenize -m "$SHARED/models/stories260K.gguf" --bos "Once upon a time" >"$tmp/out"
echo '[1, 403, 407, 261, 378]' >"$tmp/want" && same_ids "stories260K --bos"
"$APR" tokenize -m "$QWEN" --pieces 'say "hi"\' >"$tmp/out" || fail "--pieces: exit $?"
checks=$((checks + 1))
python3 -c '
import json, sys
p = json.load(open(sys.argv[1]))
sys.exit("".join(x[1] for x in p) != "say \"hi\"\\")' "$tmp/out" || fail "--pieces output: $(cat "$tmp/out")"

# Bad input: exit status and exactly one line on stderr.
bad() { # expected status, what, command...
    want=$1; what=$2; shift 2
    checks=$((checks + 1))
    "$@" >"$tmp/out" 2>"$tmp/err"
    st=$?
    [ "$st" -eq "$want" ] || fail "$what: exit $st, want $want"
    [ "$(wc -l <"$tmp/err")" -eq 1 ] || fail "$what: stderr is not one line: $(cat "$tmp/err")"
    [ -s "$tmp/out" ] && fail "$what: printed output: $(cat "$tmp/out")"
}
printf 'abc\377def' >"$tmp/bad"
bad 1 "invalid UTF-8 in a file" "$APR" tokenize -m "$QWEN" -f "$tmp/bad"
bad 1 "invalid UTF-8 argument" "$APR" tokenize -m "$QWEN" "$(printf 'x\303')"
bad 1 "surrogate on stdin" sh -c "printf '\355\240\200' | '$APR' tokenize -m '$SPM' -f -"
bad 1 "missing model" "$APR" tokenize -m "$tmp/no-such.gguf" hello
bad 1 "not a GGUF" "$APR" tokenize -m "$tmp/bad" hello
head -c 100000 "$QWEN" >"$tmp/trunc.gguf"
bad 1 "truncated model" "$APR" tokenize -m "$tmp/trunc.gguf" hello
bad 1 "missing input file" "$APR" tokenize -m "$QWEN" -f "$tmp/none.txt"
"$APR" tokenize -m "$QWEN" -f "$tmp/bad" 2>&1 >/dev/null | grep -q "invalid UTF-8" || fail "no 'invalid UTF-8' in the message"
checks=$((checks + 1))
"$APR" tokenize hello >/dev/null 2>&1
[ $? -eq 2 ] || fail "no model: want exit 2 (usage)"
"$APR" tokenize --help >"$tmp/out" 2>&1 && grep -q "usage: apr tokenize" "$tmp/out" || fail "--help"

echo "tokenize: $((checks - fails))/$checks checks passed"
[ "$fails" -eq 0 ]
