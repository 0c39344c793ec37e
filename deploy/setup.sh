#!/usr/bin/env bash
# Installs what apr needs to build and test on Debian 12 (run as root).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    build-essential pkg-config git \
    libzmq3-dev libmsgpack-dev liburing-dev check libutf8proc-dev \
    clang libclang-rt-14-dev \
    python3 python3-zmq python3-msgpack \
    systemd >/dev/null
# systemd is here for `systemd-analyze verify` (tests/integration/deploy.sh),
# which works without systemd running as PID 1.
echo "apr: build dependencies installed"
