#!/bin/sh
# Tensor-core prefill on the device, in one short command (run.sh does the
# whole table; this is the part a prefill change needs). Prepared here like
# run.sh: `make && make gpu && sh tests/gpu/bundle.sh`, then run
# `sh tests/gpu/prefill.sh` there with carry [".carry"].
#   1. kernel tests (failures and the summary here, all lines in $OUT/kernels.txt)
#   2. the 1.5B layer's products, GEMV against tensor cores, at 16/64/512 tokens
#   3. 1.5B prefill of a 512-token prompt (best of 3), the same with
#      APR_CUDA_MMA=0 (the GEMV path, on the same card), and the per-kernel-class
#      profile of one 512-token step
#   4. parity after a 100-token prefill (8 positions, teacher-forced on the
#      CPU's greedy tokens): cuda vs cpu, cuda without the tensor cores vs cpu,
#      and the two cuda paths against each other; 1.5B (Q4_K/Q6_K) and 0.5B
#      (its Q5_0/Q8_0 rows)
. tests/gpu/env.sh
W=/tmp/apr-prefill # logits and token files (at most 8 files come back from $OUT)
mkdir -p "$W"
fails=0
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null |
    sed 's/^/device: /'

echo "== kernel tests"
"$C/bin/test_kernels_cuda" >"$LOG/kernels.txt" 2>&1 || fails=$((fails + 1))
grep -v '^ok ' "$LOG/kernels.txt"
echo "mma tests passed: $(grep -c '^ok   mma' "$LOG/kernels.txt"), largest rel error: $(grep '^ok   mma' "$LOG/kernels.txt" |
    awk '{for (i = 1; i < NF; i++) if ($i == "rel") print $(i + 1)}' | sort -g | tail -1)"

echo "== products of one 1.5B layer"
"$C/bin/test_kernels_cuda" --mma-bench 2>&1 | tee "$LOG/mma-bench.txt"

P=$(mk qwen2.5-1.5b) || exit 1
H=$(mk qwen2.5-0.5b) || exit 1
PROMPT512=$(seq -s, 1000 1511)

echo "== 1.5B prefill, 512 tokens"
best=0
for i in 1 2 3; do
    "$APR" eval -m "$P" --backend cuda --tokens "$PROMPT512" -n 1 >/dev/null 2>"$LOG/prefill.err" || { fails=$((fails + 1)); tail -2 "$LOG/prefill.err"; break; }
    r=$(rate prefill "$LOG/prefill.err")
    echo "tensor cores: $r tok/s"
    best=$(awk -v a="$r" -v b="$best" 'BEGIN {print (a > b ? a : b)}')
done
APR_CUDA_MMA=0 "$APR" eval -m "$P" --backend cuda --tokens "$PROMPT512" -n 1 >/dev/null 2>"$LOG/prefill-gemv.err"
gemv=$(rate prefill "$LOG/prefill-gemv.err")
APR_CUDA_PROFILE=1 "$APR" eval -m "$P" --backend cuda --tokens "$PROMPT512" -n 1 >/dev/null 2>"$LOG/profile.err"
grep -A12 'steps of several entries' "$LOG/profile.err"

echo "== parity after a 100-token prefill"
PROMPT100=$(seq -s, 2000 2099)
tokens_of() { sed -n 's/.*"token":\([0-9]*\).*/\1/p' "$1" | paste -sd, -; }
nvocab() { "$APR" inspect "$1" | sed -n 's/.*n_vocab \([0-9]*\),.*/\1/p'; }
for name in 1.5b 0.5b; do
    [ $name = 1.5b ] && m=$P || m=$H
    "$APR" eval -m "$m" --backend cpu --json --ignore-eos -n 8 --tokens "$PROMPT100" \
        --logits-out "$W/$name-cpu.f32" >"$W/$name-cpu.json" 2>/dev/null || { fails=$((fails + 1)); continue; }
    f=$(tokens_of "$W/$name-cpu.json")
    "$APR" eval -m "$m" --backend cuda --json --ignore-eos -n 8 --tokens "$PROMPT100" --force "$f" \
        --logits-out "$W/$name-mma.f32" >/dev/null 2>&1 || fails=$((fails + 1))
    APR_CUDA_MMA=0 "$APR" eval -m "$m" --backend cuda --json --ignore-eos -n 8 --tokens "$PROMPT100" --force "$f" \
        --logits-out "$W/$name-gemv.f32" >/dev/null 2>&1 || fails=$((fails + 1))
    v=$(nvocab "$m")
    python3 tests/gpu/compare.py "$W/$name-cpu.f32" "$W/$name-mma.f32" "$v" "$name cuda (tensor cores) vs cpu" 0.75 ||
        fails=$((fails + 1))
    python3 tests/gpu/compare.py "$W/$name-cpu.f32" "$W/$name-gemv.f32" "$v" "$name cuda (gemv) vs cpu" 0
    python3 tests/gpu/compare.py "$W/$name-gemv.f32" "$W/$name-mma.f32" "$v" "$name cuda tensor cores vs gemv" 0
done

echo "== 1.5B prefill of 512 tokens: tensor cores $best tok/s, GEMV $gemv tok/s (same card), llama.cpp 24700"
echo "failures: $fails"
[ "$fails" -eq 0 ]
