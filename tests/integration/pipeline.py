#!/usr/bin/python3
"""The pipeline end to end: real apr-coord and apr-worker processes on random
ports, driven over ZeroMQ with msgpack the way any client would.

  golden       stories260K greedy text (also with --chunk 3) through the pipeline == llama.cpp's pieces
  concurrent   16 greedy requests at once, each == its single-request text
  kill -9      the worker killed while 8 long requests stream: all 8 complete,
               identical to a fault-free run, the restart is counted
  sigstop      a hung worker (SIGSTOP) misses heartbeats and is replaced
  bad input    random bytes, truncated msgpack, wrong types, unknown ops,
               out-of-range values, a 3 MB prompt, 300 of them in a burst: each
               answered with an error; a valid request afterwards is served
  cancel       cancel mid-stream ends the stream with finish_reason cancelled
  busy         a full queue answers busy
  cli          apr generate / apr status against the same server
  sampling     stop strings are not sent; a seeded sampled request gives the
               same text alone and in a crowd
  chat         (tiny-qwen2-a, ChatML) chat == generate on the rendered prompt
  fallback     --workers cuda,cpu serves on the CPU where there is no GPU;
               --workers cuda alone exits 1 with the worker's reason
  candidates   greedy and top-k requests get candidate rows (the golden,
               concurrent and crowd tests above run on them; the seeded test's
               repeat_penalty keeps one sequence on full rows); a worker that
               writes a bad candidate row (fake_worker.py) is replaced and the
               request still completes
"""
import json, os, random, signal, socket, subprocess, sys, tempfile, time

import msgpack, zmq

BIN = os.environ.get("APR_BIN", "build")
SHARED = os.environ.get("SHARED", "../shared")
MODEL = os.path.join(SHARED, "models", "stories260K.gguf")
failures = 0


def fail(msg):
    global failures
    failures += 1
    print("  FAIL:", msg)


def check(cond, msg):
    if not cond:
        fail(msg)
    return cond


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Server:
    def __init__(self, *extra, model=MODEL):
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "apr-coord"), "-m", model, "--listen", self.endpoint, "--threads", "1",
             "--ctx", "256", *extra], stdout=self.log, stderr=subprocess.STDOUT)
        self.ctx = zmq.Context.instance()
        deadline = time.time() + 30
        while time.time() < deadline:
            st = self.status(timeout=1000)
            if st and any(w["state"] == "ready" for w in st["workers"]):
                return
            if self.proc.poll() is not None:
                break
        self.stop()
        raise SystemExit("apr-coord did not become ready:\n" + self.logtext())

    def sock(self):
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.endpoint)
        return s

    def status(self, timeout=5000):
        s = self.sock()
        s.send(msgpack.packb({"op": "status"}))
        ev = None
        if s.poll(timeout):
            ev = msgpack.unpackb(s.recv(), raw=False)
        s.close()
        return ev

    def worker_pid(self):
        return self.status()["workers"][0]["pid"]

    def logtext(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                fail("apr-coord did not stop on SIGTERM")
        return self.proc.returncode


def collect(sock, ids, timeout_s=60, on_token=None):
    """Reads replies until every id has its done or error event."""
    out = {i: {"text": "", "tokens": [], "done": None, "error": None, "events": []} for i in ids}
    left = set(ids)
    deadline = time.time() + timeout_s
    while left and time.time() < deadline:
        if not sock.poll(1000):
            continue
        ev = msgpack.unpackb(sock.recv(), raw=False)
        r = out.get(ev.get("id"))
        if r is None:
            continue
        r["events"].append(ev)
        if ev["event"] == "token":
            r["text"] += ev["text"]
            r["tokens"].append(ev["token"])
            if on_token:
                on_token(ev)
        elif ev["event"] == "done":
            r["done"] = ev
            left.discard(ev["id"])
        elif ev["event"] == "error":
            r["error"] = ev
            left.discard(ev["id"])
    for i in left:
        fail(f"request {i}: no done or error within {timeout_s} s")
    return out


def generate(sock, rid, prompt, n, **kw):
    req = {"op": "generate", "id": rid, "prompt": prompt, "max_tokens": n, "temperature": 0}
    req.update(kw)
    sock.send(msgpack.packb(req))


def test_golden(srv):
    print("golden: stories260K through the pipeline vs llama.cpp")
    s = srv.sock()
    recs = [json.loads(l) for l in open(os.path.join(SHARED, "golden", "stories260K.jsonl"))]
    for i, rec in enumerate(recs):
        generate(s, i, rec["prompt"], len(rec["steps"]), add_special=rec["add_bos"])
    res = collect(s, range(len(recs)))
    for i, rec in enumerate(recs):
        want = "".join(st["piece"] for st in rec["steps"])
        r = res[i]
        if check(r["done"] is not None, f"golden {i}: {r['error']}"):
            check(r["text"] == want, f"golden {i}: text differs\n    got  {r['text']!r}\n    want {want!r}")
            check(r["tokens"] == [st["token"] for st in rec["steps"]], f"golden {i}: token ids differ")
            check(r["done"]["finish_reason"] == "length", f"golden {i}: finish {r['done']['finish_reason']}")
            check(r["done"]["usage"]["completion_tokens"] == len(rec["steps"]), f"golden {i}: usage")
    s.close()


PROMPTS = ["Once upon a time", "The little dog", "Lily and Tom went to the", "One day, a big bird",
           "Tom had a red ball", "The sun was", "A cat sat", "Mom said", "The boy ran", "She found a",
           "In the park", "The big tree", "Ben and Mia", "It was a rainy day", "The fish", "They played"]


def test_concurrent(srv):
    print("concurrent: 16 greedy requests at once vs one at a time")
    s = srv.sock()
    single = {}
    for i, p in enumerate(PROMPTS):
        generate(s, i, p, 48)
        single[i] = collect(s, [i])[i]["text"]
    socks = [srv.sock() for _ in PROMPTS]
    for i, (p, so) in enumerate(zip(PROMPTS, socks)):
        generate(so, i, p, 48)
    for i, so in enumerate(socks):
        r = collect(so, [i])[i]
        check(r["done"] is not None and r["text"] == single[i],
              f"concurrent {i}: {r['text']!r} != single {single[i]!r} ({r['error']})")
        so.close()
    s.close()


def test_kill(srv, sig, label):
    print(f"{label}: 8 long streams while the worker gets {signal.Signals(sig).name}")
    s = srv.sock()
    ids = list(range(100, 108))
    for i in ids:
        generate(s, i, PROMPTS[i % 16], 200)
    ref = collect(s, ids)
    before = srv.status()["restarts"]
    pid = srv.worker_pid()
    fired = []

    def on_token(ev):
        if not fired and ev["index"] >= 20:
            fired.append(time.time())
            os.kill(pid, sig)

    for i in ids:
        generate(s, i, PROMPTS[i % 16], 200)
    got = collect(s, ids, on_token=on_token)
    check(fired, f"{label}: the worker was never signalled")
    for i in ids:
        r = got[i]
        if check(r["done"] is not None, f"{label} {i}: {r['error']}"):
            check(r["text"] == ref[i]["text"], f"{label} {i}: text differs from the fault-free run")
            idx = [e["index"] for e in r["events"] if e["event"] == "token"]
            check(idx == list(range(len(idx))), f"{label} {i}: token indices lost or repeated")
    st = srv.status()
    check(st["restarts"] >= before + 1, f"{label}: restarts {st['restarts']} (was {before})")
    check(st["workers"][0]["pid"] != pid, f"{label}: worker pid unchanged")
    if sig == signal.SIGSTOP:
        try:
            os.kill(pid, signal.SIGKILL)  # it should be gone already
        except ProcessLookupError:
            pass
    s.close()


def test_bad_input(srv):
    print("bad input: each frame gets an error, the server keeps serving")
    s = srv.sock()
    rnd = random.Random(7)
    frames = []
    for _ in range(100):
        frames.append(bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 64))))
    good = msgpack.packb({"op": "generate", "prompt": "x", "max_tokens": 3})
    for k in range(1, len(good)):
        frames.append(good[:k])
    frames += [msgpack.packb(x) for x in [
        [], 5, "generate", {"op": 5}, {"op": "fly"}, {"op": "generate", "prompt": 7},
        {"op": "generate", "prompt": "a", "temperature": -1}, {"op": "generate", "prompt": "a", "top_p": 2},
        {"op": "generate", "prompt": "a", "max_tokens": 0}, {"op": "generate", "prompt": "a", "bogus": 1},
        {"op": "generate", "prompt_tokens": [1, 99999]}, {"op": "generate", "prompt_tokens": [-1]},
        {"op": "generate", "prompt": "a" * 3_000_000}, 
        {"op": "detokenize", "tokens": [123456789]}, {"op": "cancel"}, {"op": "generate", "prompt": "a", "v": 9},
        {"op": "generate", "prompt": "a b " * 300},  # longer than the 256-token context
    ]]
    frames.append(b"\x82\xa2op\xa8tokenize\xa4text\xa2\xff\xfe")  # a str that is not UTF-8
    while len(frames) < 300:
        frames.append(msgpack.packb({"op": "generate", "prompt": "a" * 3_000_000}))
    for f in frames:
        s.send(f)
    errors = 0
    codes = {}
    deadline = time.time() + 60
    while errors < len(frames) and time.time() < deadline:
        if not s.poll(1000):
            continue
        ev = msgpack.unpackb(s.recv(), raw=False)
        if ev["event"] == "error":
            errors += 1
            codes[ev["code"]] = codes.get(ev["code"], 0) + 1
            check(isinstance(ev.get("message"), str) and ev["message"], "error without a message")
        else:
            fail(f"bad input answered with {ev['event']}")
    check(errors == len(frames), f"bad input: {errors} error replies for {len(frames)} frames")
    print(f"  {errors} errors: {codes}")
    check(srv.proc.poll() is None, "apr-coord died on bad input")
    generate(s, "after", "Once upon a time", 8)
    r = collect(s, ["after"])["after"]
    check(r["done"] is not None and r["text"].startswith(", there was"), f"after bad input: {r}")
    s.close()


def test_cancel(srv):
    print("cancel: mid-stream")
    s = srv.sock()
    sent = []

    def on_token(ev):
        if ev["index"] == 3 and not sent:
            s.send(msgpack.packb({"op": "cancel", "id": "c1"}))
            sent.append(1)

    generate(s, "c1", "Once upon a time", 200)
    r = collect(s, ["c1"], on_token=on_token)["c1"]
    check(r["done"] is not None and r["done"]["finish_reason"] == "cancelled", f"cancel: {r['done']} {r['error']}")
    check(len(r["tokens"]) < 200, "cancel: the stream ran to the end")
    # the cancel reply itself
    s.send(msgpack.packb({"op": "cancel", "id": "nope"}))
    ev = msgpack.unpackb(s.recv(), raw=False) if s.poll(5000) else None
    check(ev and ev["event"] == "cancel" and ev["found"] is False, f"cancel of an unknown id: {ev}")
    s.close()


def test_busy():
    print("busy: --max-batch 1 --queue 2, 8 requests at once")
    srv = Server("--max-batch", "1", "--queue", "2")
    try:
        s = srv.sock()
        for i in range(8):
            generate(s, i, "Once upon a time", 100)
        res = collect(s, range(8))
        busy = sum(1 for r in res.values() if r["error"] and r["error"]["code"] == "busy")
        done = sum(1 for r in res.values() if r["done"])
        check(busy == 5 and done == 3, f"busy: {busy} busy and {done} done (want 5 and 3)")
        s.close()
    finally:
        srv.stop()


def test_cli(srv):
    print("cli: apr generate and apr status")
    s = srv.sock()
    generate(s, "ref", "Once upon a time", 16)
    want = collect(s, ["ref"])["ref"]["text"]
    s.close()
    p = subprocess.run([os.path.join(BIN, "apr"), "generate", "--endpoint", srv.endpoint, "-p", "Once upon a time",
                        "-n", "16", "--temperature", "0"], capture_output=True, timeout=60)
    check(p.returncode == 0, f"apr generate exit {p.returncode}: {p.stderr.decode()}")
    check(p.stdout.decode() == want, f"apr generate printed {p.stdout.decode()!r}, want {want!r}")
    p = subprocess.run([os.path.join(BIN, "apr"), "status", "--endpoint", srv.endpoint], capture_output=True, timeout=30)
    check(p.returncode == 0 and b"cpu0" in p.stdout, f"apr status: {p.returncode} {p.stdout!r} {p.stderr!r}")


def test_sampling(srv):
    print("sampling: stop strings; seeded sampling alone and in a crowd")
    s = srv.sock()
    generate(s, "full", "Once upon a time", 30)
    full = collect(s, ["full"])["full"]["text"]
    generate(s, "stop", "Once upon a time", 30, stop=[" girl", "zzz"])
    r = collect(s, ["stop"])["stop"]
    cut = full[:full.index(" girl")]
    check(r["done"] and r["done"]["finish_reason"] == "stop" and r["text"] == cut,
          f"stop: {r['text']!r} ({r['done'] and r['done']['finish_reason']}), want {cut!r}")
    params = dict(temperature=0.9, top_k=40, top_p=0.95, min_p=0.05, seed=1234, repeat_penalty=1.1)
    generate(s, "alone", "The little dog", 40, **params)
    alone = collect(s, ["alone"])["alone"]["text"]
    crowd = [srv.sock() for _ in range(8)]
    for i, so in enumerate(crowd):
        generate(so, i, PROMPTS[i], 40, temperature=1.0, seed=i)
    generate(s, "crowd", "The little dog", 40, **params)
    r = collect(s, ["crowd"])["crowd"]
    check(r["text"] == alone, f"seeded: {r['text']!r} in a crowd, {alone!r} alone")
    for i, so in enumerate(crowd):
        collect(so, [i])
        so.close()
    generate(s, "other", "The little dog", 40, **dict(params, seed=99))
    other = collect(s, ["other"])["other"]["text"]
    check(other != alone, "seeded: another seed gave the same text")
    s.close()


def test_chat():
    model = os.path.join(SHARED, "models", "tiny-qwen2-a.gguf")
    print("chat: tiny-qwen2-a, chat op vs generate on the ChatML text")
    srv = Server(model=model)
    try:
        s = srv.sock()
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
        s.send(msgpack.packb({"op": "chat", "id": "chat", "messages": msgs, "max_tokens": 12, "temperature": 0}))
        a = collect(s, ["chat"])["chat"]
        text = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        generate(s, "gen", text, 12)
        b = collect(s, ["gen"])["gen"]
        if check(a["done"] and b["done"], f"chat: {a['error']} {b['error']}"):
            check(a["tokens"] == b["tokens"] and a["text"] == b["text"], f"chat: {a['tokens']} != {b['tokens']}")
            check(a["done"]["usage"] == b["done"]["usage"], f"chat usage {a['done']['usage']} != {b['done']['usage']}")
        s.send(msgpack.packb({"op": "chat", "id": "bad", "messages": [{"role": "wizard", "content": "x"}]}))
        r = collect(s, ["bad"])["bad"]
        check(r["error"] is not None, f"chat with role wizard: {r}")
        s.close()
    finally:
        srv.stop()


def test_fallback():
    print("fallback: --workers cuda,cpu and --workers cuda without a GPU")
    if subprocess.run([os.path.join(BIN, "apr-worker"), "--devices"], capture_output=True).returncode == 0:
        print("  a CUDA device is present: skipped here (tests/gpu/run.sh covers it)")
        return
    srv = Server("--workers", "cuda,cpu")
    try:
        s = srv.sock()
        generate(s, 1, "Once upon a time", 8)
        r = collect(s, [1])[1]
        check(r["done"] is not None and r["text"].startswith(", there was"), f"fallback: {r}")
        st = srv.status()
        names = {w["name"]: w["state"] for w in st["workers"]}
        check(names.get("cpu0") == "ready" and names.get("cuda0") != "ready", f"fallback status: {names}")
        s.close()
    finally:
        srv.stop()
    p = subprocess.run([os.path.join(BIN, "apr-coord"), "-m", MODEL, "--listen", f"tcp://127.0.0.1:{free_port()}",
                        "--workers", "cuda"], capture_output=True, timeout=30)
    err = p.stderr.decode()
    check(p.returncode == 1 and "no worker could start" in err and "CUDA" in err,
          f"--workers cuda without a GPU: exit {p.returncode}, {err[-300:]!r}")


def test_bad_candidates():
    print("candidates: bad candidate rows or doorbells from a (fake) worker are refused, the worker replaced")
    fake = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_worker.py")
    for bad, why in [("count", "holds 2 candidates, 1 asked"), ("range", "an id outside the vocabulary"),
                     ("order", "candidates out of order"), ("nan", "a NaN or -inf logit"),
                     ("twice", "an id twice"), ("bell", "logit rows"), ("", None)]:
        with tempfile.TemporaryDirectory() as d:
            os.environ.update(APR_FAKE_BAD=bad, APR_FAKE_DIR=d)
            srv = Server("--worker-bin", fake)
            try:
                s = srv.sock()
                generate(s, "f", "Once upon a time", 4, temperature=0)
                generate(s, "k", "Once upon a time", 4, temperature=0.8, top_k=3, seed=1)
                r = collect(s, ["f", "k"])
                check(r["f"]["done"] is not None and r["f"]["tokens"] == [5, 5, 5, 5],
                      f"candidates {bad or 'good'}: greedy gave {r['f']['tokens']} ({r['f']['error']})")
                check(r["k"]["done"] is not None and set(r["k"]["tokens"]) <= {5, 6, 7} and len(r["k"]["tokens"]) == 4,
                      f"candidates {bad or 'good'}: top-k gave {r['k']['tokens']} ({r['k']['error']})")
                if not bad:
                    # a stream alone: its one-entry steps say ahead but for the one of its last token
                    # (proto.h, step's ahead); the steps of two streams never do
                    steps_before = open(os.path.join(d, "ahead")).read().split("\n")[:-1]
                    generate(s, "a", "Once upon a time", 4, temperature=0)
                    collect(s, ["a"])
                    lone = open(os.path.join(d, "ahead")).read().split("\n")[len(steps_before):-1]
                    check([x for x in lone if x.startswith("1 ")] == ["1 1", "1 1", "1 0"]
                          and all(x.endswith(" 0") for x in lone if not x.startswith("1 ")),
                          f"ahead hints of a lone stream's steps: {lone}")
                    check(all(x.endswith(" 0") for x in steps_before if not x.startswith("1 ")),
                          f"ahead hints on steps of several entries: {steps_before}")
                restarts = srv.status()["restarts"]
                s.close()
                box = open(os.path.join(d, "box")).read().split() if os.path.exists(os.path.join(d, "box")) else ["0", "0"]
            finally:
                srv.stop()
                for k in ("APR_FAKE_BAD", "APR_FAKE_DIR"):
                    os.environ.pop(k)
            log = srv.logtext()
            if why:
                check(why in log and restarts >= 1, f"candidates {bad}: restarts {restarts}, log:\n{log[-800:]}")
            else:
                check(restarts == 0, f"candidates: a good fake worker was restarted:\n{log[-800:]}")
                # the coordinator's step box (proto.h): each step after a step, never after another message
                check(int(box[0]) > 0 and box[1] == "0", f"step box: {box[0]} steps in it, {box[1]} wrong")


def main():
    if not os.path.exists(MODEL):
        print(f"pipeline: {MODEL} absent, skipped")
        return 0
    srv = Server("--heartbeat-timeout", "1000")
    try:
        test_golden(srv)
        test_concurrent(srv)
        test_kill(srv, signal.SIGKILL, "kill -9")
        test_kill(srv, signal.SIGSTOP, "sigstop")
        test_bad_input(srv)
        test_cancel(srv)
        test_cli(srv)
        test_sampling(srv)
    finally:
        rc = srv.stop()
        check(rc == 0, f"apr-coord exit status {rc} after SIGTERM")
        if failures:
            print("---- apr-coord log ----\n" + srv.logtext()[-6000:])
    test_busy()
    print("chunked prefill: --chunk 3 (prompts split over steps, decode interleaved)")
    srv = Server("--chunk", "3")
    try:
        test_golden(srv)
        test_concurrent(srv)
    finally:
        srv.stop()
    test_chat()
    test_fallback()
    test_bad_candidates()
    print("pipeline:", "FAILED" if failures else "ok", f"({failures} failures)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
