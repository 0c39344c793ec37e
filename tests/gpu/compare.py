#!/usr/bin/env python3
"""Compares two engines' `apr eval --logits-out` files position by position.

  compare.py A.f32 B.f32 N_VOCAB [LABEL [MIN_AGREE]]
prints one line: positions, argmax agreement, max |dlogit| over all positions
and at the first one, max |logit| (the scale); exits 1 when the share of
positions whose argmax agrees is under MIN_AGREE (default 1: all).
numpy when present, else plain Python.
"""
import sys
from array import array


def load(path):
    a = array("f")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    return a


def main():
    pa, pb, nv = sys.argv[1], sys.argv[2], int(sys.argv[3])
    label = sys.argv[4] if len(sys.argv) > 4 else ""
    min_agree = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
    a, b = load(pa), load(pb)
    n = min(len(a), len(b)) // nv
    agree, maxd, maxd0, scale, first_bad = 0, 0.0, 0.0, 0.0, -1
    try:
        import numpy as np
        A = np.frombuffer(a, dtype=np.float32)[: n * nv].reshape(n, nv)
        B = np.frombuffer(b, dtype=np.float32)[: n * nv].reshape(n, nv)
        same = A.argmax(1) == B.argmax(1)
        agree = int(same.sum())
        first_bad = int(np.argmin(same)) if agree < n else -1
        maxd = float(np.abs(A - B).max()) if n else 0.0
        maxd0 = float(np.abs(A[0] - B[0]).max()) if n else 0.0
        scale = float(np.abs(A).max()) if n else 0.0
    except ImportError:
        for p in range(n):
            ra, rb = a[p * nv:(p + 1) * nv], b[p * nv:(p + 1) * nv]
            if ra.index(max(ra)) == rb.index(max(rb)):
                agree += 1
            elif first_bad < 0:
                first_bad = p
            d = max(abs(x - y) for x, y in zip(ra, rb))
            maxd = max(maxd, d)
            if p == 0:
                maxd0 = d
            scale = max(scale, max(abs(x) for x in ra))
    ok = n > 0 and agree >= min_agree * n and len(a) == len(b)
    print(f"{'ok' if ok else 'FAIL'} {label}: {n} positions, argmax agree {agree}/{n}, "
          f"max|dlogit| {maxd:.3g} (first position {maxd0:.3g}; max|logit| {scale:.3g})"
          + (f", first disagreement at {first_bad}" if first_bad >= 0 else "")
          + ("" if len(a) == len(b) else f", lengths differ ({len(a)} vs {len(b)} floats)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
