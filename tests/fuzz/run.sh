#!/bin/sh
# Runs each libFuzzer target for FUZZ_SECONDS, seeded from tests/fuzz/corpus/NAME
# when present. A crash fails the run (and the reproducer is kept in build/fuzz).
SECS=${FUZZ_SECONDS:-60}
status=0
for bin in "$@"; do
    name=$(basename "$bin")
    seeds="tests/fuzz/corpus/$name"
    work="build/fuzz/work-$name"
    mkdir -p "$work"
    [ -d "$seeds" ] || seeds=""
    echo "== $name for ${SECS}s"
    if ! "$bin" -max_total_time="$SECS" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
            -artifact_prefix="build/fuzz/$name-" "$work" $seeds >"build/fuzz/$name.log" 2>&1; then
        status=1
        echo "$name: FAILED (see build/fuzz/$name.log)"
    fi
    tail -n 12 "build/fuzz/$name.log"
done
exit $status
