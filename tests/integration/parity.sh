#!/bin/sh
# CPU engine parity with llama.cpp's golden runs (see parity.py).
exec python3 "$(dirname "$0")/parity.py"
