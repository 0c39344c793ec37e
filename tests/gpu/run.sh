#!/bin/sh
# The device harness: ONE command on the GPU machine, from the repo root. It
# builds nothing: prepare here with `make && make gpu && sh tests/gpu/bundle.sh`,
# then run `sh tests/gpu/run.sh` there with carry [".carry"].
#
#   1. kernel tests (each kernel against its CPU reference) and the
#      device-to-device copy bandwidth (the roofline's denominator)
#   2. synthetic models made there by apr mkmodel
#   3. parity cuda vs cpu: stories260K (identical greedy tokens), qwen2-tiny,
#      qwen2.5-0.5b (short prompt and a 100-token prefill), qwen2.5-1.5b (also
#      without PDL): argmax agreement over teacher-forced positions and max
#      |dlogit|, beside the CPU-vs-CPU floor of the synthetic models
#   4. benchmarks through apr eval: decode tok/s at batch 1 (128 tokens) for
#      0.5B, 1.5B, 7B (also without PDL, and the 1.5B without graphs); prefill
#      of a 512-token prompt on the 1.5B; each beside llama.cpp's figure on the
#      same H100 and the bandwidth roofline; the per-kernel-class profile
# The table comes last. Logs go to $OUT (or /tmp/apr-gpu) as well.
# PARTS="kernels parity bench" selects parts; SIZES="0.5b 1.5b 7b" the bench models.
set -u
C=${CARRY:-.carry}
export LD_LIBRARY_PATH="$PWD/$C/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUDA_MODULE_LOADING=EAGER
APR="$C/bin/apr"
LOG=${OUT:-/tmp/apr-gpu}
M=${MODELS:-/tmp/apr-models}
PARTS=${PARTS:-kernels parity bench}
SIZES=${SIZES:-0.5b 1.5b 7b}
mkdir -p "$LOG" "$M"
TABLE="$LOG/table.txt"
: >"$TABLE"
fails=0
has() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
say() { echo "== $*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null |
    sed 's/^/device: /' | tee "$LOG/device.txt"

# ---------------------------------------------------------------- 1. kernels
BW=3017
if has kernels; then
    say "kernel tests"
    "$C/bin/test_kernels_cuda" | tee "$LOG/kernels.txt" || fails=$((fails + 1))
    BW=$("$C/bin/test_kernels_cuda" --bandwidth | tee -a "$LOG/kernels.txt" | awk '/d2d copy/ {print $3}')
fi
echo "d2d copy bandwidth: $BW GB/s (DESIGN.md's H100: 3017)"

# ----------------------------------------------------------------- 2. models
mk() { # shape -> path
    p="$M/$1.gguf"
    [ -f "$p" ] || "$APR" mkmodel --shape "$1" --vocab-from "$C/models/vocab-qwen2.gguf" -o "$p" >&2 || return 1
    echo "$p"
}

# eval BACKEND MODEL NAME ARGS...: JSON to $LOG/NAME.json, logits to NAME.f32, stderr to NAME.err
# (sh functions share one scope: each uses its own prefix for its variables)
ev() {
    ev_b=$1 ev_m=$2 ev_n=$3
    shift 3
    "$APR" eval -m "$ev_m" --backend "$ev_b" --json --logits-out "$LOG/$ev_n.f32" "$@" >"$LOG/$ev_n.json" 2>"$LOG/$ev_n.err"
    ev_r=$?
    [ $ev_r -eq 0 ] || { echo "apr eval $ev_b $ev_n failed ($ev_r):"; tail -3 "$LOG/$ev_n.err"; }
    return $ev_r
}
tokens_of() { sed -n 's/.*"token":\([0-9]*\).*/\1/p' "$1" | paste -sd, -; }
nvocab() { "$APR" inspect "$1" | sed -n 's/.*n_vocab \([0-9]*\),.*/\1/p'; }

# parity NAME MODEL N PROMPT-ARGS...: cpu greedy, then cuda teacher-forced on the cpu's tokens
# Random synthetic weights amplify rounding-level differences (8-bit
# activations flip, a flip is a whole quantization step): floor() measures it
# on the CPU alone, by comparing a model with a copy whose norm weights are one
# ulp off. cuda-vs-cpu differences at that level are expected; near-ties may
# flip, so a comparison fails only under 90% argmax agreement.
parity() {
    pa_name=$1 pa_m=$2 pa_n=$3
    shift 3
    ev cpu "$pa_m" "$pa_name-cpu" -n "$pa_n" --ignore-eos "$@" || { fails=$((fails + 1)); return; }
    ev cuda "$pa_m" "$pa_name-cuda" -n "$pa_n" --ignore-eos --force "$(tokens_of "$LOG/$pa_name-cpu.json")" "$@" ||
        { fails=$((fails + 1)); return; }
    pa_line=$(python3 tests/gpu/compare.py "$LOG/$pa_name-cpu.f32" "$LOG/$pa_name-cuda.f32" "$(nvocab "$pa_m")" \
        "$pa_name" 0.9) || fails=$((fails + 1))
    echo "$pa_line"
    echo "parity  $pa_line" >>"$TABLE"
}
floor() { # NAME MODEL N ARGS: needs $LOG/NAME-cpu.* from parity()
    fl_name=$1 fl_m=$2 fl_n=$3
    shift 3
    python3 tests/gpu/perturb.py "$fl_m" "$M/ulp.gguf" norm ulp >/dev/null &&
        ev cpu "$M/ulp.gguf" "$fl_name-cpu-ulp" -n "$fl_n" --ignore-eos \
            --force "$(tokens_of "$LOG/$fl_name-cpu.json")" "$@" || return
    fl_line=$(python3 tests/gpu/compare.py "$LOG/$fl_name-cpu.f32" "$LOG/$fl_name-cpu-ulp.f32" "$(nvocab "$fl_m")" \
        "floor: $fl_name cpu vs cpu with norms 1 ulp off" 0)
    echo "$fl_line"
    echo "parity  $fl_line" >>"$TABLE"
    rm -f "$M/ulp.gguf"
}

# ---------------------------------------------------------------- 3. parity
if has parity; then
    say "parity cuda vs cpu"
    S="$C/models/stories260K.gguf"
    ev cpu "$S" stories-cpu -p "Once upon a time" --bos -n 64 &&
        ev cuda "$S" stories-cuda -p "Once upon a time" --bos -n 64 || fails=$((fails + 1))
    a=$(tokens_of "$LOG/stories-cpu.json")
    b=$(tokens_of "$LOG/stories-cuda.json")
    if [ -n "$a" ] && [ "$a" = "$b" ]; then r="ok stories260K: identical greedy tokens ($(echo "$a" | tr , '\n' | wc -l))"
    else r="FAIL stories260K: greedy tokens differ"; fails=$((fails + 1)); fi
    echo "$r"
    echo "parity  $r" >>"$TABLE"
    line=$(python3 tests/gpu/compare.py "$LOG/stories-cpu.f32" "$LOG/stories-cuda.f32" 512 stories260K-logits)
    echo "$line"
    echo "parity  $line" >>"$TABLE"

    T=$(mk qwen2-tiny) && {
        parity qwen2-tiny "$T" 64 -p "The quick brown fox"
        floor qwen2-tiny "$T" 64 -p "The quick brown fox"
    }
    H=$(mk qwen2.5-0.5b) && {
        parity qwen2.5-0.5b "$H" 32 -p "def fibonacci(n):"
        parity qwen2.5-0.5b-prefill100 "$H" 32 --tokens "$(seq -s, 1000 1099)"
    }
    P=$(mk qwen2.5-1.5b) && {
        parity qwen2.5-1.5b "$P" 32 -p "Write a haiku about GPUs."
        floor qwen2.5-1.5b "$P" 32 -p "Write a haiku about GPUs."
        export APR_CUDA_PDL=0
        parity qwen2.5-1.5b-nopdl "$P" 32 -p "Write a haiku about GPUs."
        unset APR_CUDA_PDL
    }
fi

# ----------------------------------------------------------------- 4. bench
# bytes of weights a decode token reads: every tensor but an untied token_embd
# (of which it reads one row)
wbytes() {
    "$APR" inspect "$1" | awk '
        / output\.weight / {untied = 1}
        $1 ~ /\.weight$|\.bias$/ && NF >= 4 {b[$1] = $NF; tot += $NF}
        END {if (untied) tot -= b["token_embd.weight"]; print tot}'
}
rate() { sed -n "s/.*$1: [0-9]* tokens, [0-9.]* ms, \([0-9.]*\) tok\/s.*/\1/p" "$2" | tail -1; }
row() { # workload apr llama bytes
    awk -v w="$1" -v a="$2" -v l="$3" -v by="$4" -v bw="$BW" 'BEGIN {
        if (by > 0) { roof = bw * 1e9 / by; pr = sprintf("%6.0f  %5.1f%%", roof, 100 * a / roof) } else pr = "     -       -"
        printf "%-34s %9.1f %9s %6.2fx  %s\n", w, a, l, (l > 0 ? a / l : 0), pr }' >>"$TABLE"
}
if has bench; then
    say "benchmarks"
    for s in $SIZES; do
        m=$(mk "qwen2.5-$s") || { fails=$((fails + 1)); continue; }
        case $s in 0.5b) ref=854;; 1.5b) ref=532;; 3b) ref=379;; 7b) ref=264;; 32b) ref=72.7;; *) ref=0;; esac
        by=$(wbytes "$m")
        ev cuda "$m" "bench-$s" -p "Once upon a time" -n 128 --ignore-eos || { fails=$((fails + 1)); continue; }
        d=$(rate decode "$LOG/bench-$s.err")
        echo "qwen2.5-$s decode: $d tok/s ($(awk -v b="$by" 'BEGIN {printf "%.3f", b / 1e9}') GB of weights per token)"
        row "qwen2.5-$s decode b=1 (tok/s)" "$d" "$ref" "$by"
        APR_CUDA_PDL=0 ev cuda "$m" "bench-$s-nopdl" -p "Once upon a time" -n 128 --ignore-eos &&
            row "qwen2.5-$s decode b=1, no PDL" "$(rate decode "$LOG/bench-$s-nopdl.err")" "$ref" "$by"
        if [ "$s" = 1.5b ]; then
            APR_CUDA_GRAPHS=0 ev cuda "$m" "bench-$s-nograph" -p "Once upon a time" -n 128 --ignore-eos &&
                row "qwen2.5-$s decode b=1, no graphs" "$(rate decode "$LOG/bench-$s-nograph.err")" "$ref" "$by"
            best=0
            for i in 1 2 3; do
                ev cuda "$m" "prefill-$s" --tokens "$(seq -s, 1000 1511)" -n 1 || break
                p=$(rate prefill "$LOG/prefill-$s.err")
                best=$(awk -v a="$p" -v b="$best" 'BEGIN {print (a > b ? a : b)}')
            done
            echo "qwen2.5-$s prefill 512: $best tok/s (best of 3)"
            row "qwen2.5-$s prefill 512 (tok/s)" "$best" 24700 0
            APR_CUDA_PDL=0 ev cuda "$m" "prefill-$s-nopdl" --tokens "$(seq -s, 1000 1511)" -n 1 &&
                row "qwen2.5-$s prefill 512, no PDL" "$(rate prefill "$LOG/prefill-$s-nopdl.err")" 24700 0
            # where the time goes: events between the kernels of plain launches
            APR_CUDA_PROFILE=1 ev cuda "$m" "profile-$s" --tokens "$(seq -s, 1000 1511)" -n 33 --ignore-eos &&
                grep -A12 '^cuda profile' "$LOG/profile-$s.err" | tee "$LOG/profile.txt"
        fi
    done
fi

echo
echo "== table ($(cut -d, -f1 "$LOG/device.txt" | sed 's/device: //'), d2d copy $BW GB/s)"
grep '^parity' "$TABLE" | sed 's/^parity  //'
printf "%-34s %9s %9s %7s  %6s  %6s\n" workload apr llama.cpp ratio roofln "%roof"
grep -v '^parity' "$TABLE"
[ -f "$LOG/profile.txt" ] && { echo "per kernel class (plain launches, 1.5B, 512-token prompt):"; cat "$LOG/profile.txt"; }
echo "failures: $fails"
[ "$fails" -eq 0 ]
