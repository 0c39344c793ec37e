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
#   4. benchmarks through apr eval: decode tok/s at batch 1 (128 tokens; each
#      position's best picked on the GPU, as serving reads it for a greedy
#      stream, then its 5 best, and once with whole logits rows to the host) for
#      0.5B, 1.5B, 3B, 7B (also without PDL, unfused (APR_CUDA_FUSE=0: ten kernels
#      a layer), all fused (63), and the 1.5B without graphs); batched decode of 1-64
#      sequences on the 1.5B (test_kernels_cuda --batched); prefill
#      of a 512-token prompt on the 1.5B; 1.5B decode after a 2000-token prompt; each beside llama.cpp's figure on the
#      same H100 and the bandwidth roofline; the per-kernel-class profile, and
#      the 0.5B's and 1.5B's kernel timelines (timeline.sh: CUPTI)
#   5. serving through apr-coord on the 1.5B: decode and TTFT as a client sees
#      them (apr bench) beside apr eval's decode, with the engine's split of a
#      token's time and the pipeline's cost on a tiny model (stories260K, CPU
#      worker) for scale; fault isolation: 8 greedy
#      streams while the engine gets kill -9, then SIGSTOP (its holder starts
#      another on the same weights and KV cache; every stream must equal a
#      fault-free run's token for token), a kill -9 while idle with a request
#      right behind it, and with --workers cuda,cpu a kill -9 of the holder
#      under apr load (the CPU worker serves meanwhile; streams complete)
# The table comes last. Logs go to $OUT (or /tmp/apr-gpu) as well.
# PARTS="kernels parity bench serve" selects parts; SIZES="0.5b 1.5b 3b 7b" the bench models.
# PARTS=serve-decode is part 5 without its fault tests: decode and TTFT through apr-coord against
# apr eval, the engine's split of a token's time, and the pipeline floor.
. tests/gpu/env.sh
PARTS=${PARTS:-kernels parity bench serve}
SIZES=${SIZES:-0.5b 1.5b 3b 7b}
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

# eval BACKEND MODEL NAME ARGS...: JSON to $LOG/NAME.json, logits to NAME.f32, stderr to NAME.err
# (sh functions share one scope: each uses its own prefix for its variables)
ev() { ev_rows=1 eval_run "$@"; }
# evc: the same without the logits file, so that apr eval reads each position's best
# (a candidate row, picked on the GPU) as apr-coord does for a greedy stream: what the
# timing rows use (EV_CANDS=5: the five best, as the rows before 2026-11-27's twelfth pass)
evc() { ev_rows=0 eval_run "$@"; }
eval_run() {
    ev_b=$1 ev_m=$2 ev_n=$3
    shift 3
    [ "$ev_rows" = 1 ] && set -- --logits-out "$LOG/$ev_n.f32" "$@"
    [ "$ev_rows" = 0 ] && set -- --cands "${EV_CANDS:-1}" "$@"
    "$APR" eval -m "$ev_m" --backend "$ev_b" --json "$@" >"$LOG/$ev_n.json" 2>"$LOG/$ev_n.err"
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
        "$C/bin/test_kernels_cuda" --ahead "$H" | tee "$LOG/ahead.txt" || fails=$((fails + 1))
        echo "parity  $(tail -1 "$LOG/ahead.txt")" >>"$TABLE"
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
        evc cuda "$m" "bench-$s" -p "Once upon a time" -n 128 --ignore-eos || { fails=$((fails + 1)); continue; }
        d=$(rate decode "$LOG/bench-$s.err")
        echo "qwen2.5-$s decode: $d tok/s ($(awk -v b="$by" 'BEGIN {printf "%.3f", b / 1e9}') GB of weights per token)"
        row "qwen2.5-$s decode b=1 (tok/s)" "$d" "$ref" "$by"
        # the five best a position (apr eval's default, what the rows before the twelfth pass read)
        EV_CANDS=5 evc cuda "$m" "bench-$s-c5" -p "Once upon a time" -n 128 --ignore-eos &&
            row "qwen2.5-$s decode b=1, 5 candidates" "$(rate decode "$LOG/bench-$s-c5.err")" "$ref" "$by"
        # whole logits rows to the host every position (--logits-out), as before 2026-11-26's seventh pass
        ev cuda "$m" "bench-$s-rows" -p "Once upon a time" -n 128 --ignore-eos &&
            row "qwen2.5-$s decode b=1, whole rows" "$(rate decode "$LOG/bench-$s-rows.err")" "$ref" "$by"
        # one candidate (the GPU's argmax), five, whole rows: the same greedy tokens
        for v in c5 rows; do
            [ "$(tokens_of "$LOG/bench-$s.json")" = "$(tokens_of "$LOG/bench-$s-$v.json")" ] ||
                { echo "FAIL: qwen2.5-$s greedy tokens differ between one candidate and $v"; fails=$((fails + 1)); }
        done
        # where a token's time goes, from each kernel's own start and end on the GPU (CUPTI)
        case $s in 0.5b|1.5b|3b) SIZES=$s sh tests/gpu/timeline.sh | tee "$LOG/timeline-$s.txt" ;; esac
        APR_CUDA_PDL=0 evc cuda "$m" "bench-$s-nopdl" -p "Once upon a time" -n 128 --ignore-eos &&
            row "qwen2.5-$s decode b=1, no PDL" "$(rate decode "$LOG/bench-$s-nopdl.err")" "$ref" "$by"
        # the one-token step as ten kernels a layer (norm/quantize and bias+RoPE+KV
        # separate), and with every fusion on (the default picks by model width)
        APR_CUDA_FUSE=0 evc cuda "$m" "bench-$s-nofuse" -p "Once upon a time" -n 128 --ignore-eos &&
            row "qwen2.5-$s decode b=1, unfused" "$(rate decode "$LOG/bench-$s-nofuse.err")" "$ref" "$by"
        APR_CUDA_FUSE=63 evc cuda "$m" "bench-$s-allfuse" -p "Once upon a time" -n 128 --ignore-eos &&
            row "qwen2.5-$s decode b=1, all fused" "$(rate decode "$LOG/bench-$s-allfuse.err")" "$ref" "$by"
        if [ "$s" = 1.5b ]; then
            APR_CUDA_GRAPHS=0 evc cuda "$m" "bench-$s-nograph" -p "Once upon a time" -n 128 --ignore-eos &&
                row "qwen2.5-$s decode b=1, no graphs" "$(rate decode "$LOG/bench-$s-nograph.err")" "$ref" "$by"
            best=0
            for i in 1 2 3; do
                evc cuda "$m" "prefill-$s" --tokens "$(seq -s, 1000 1511)" -n 1 || break
                p=$(rate prefill "$LOG/prefill-$s.err")
                best=$(awk -v a="$p" -v b="$best" 'BEGIN {print (a > b ? a : b)}')
            done
            echo "qwen2.5-$s prefill 512: $best tok/s (best of 3)"
            row "qwen2.5-$s prefill 512 (tok/s)" "$best" 24700 0
            # PDL in the 512-entry step too (APR_CUDA_PDL=2; the default leaves it to decode-sized steps)
            best=0
            for i in 1 2 3; do
                APR_CUDA_PDL=2 evc cuda "$m" "prefill-$s-pdl" --tokens "$(seq -s, 1000 1511)" -n 1 || break
                p=$(rate prefill "$LOG/prefill-$s-pdl.err")
                best=$(awk -v a="$p" -v b="$best" 'BEGIN {print (a > b ? a : b)}')
            done
            row "qwen2.5-$s prefill 512, PDL in it (best of 3)" "$best" 24700 0
            # where the time goes: events between the kernels of plain launches
            APR_CUDA_PROFILE=1 evc cuda "$m" "profile-$s" --tokens "$(seq -s, 1000 1511)" -n 33 --ignore-eos &&
                grep -A12 '^cuda profile' "$LOG/profile-$s.err" | tee "$LOG/profile.txt"
            for fu in 0 63; do
                APR_CUDA_FUSE=$fu APR_CUDA_PROFILE=1 evc cuda "$m" "profile-$s-fuse$fu" --tokens "$(seq -s, 1000 1511)" \
                    -n 33 --ignore-eos && { echo "APR_CUDA_FUSE=$fu:"; grep -A12 '^cuda profile, decode' \
                    "$LOG/profile-$s-fuse$fu.err" | sed '/steps of several/,$d'; } | tee -a "$LOG/profile.txt"
            done
            # where a decode token's time goes inside the graph: a %globaltimer stamp after every kernel
            APR_CUDA_PROFILE=3 evc cuda "$m" "stamps-$s" -p "Once upon a time" -n 128 --ignore-eos &&
                { echo "APR_CUDA_PROFILE=3 (in the graph, each class plus one stamp):"; grep -A14 '^cuda profile, decode' \
                    "$LOG/stamps-$s.err" | sed '/steps of several/,$d'; } | tee -a "$LOG/profile.txt"
            # decode at a long context: 128 tokens after a 2000-token prompt (attention split across the context)
            evc cuda "$m" "long-$s" --tokens "$(seq -s, 1000 2999)" -n 128 --ignore-eos &&
                row "qwen2.5-$s decode after 2000 tokens" "$(rate decode "$LOG/long-$s.err")" 0 "$by"
            # batched decode: S sequences a step, every entry wanting logits (llama.cpp: 8400 tok/s at 64)
            "$C/bin/test_kernels_cuda" --batched "$m" 128 | tee "$LOG/batched.txt" || fails=$((fails + 1))
            sed -n 's/batched decode: *\([0-9]*\) streams x [0-9]* steps: *\([0-9.]*\) tok.*/\1 \2/p' "$LOG/batched.txt" |
                while read -r bs bt; do
                    row "qwen2.5-$s batched decode, $bs streams" "$bt" "$([ "$bs" = 64 ] && echo 8400 || echo 0)" 0
                done
            # the same with candidate rows of 40 picked on the GPU (what apr-coord asks for top-k sampling)
            sed -n 's/batched decode, candidate rows of 40: *\([0-9]*\) streams x [0-9]* steps: *\([0-9.]*\) tok.*/\1 \2/p' \
                "$LOG/batched.txt" | while read -r bs bt; do
                    row "qwen2.5-$s batched decode, $bs streams, top-40 rows" "$bt" "$([ "$bs" = 64 ] && echo 8400 || echo 0)" 0
                done
        fi
    done
fi

# ----------------------------------------------------------------- 5. serve
EP="ipc://$M/apr.sock"
COORD=0
# coord_start WORKERS LOGNAME [ARGS]: apr-coord on $SP in the background until every worker is ready
coord_start() {
    cs_w=$1 cs_log=$2
    shift 2
    "$C/bin/apr-coord" -m "$SP" --listen "$EP" --workers "$cs_w" "$@" 2>"$LOG/$cs_log.log" &
    COORD=$!
    cs_n=$(echo "$cs_w" | tr , '\n' | wc -l)
    cs_i=0
    until [ "$("$APR" status --endpoint "$EP" --timeout 1 2>/dev/null | grep -c ' ready ')" -eq "$cs_n" ]; do
        cs_i=$((cs_i + 1))
        if [ $cs_i -gt 300 ] || ! kill -0 $COORD 2>/dev/null; then
            echo "apr-coord --workers $cs_w did not get ready:"
            tail -5 "$LOG/$cs_log.log"
            return 1
        fi
        sleep 0.2
    done
}
coord_stop() {
    kill -TERM $COORD 2>/dev/null
    wait $COORD
    COORD=0
}
status_field() { "$APR" status --endpoint "$EP" --timeout 2 | awk -v k="$1" '$1 == k {print $2}'; }
worker_pid() { "$APR" status --endpoint "$EP" --timeout 2 | awk -v w="$1" '$1 == w {print $4}'; }
# the engine: the holder's child (no procps there)
engine_of() { grep -l "^PPid:[[:space:]]*$1\$" /proc/[0-9]*/status 2>/dev/null | head -1 | cut -d/ -f3; }

PROMPTS="Once upon a time|The quick brown fox|def fibonacci(n):|Write a haiku about GPUs.|In the beginning|import numpy as np|Dear diary, today|The capital of France is"
NTOK=256
# streams NAME: 8 greedy streams of NTOK tokens through apr-coord, started
# 10 ms apart; their token ids to $LOG/NAME-i.tok. Fails when one failed, or
# its token indices are not 0, 1, 2 ... (a lost or repeated token). Why
# apart: each prompt then gets a step of its own. A step of more than 16
# entries runs its wide products on the tensor cores, whose sums round
# differently from the GEMV's (steps of up to 16 are the same bits whatever
# their size), so 8 prompts arriving together would make a stream's tokens
# depend on the clients' timing rather than on the faults.
streams() {
    st_pids=""
    for st_i in 1 2 3 4 5 6 7 8; do
        "$APR" generate --endpoint "$EP" -p "$(echo "$PROMPTS" | cut -d'|' -f$st_i)" -n $NTOK --temperature 0 \
            --json --timeout 60 >"$LOG/$1-$st_i.json" 2>"$LOG/$1-$st_i.err" &
        st_pids="$st_pids $!"
        sleep 0.01
    done
    st_bad=0
    for st_p in $st_pids; do wait "$st_p" || st_bad=$((st_bad + 1)); done
    for st_i in 1 2 3 4 5 6 7 8; do
        sed -n 's/.*"token":\([0-9]*\),"index":\([0-9]*\).*/\2 \1/p' "$LOG/$1-$st_i.json" >"$LOG/$1-$st_i.idx"
        awk '$1 != NR - 1 {bad = 1} END {exit bad || NR == 0}' "$LOG/$1-$st_i.idx" || st_bad=$((st_bad + 1))
        cut -d' ' -f2 "$LOG/$1-$st_i.idx" >"$LOG/$1-$st_i.tok"
    done
    [ $st_bad -eq 0 ] || echo "$1: $st_bad streams failed or lost/repeated a token"
    return $st_bad
}
same() { # A B: how many of the 8 streams of B equal A's (where the others first differ: $LOG/B.diff)
    sm_n=0
    : >"$LOG/$2.diff"
    for sm_i in 1 2 3 4 5 6 7 8; do
        if cmp -s "$LOG/$1-$sm_i.tok" "$LOG/$2-$sm_i.tok"; then sm_n=$((sm_n + 1))
        else echo "stream $sm_i first differs at token $(cmp "$LOG/$1-$sm_i.tok" "$LOG/$2-$sm_i.tok" 2>&1 |
            sed -n 's/.*line \([0-9]*\).*/\1/p')" >>"$LOG/$2.diff"; fi
    done
    echo $sm_n
}
# fault SIGNAL NAME: the streams of NAME, with SIGNAL sent to the engine once
# stream 1 has 64 tokens; then compared with the fault-free run
fault() {
    fa_holder=$(worker_pid cuda0)
    fa_engine=$(engine_of "$fa_holder")
    rm -f "$LOG/$2.killed" "$LOG/$2-1.json"
    (
        for fa_i in $(seq 1000); do
            [ -f "$LOG/$2-1.json" ] && [ "$(wc -l <"$LOG/$2-1.json")" -ge 64 ] && break
            sleep 0.01
        done
        kill "-$1" "$fa_engine" && echo "$fa_engine" >"$LOG/$2.killed"
    ) &
    fa_killer=$!
    streams "$2" || fails=$((fails + 1))
    wait $fa_killer
    fa_new=$(engine_of "$fa_holder")
    fa_ms=$(grep -o 'serving, [0-9.]* ms after the last one died' "$LOG/serve-cuda.log" | tail -1 | awk '{print $2}')
    fa_same=$(same serve-ref "$2")
    if [ ! -f "$LOG/$2.killed" ]; then r="FAIL engine $1: the signal was not sent"; fails=$((fails + 1))
    elif [ "$fa_new" = "$fa_engine" ] || [ -z "$fa_new" ]; then r="FAIL engine $1: no new engine"; fails=$((fails + 1))
    elif [ "$fa_same" -ne 8 ]; then
        r="FAIL engine $1: $fa_same/8 streams equal the fault-free run ($(paste -sd';' "$LOG/$2.diff"))"
        fails=$((fails + 1))
    else r="ok engine $1 mid-stream: 8/8 streams equal the fault-free run, serving again in $fa_ms ms"; fi
    echo "$r (engine $fa_engine -> $fa_new)"
    echo "parity  $r" >>"$TABLE"
}

if has serve || has serve-decode; then
    say "serving through apr-coord (qwen2.5-1.5b)"
    if SP=$(mk qwen2.5-1.5b); then
        evc cuda "$SP" serve-eval -p "Once upon a time" -n 128 --ignore-eos || fails=$((fails + 1))
        eval_d=$(rate decode "$LOG/serve-eval.err")
        if coord_start cuda serve-bench; then
            # the report's bars against llama.cpp's figure for this model
            # (apr eval's, the engine alone, is compared with below)
            "$APR" bench --endpoint "$EP" -n 128 --runs 30 --warmup 3 --baseline "llama.cpp=532" \
                >"$LOG/serve-bench.txt" 2>&1 || fails=$((fails + 1))
            "$APR" bench --endpoint "$EP" --prompt-tokens 512 -n 16 --runs 5 --warmup 1 --bars cv=10,runs=5 \
                >"$LOG/serve-bench512.txt" 2>&1 || fails=$((fails + 1))
            cat "$LOG/serve-bench.txt"
            bd=$(awk '$1 == "apr" && $3 == "+-" {print $2}' "$LOG/serve-bench.txt")
            ttft=$(awk '$1 == "apr" && $3 == "+-" {print $6}' "$LOG/serve-bench.txt")
            ttft512=$(awk '$1 == "apr" && $3 == "+-" {print $6}' "$LOG/serve-bench512.txt")
            echo "1.5B decode: apr-coord $bd tok/s, apr eval $eval_d tok/s ($(awk -v a="$bd" -v b="$eval_d" \
                'BEGIN {printf "%.1f", 100 * a / b}')%); TTFT ${ttft} ms (4 tokens), ${ttft512} ms (512 tokens)"
            row "qwen2.5-1.5b decode b=1 via apr-coord" "$bd" 532 "$(wbytes "$SP")"
            row "  same, apr eval (in-process)" "$eval_d" 532 "$(wbytes "$SP")"
            printf "%-34s %9s\n" "  TTFT via apr-coord, 4 / 512 tok" "$ttft / $ttft512 ms" >>"$TABLE"
            coord_stop
            grep 'steps of one entry' "$LOG/serve-bench.log"
        else
            fails=$((fails + 1))
        fi

        if ! has serve; then
            : # serve-decode: no fault tests
        elif coord_start cuda serve-cuda; then
            say "fault isolation: kill -9 and SIGSTOP of the engine during 8 streams"
            streams serve-ref || fails=$((fails + 1))
            streams serve-ref2 || fails=$((fails + 1))
            echo "fault-free runs agree on $(same serve-ref serve-ref2)/8 streams"
            fault KILL serve-kill
            fault STOP serve-stop
            # killed while idle, a request right behind: it waits for the next engine
            ih=$(worker_pid cuda0)
            kill -KILL "$(engine_of "$ih")"
            if "$APR" generate --endpoint "$EP" -p "Once upon a time" -n 16 --temperature 0 --timeout 30 \
                >/dev/null 2>"$LOG/serve-idle.err"; then r="ok engine kill -9 while idle: the next request completes"
            else r="FAIL engine kill -9 while idle: $(tail -1 "$LOG/serve-idle.err")"; fails=$((fails + 1)); fi
            echo "$r"
            echo "parity  $r" >>"$TABLE"
            echo "restarts counted by apr-coord: $(status_field restarts) (3 expected)"
            coord_stop
            grep -E 'engine|lost|restart|steps of one entry' "$LOG/serve-cuda.log" | tail -14
        else
            fails=$((fails + 1))
        fi

        has serve && say "fault isolation: --workers cuda,cpu, kill -9 of the holder under apr load"
        if ! has serve; then
            :
        elif coord_start cuda,cpu serve-fallback; then
            "$APR" load --endpoint "$EP" --concurrency 8 --requests 48 --prompts 8 --prompt-len 16-64 \
                --max-tokens 200 --chaos kill-worker@0.5 --json "$LOG/serve-fallback.json" \
                >"$LOG/serve-fallback.txt" 2>&1
            lr=$?
            cat "$LOG/serve-fallback.txt"
            grep -E 'lost|now run on|ready in|engine' "$LOG/serve-fallback.log" | tail -8
            if [ $lr -eq 0 ] && grep -q 'now run on worker cpu0' "$LOG/serve-fallback.log"; then
                r="ok holder kill -9 (cuda,cpu): 48 streams complete, the CPU worker served meanwhile"
            else r="FAIL holder kill -9 (cuda,cpu): apr load status $lr"; fails=$((fails + 1)); fi
            echo "$r"
            echo "parity  $r" >>"$TABLE"
            coord_stop
        else
            fails=$((fails + 1))
        fi

        # the pipeline's own cost per token where the model costs nothing: a
        # 512-token vocabulary on the CPU worker. A run of apr eval takes tens
        # of milliseconds, so one host hiccup halves it: the best of three
        # (reading one candidate a position, as apr-coord asks of the worker)
        SP=$C/models/stories260K.gguf
        fl_e=0
        for i in 1 2 3; do
            evc cpu "$SP" serve-floor-eval -p "Once upon a time" --bos -n 128 --ignore-eos --threads 1 || break
            fl_e=$(awk -v a="$(rate decode "$LOG/serve-floor-eval.err")" -v b="$fl_e" 'BEGIN {print (a > b ? a : b)}')
        done
        [ "$fl_e" != 0 ] && coord_start cpu serve-floor --threads 1 && {
            "$APR" bench --endpoint "$EP" -n 128 --runs 20 --warmup 3 >"$LOG/serve-floor.txt" 2>&1
            coord_stop
            fl_a=$(awk '$1 == "apr" && $3 == "+-" {print $2}' "$LOG/serve-floor.txt")
            echo "pipeline floor (stories260K, CPU worker): apr-coord $fl_a tok/s, apr eval $fl_e tok/s:" \
                "$(awk -v a="$fl_a" -v e="$fl_e" 'BEGIN {printf "%.3f", 1e3 / a - 1e3 / e}') ms per token"
        }
    else
        fails=$((fails + 1))
    fi
fi

echo
echo "== table ($(cut -d, -f1 "$LOG/device.txt" | sed 's/device: //'), d2d copy $BW GB/s)"
grep '^parity' "$TABLE" | sed 's/^parity  //'
printf "%-34s %9s %9s %7s  %6s  %6s\n" workload apr llama.cpp ratio roofln "%roof"
grep -v '^parity' "$TABLE"
[ -f "$LOG/profile.txt" ] && { echo "per kernel class (plain launches, 1.5B, 512-token prompt):"; cat "$LOG/profile.txt"; }
echo "failures: $fails"
[ "$fails" -eq 0 ]
