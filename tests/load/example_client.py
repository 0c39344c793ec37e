#!/usr/bin/python3
"""The smallest useful apr client: one generate request over ZeroMQ + msgpack
(proto/PROTOCOL.md), the text streamed to stdout as the tokens come, the
timings on stderr. Debian: apt install python3-zmq python3-msgpack.

    example_client.py ENDPOINT PROMPT [MAX_TOKENS]
"""
import sys

import msgpack
import zmq


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    endpoint, prompt = sys.argv[1], sys.argv[2]
    max_tokens = int(sys.argv[3]) if len(sys.argv) == 4 else 32
    sock = zmq.Context.instance().socket(zmq.DEALER)  # no delimiter frame
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send(msgpack.packb({"op": "generate", "id": 1, "prompt": prompt,
                             "max_tokens": max_tokens, "temperature": 0}))
    while True:
        if not sock.poll(30000):
            sys.exit(f"no reply from {endpoint} within 30 s")
        ev = msgpack.unpackb(sock.recv(), raw=False)
        if ev["event"] == "token":
            sys.stdout.write(ev["text"])
            sys.stdout.flush()
        elif ev["event"] == "done":
            t, u = ev["timings"], ev["usage"]
            print(f"\n{u['completion_tokens']} tokens ({ev['finish_reason']}), ttft "
                  f"{t['ttft_ms']:.1f} ms, decode {t['decode_tok_s']:.1f} tok/s", file=sys.stderr)
            return 0
        elif ev["event"] == "error":
            print(f"error {ev['code']}: {ev['message']}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
