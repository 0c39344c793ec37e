#!/bin/sh
# Where a decode step's time goes, from the kernels' own start and end on the
# GPU (CUPTI, tests/gpu/ktrace.c; bundle.sh builds it where the toolkit has
# libcupti): apr eval decodes 64 tokens with the tracer preloaded, then
# timeline.py prints each kernel class's exposed time (its end minus its
# predecessor's) a step. Run on the device machine with run.sh's carry.
#   SIZES="0.5b 1.5b"   models (apr mkmodel shapes)
. tests/gpu/env.sh
SIZES=${SIZES:-0.5b 1.5b}
KT="$PWD/$C/lib/libktrace.so"
[ -f "$KT" ] || { echo "timeline: $KT missing (bundle.sh builds it where libcupti is installed)"; exit 0; }
rc=0
for s in $SIZES; do
    m=$(mk "qwen2.5-$s") || { rc=1; continue; }
    LD_PRELOAD="$KT" KTRACE_OUT="$LOG/ktrace-$s.csv" "$APR" eval -m "$m" --backend cuda --cands 1 \
        -p "Once upon a time" -n 64 --ignore-eos >/dev/null 2>"$LOG/ktrace-$s.err" || { rc=1; continue; }
    echo "== qwen2.5-$s decode, kernel timeline (the tracer slows the host, not the GPU's step)"
    python3 tests/gpu/timeline.py "$LOG/ktrace-$s.csv" || rc=1
done
exit $rc
