#!/bin/sh
# Batch-1 decode with the one-token step's fusions switched on and off, on the
# device machine (same carry as run.sh: prepare with `make && make gpu && sh
# tests/gpu/bundle.sh`, carry [".carry"]). Each variant is an environment for
# apr eval (cuda/backend.cu's APR_CUDA_FUSE mask, cuda/kernels.cu's knobs);
# REPS runs of 127 decode steps each, the variants interleaved so that drift
# of the card spreads over all of them. Prints one line per variant: the
# tok/s of every run.
#   SIZES="1.5b"  models;  FULL="1.5b"  sizes that get every variant (the
#   others: the first five)
. tests/gpu/env.sh
SIZES=${SIZES:-0.5b 1.5b 7b}
FULL=${FULL:-1.5b}
REPS=${REPS:-2}
# name|environment (FUSE bits: 1 qkv norm, 2 rope+kv in attention, 4 o quant,
# 8 gate/up norm, 16 down quant, 32 output norm)
VARIANTS='unfused|APR_CUDA_FUSE=0
all fused|APR_CUDA_FUSE=63
1 block/SM|APR_CUDA_PRO_GRID=1
1 block/SM, prefetch 8|APR_CUDA_PRO_GRID=1 APR_CUDA_PREFETCH=8
no L2 prefetch|APR_CUDA_PREFETCH=0
1 block/SM, no prefetch|APR_CUDA_PRO_GRID=1 APR_CUDA_PREFETCH=0
block per 8 groups|APR_CUDA_PRO_GRID=0
rope only|APR_CUDA_FUSE=2
rope + o/down quant|APR_CUDA_FUSE=22
norms only|APR_CUDA_FUSE=41
all but gate/up|APR_CUDA_FUSE=55
all but down|APR_CUDA_FUSE=47'
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null | sed 's/^/device: /'
for s in $SIZES; do
    m=$(mk "qwen2.5-$s" 2>/dev/null) || { echo "mkmodel $s failed"; continue; }
    case " $FULL " in *" $s "*) n=99;; *) n=5;; esac
    : >"$LOG/fusion-$s.txt"
    for r in $(seq "$REPS"); do
        echo "$VARIANTS" | head -n "$n" | while IFS='|' read -r name envs; do
            d=$(env $envs "$APR" eval -m "$m" --backend cuda -p "Once upon a time" -n 128 --ignore-eos 2>&1 >/dev/null |
                sed -n 's/.*decode: [0-9]* tokens, [0-9.]* ms, \([0-9.]*\) tok\/s.*/\1/p')
            echo "$name|${d:-fail}" >>"$LOG/fusion-$s.txt"
        done
    done
    echo "== qwen2.5-$s decode b=1, tok/s per run"
    echo "$VARIANTS" | head -n "$n" | while IFS='|' read -r name envs; do
        printf "  %-26s %-44s %s\n" "$name" "$envs" "$(awk -F'|' -v v="$name" '$1 == v {printf "%s ", $2}' "$LOG/fusion-$s.txt")"
    done
done
