#!/usr/bin/env python3
"""Where a decode step's time goes on the GPU, from a kernel timeline
(tests/gpu/ktrace.c: start,end,graph,grid,block,name a line, ns).

Steps are the runs of kernels of the most frequent graph (the one-token
bucket) separated by the host's gaps, or, where a step's graph was launched
ahead of its batch (backend.cu), starting at each batch_in_kernel: that
kernel waits for the host, so its time is printed apart and the step is
counted from its end. For each kernel class (name and grid)
it prints launches a step, time from first block to last, and what the
class adds to the step: its end minus its predecessor's end ("exposed"),
the figure that programmatic dependent launch makes honest (the kernel's
blocks start early and wait; per-kernel stamps break that overlap). The
exposed times of a step's kernels add up to the step.

usage: timeline.py TRACE.csv[.gz] [SKIP]   (SKIP: first steps left out, 8)
"""
import collections, gzip, shutil, subprocess, sys

def main():
    path = sys.argv[1]
    skip = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    opener = gzip.open if path.endswith(".gz") else open
    rows = []
    for line in opener(path, "rt"):
        a, b, g, gx, bx, name = line.rstrip("\n").split(",", 5)
        rows.append((int(a), int(b), int(g), int(gx), name))
    rows.sort()
    if not rows:
        sys.exit("timeline.py: no kernels in " + path)
    names = sorted(set(r[4] for r in rows))
    short = {n: n for n in names}
    if shutil.which("c++filt"):
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
        short = {n: d.replace("void ", "").split("<")[0].split("(")[0] for n, d in zip(names, out)}
    graph = collections.Counter(r[2] for r in rows if r[2]).most_common(1)
    if not graph:
        sys.exit("timeline.py: no graph launches (APR_CUDA_GRAPHS=0?)")
    ks = [r for r in rows if r[2] == graph[0][0]]
    gaps = sorted(ks[i][0] - ks[i - 1][1] for i in range(1, len(ks)))
    cut = max(20000, 4 * gaps[len(gaps) // 2])  # a host gap: far longer than any between kernels
    head = [r for r in ks if short[r[4]] == "batch_in_kernel"]
    steps, cur = [], [ks[0]]
    for r in ks[1:]:
        if (short[r[4]] == "batch_in_kernel") if head else (r[0] - cur[-1][1] > cut):
            steps.append(cur)
            cur = []
        cur.append(r)
    steps.append(cur)
    n_k = collections.Counter(len(s) for s in steps).most_common(1)[0][0]
    use = [s for s in steps[skip:] if len(s) == n_k]
    if not use:
        sys.exit("timeline.py: no steps past the first %d" % skip)
    cls = collections.OrderedDict()
    waited = 0
    for st in use:
        for i, r in enumerate(st):
            if i == 0 and head:  # the batch's wait: the host's time, not the step's
                waited += r[1] - r[0]
                continue
            key = "%s [%d]" % (short[r[4]], r[3])
            c = cls.setdefault(key, [0, 0, 0])
            c[0] += 1
            c[1] += r[1] - r[0]
            c[2] += r[1] - st[i - 1][1] if i else r[1] - r[0]
    n = len(use)
    span = sum(s[-1][1] - (s[0][1] if head else s[0][0]) for s in use) / n / 1e3
    print("%d steps of %d kernels (graph %d): %.1f us a step on the GPU, %s to the last kernel's end"
          % (n, n_k, graph[0][0], span, "the batch's arrival" if head else "the first kernel's start"))
    if head:
        print("graphs launched ahead: batch_in_kernel waited %.1f us a step for the host" % (waited / n / 1e3))
    print("%-44s %8s %10s %10s %8s" % ("kernel [blocks]", "a step", "busy us", "exposed", "each"))
    for k, (c, d, e) in sorted(cls.items(), key=lambda x: -x[1][2]):
        print("%-44s %8.0f %10.1f %10.1f %8.2f" % (k[:44], c / n, d / n / 1e3, e / n / 1e3, e / c / 1e3))
    st = use[len(use) // 2]
    t0 = st[0][0]
    print("\none step's first kernels (us from its start):")
    for i, r in enumerate(st[:16]):
        print("  %-34s [%5d] %8.2f .. %8.2f  exposed %5.2f" % (short[r[4]][:34], r[3], (r[0] - t0) / 1e3,
              (r[1] - t0) / 1e3, (r[1] - st[i - 1][1]) / 1e3 if i else (r[1] - r[0]) / 1e3))

if __name__ == "__main__":
    main()
