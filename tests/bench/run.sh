#!/bin/sh
# Runs the CPU benchmarks built in $BUILD/bench (make bench); each prints its
# own figures. One line per benchmark below; a missing binary is reported and
# skipped, a failing one makes the run fail.
BUILD=${BUILD:-build}
SHARED=${SHARED:-../shared}
export BUILD SHARED
status=0
bench() {
    name=$1; shift
    if [ ! -x "$BUILD/bench/$name" ]; then
        echo "== $name: not built, skipped"
        return
    fi
    echo "== $name $*"
    "$BUILD/bench/$name" "$@" || { echo "$name: FAILED"; status=1; }
}

bench bench_loader
bench bench_sampler
bench bench_tokenizer
bench bench_kernels
exit $status
