#!/bin/sh
# The tests/load scenarios (apr load, apr bench, the Python example client),
# each against its own apr-coord on stories260K; see the scripts for what
# each checks. Fails when any of them does.
dir="$(dirname "$0")/../load"
failed=""
for t in "$dir"/*.sh; do
    case "$t" in */common.sh) continue ;; esac
    echo "-- $t"
    sh "$t" || failed="$failed $(basename "$t")"
done
[ -z "$failed" ] || { echo "FAIL:$failed"; exit 1; }
