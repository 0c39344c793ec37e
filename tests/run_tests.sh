#!/bin/sh
# Runs every unit test binary in $BUILD/tests and every integration script in
# tests/integration, prints each one's output, and ends with one summary line.
# Fixtures come from $SHARED (../shared); tests that need them say so and skip
# only when that folder is absent.
BUILD=${BUILD:-build}
SHARED=${SHARED:-../shared}
export BUILD SHARED
export APR_BIN="$(cd "$BUILD" && pwd)"
[ -d "$SHARED" ] || echo "note: $SHARED is absent: fixture-based tests will skip"
pass=0; fail=0; failed=""
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    case "$t" in *.d) continue;; esac
    echo "== $t"
    if "$t"; then pass=$((pass + 1)); else fail=$((fail + 1)); failed="$failed $t"; fi
done
for t in tests/integration/*.sh; do
    [ -f "$t" ] || continue
    echo "== $t"
    if sh "$t"; then pass=$((pass + 1)); else fail=$((fail + 1)); failed="$failed $t"; fi
done
[ -n "$failed" ] && echo "failed:$failed"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
