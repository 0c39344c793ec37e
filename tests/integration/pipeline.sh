#!/bin/sh
# The pipeline end to end with real processes (see pipeline.py). Debian's python3
# has python3-zmq and python3-msgpack (deploy/setup.sh installs them).
exec /usr/bin/python3 "$(dirname "$0")/pipeline.py"
