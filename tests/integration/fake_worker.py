#!/usr/bin/python3
"""A stand-in apr-worker for pipeline.py (apr-coord --worker-bin): it speaks
the coordinator <-> worker protocol (proto/PROTOCOL.md) but computes nothing.
Every row it writes makes token 5 the best (a candidate row when the step
asks for one, else a full row), so a greedy request yields 5, 5, 5 ...

APR_FAKE_BAD names a way to get the first candidate row wrong, on the first
start only (APR_FAKE_DIR/starts counts them), so that the coordinator must
refuse the row, replace this worker, and then finish the request:
  count  more candidates than asked     range  an id outside the vocabulary
  order  candidates out of order        nan    a NaN logit
  twice  the same id twice
  bell   the doorbell (proto.h apr_doorbell) rung with one row more than written
Like apr-worker it rings the doorbell (the step's row count, then its id, in
the segment's last 64 bytes) before it sends done. It takes every message from
the socket, and checks the coordinator's step box (proto.h apr_stepbox, before
the doorbell) beside each step: the box must hold exactly that step's bytes
when the message before it was a step, and must not hold it otherwise (a trim
may still be ahead of it); APR_FAKE_DIR/box gets "copies wrong" counts, and
APR_FAKE_DIR/ahead a line "entries ahead" for each step (ahead: the step's hint
that the next step is its stream's alone, 0 or 1).
"""
import mmap, os, struct, sys, time

import msgpack, zmq

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
N_VOCAB = int(os.environ.get("APR_FAKE_VOCAB", "512"))
BAD = os.environ.get("APR_FAKE_BAD", "")
state = os.path.join(os.environ["APR_FAKE_DIR"], "starts")
starts = int(open(state).read()) + 1 if os.path.exists(state) else 1
open(state, "w").write(str(starts))
bad = BAD if starts == 1 else ""

fd = int(args["--logits-fd"])
shm = mmap.mmap(fd, os.fstat(fd).st_size)
ctx = zmq.Context()
ctl = ctx.socket(zmq.DEALER)
ctl.setsockopt(zmq.ROUTING_ID, args["--name"].encode())
ctl.connect(args["--connect"])
hb = ctx.socket(zmq.DEALER)
hb.setsockopt(zmq.ROUTING_ID, (args["--name"] + ".hb").encode())
hb.connect(args["--connect"])
pid = os.getpid()
ctl.send(msgpack.packb({"t": "hello", "ok": True, "backend": "cpu", "pid": pid, "n_vocab": N_VOCAB,
                        "n_ctx": int(args["--ctx"]), "n_seq": int(args["--n-seq"]),
                        "max_batch": int(args["--max-batch"]), "max_logits": int(args["--max-logits"])}))


def cand_row(k):
    """The row for K = k, and whether it is the bad one (order and twice
    need a row of two candidates at least)."""
    c = [(5, 10.0), (6, 9.0), (7, 9.0), (8, 1.0)][:k]  # ties: the lower id first
    if bad == "count":
        c = [(5, 10.0)] * (k + 1)
    elif bad == "range":
        c[0] = (N_VOCAB, 10.0)
    elif bad == "order" and k >= 2:
        c[0], c[1] = c[1], c[0]
    elif bad == "nan":
        c[0] = (5, float("nan"))
    elif bad == "twice" and k >= 2:
        c[1] = (5, 9.0)
    else:
        return pack(c), False
    return pack(c), True


def pack(c):
    return struct.pack("<i", len(c)) + b"".join(struct.pack("<if", i, v) for i, v in c)


BOX = len(shm) - 64 - 16384
box_copies = box_wrong = 0
prev = None  # the type of the message before this one
last_hb = 0
while True:
    if time.time() - last_hb > 0.2:
        hb.send(msgpack.packb({"t": "hb", "pid": pid}))
        last_hb = time.time()
    if not ctl.poll(100):
        continue
    raw = ctl.recv()
    m = msgpack.unpackb(raw, raw=False)
    kind, prev = prev, m["t"]
    if m["t"] == "shutdown":
        sys.exit(0)
    if m["t"] != "step":
        continue
    box_step, box_len = struct.unpack_from("<QI", shm, BOX)
    if box_step == m["step"]:
        ok = kind == "step" and shm[BOX + 64:BOX + 64 + box_len] == raw
        box_copies += ok
        box_wrong += not ok
    elif kind == "step" and len(raw) <= 16384 - 64:
        box_wrong += 1  # the step could have gone through the box and did not
    open(os.path.join(os.environ["APR_FAKE_DIR"], "box"), "w").write(f"{box_copies} {box_wrong}")
    with open(os.path.join(os.environ["APR_FAKE_DIR"], "ahead"), "a") as f:
        f.write(f"{len(m['token'])} {int(m.get('ahead', False))}\n")  # entries, the step's ahead hint
    topk = m.get("topk", [0] * len(m["want"]))
    r = 0
    for w, k in zip(m["want"], topk):
        if not w:
            continue
        at = r * N_VOCAB * 4
        if k:
            row, was_bad = cand_row(k)
            bad = "" if was_bad else bad
        else:
            row = struct.pack(f"<{N_VOCAB}f", *[10.0 if i == 5 else 0.0 for i in range(N_VOCAB)])
        shm[at:at + len(row)] = row
        r += 1
    bell = len(shm) - 64
    shm[bell + 8:bell + 12] = struct.pack("<i", r + 1 if bad == "bell" else r)
    shm[bell:bell + 8] = struct.pack("<Q", m["step"])
    bad = "" if bad == "bell" else bad
    ctl.send(msgpack.packb({"t": "done", "step": m["step"], "ok": True, "n_logits": r, "ms": 0.1}))
