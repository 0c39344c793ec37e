#!/bin/sh
# Per-kernel times of the batch-1 decode step under Nsight Compute, on the
# device machine (same carry as run.sh). ncu runs the graph's kernels one at a
# time (no overlap between them), so these are each kernel's own duration and
# DRAM traffic, not the step's wall time; the sum beside apr eval's step time
# shows what overlap and launch gaps add.
#   SIZES="1.5b"   models;  SKIP / COUNT: kernels skipped (prefill, capture,
#   early steps) and profiled (a few decode steps)
. tests/gpu/env.sh
SIZES=${SIZES:-1.5b}
SKIP=${SKIP:-4000}
COUNT=${COUNT:-600}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
for s in $SIZES; do
    m=$(mk "qwen2.5-$s" 2>/dev/null) || { echo "mkmodel $s failed"; continue; }
    "$NCU" --clock-control none --print-units base --launch-skip "$SKIP" --launch-count "$COUNT" --csv \
        --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__grid_size \
        "$APR" eval -m "$m" --backend cuda -p "Once upon a time" -n 128 --ignore-eos >"$LOG/ncu-$s.csv" 2>"$LOG/ncu-$s.err"
    echo "== qwen2.5-$s: ncu rc=$?, $(grep -c gpu__time_duration "$LOG/ncu-$s.csv") kernels"
    # per kernel name (template arguments kept): launches, us in all, MB read, GB/s
    python3 - "$LOG/ncu-$s.csv" <<'PY'
import csv, sys, collections
lines = open(sys.argv[1], errors="replace").read().splitlines()
start = next(i for i, l in enumerate(lines) if l.startswith('"ID"'))
rows = [r for r in csv.reader(lines[start:]) if len(r) > 10]
h = rows[0]; rows = rows[1:]
ki, mi, vi = h.index("Kernel Name"), h.index("Metric Name"), h.index("Metric Value")
ids = h.index("ID")
k = collections.defaultdict(lambda: [set(), 0.0, 0.0])
for r in rows:
    v = float(r[vi].replace(",", ""))
    e = k[r[ki][:90]]
    e[0].add(r[ids])
    if r[mi] == "gpu__time_duration.sum": e[1] += v
    if r[mi] == "dram__bytes_read.sum": e[2] += v
tot = sum(e[1] for e in k.values())
print(f"  {'kernel':90s} {'n':>5s} {'us':>9s} {'%':>5s} {'MB':>8s} {'GB/s':>7s}")
for name, (n, t, b) in sorted(k.items(), key=lambda x: -x[1][1]):
    print(f"  {name:90s} {len(n):5d} {t/1e3:9.1f} {100*t/tot:5.1f} {b/1e6:8.2f} {b/t if t else 0:7.0f}")
print(f"  total {tot/1e3:.1f} us")
PY
done
