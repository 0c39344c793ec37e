# Sourced by the tests/load scenarios: fixtures, failure counting, and one
# apr-coord of their own on a free loopback port.
#   start_coord [apr-coord flags]   sets ENDPOINT; serves stories260K on 1 thread
#   stop_coord                      SIGTERM, and its log on failure
#   finish                          prints the verdict; the script's exit status
APR_BIN=${APR_BIN:-build}
SHARED=${SHARED:-../shared}
APR="$APR_BIN/apr"
MODEL="$SHARED/models/stories260K.gguf"
unset APR_ENDPOINT
fails=0
checks=0
fail() { echo "  FAIL: $*"; fails=$((fails + 1)); }
# check WHAT COMMAND...: counts a check and fails it when the command does.
check() { what=$1; shift; checks=$((checks + 1)); "$@" || fail "$what"; }

[ -x "$APR" ] || { echo "FAIL: $APR not built"; exit 1; }
if [ ! -f "$MODEL" ]; then
    echo "skip: $MODEL is absent"
    exit 0
fi
TMP=$(mktemp -d) || exit 1
COORD_PID=
cleanup() {
    [ -n "$COORD_PID" ] && kill -TERM "$COORD_PID" 2>/dev/null && wait "$COORD_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_coord() {
    ENDPOINT="tcp://127.0.0.1:$(free_port)"
    "$APR_BIN/apr-coord" -m "$MODEL" --listen "$ENDPOINT" --threads 1 --ctx 256 "$@" \
        >"$TMP/coord.log" 2>&1 &
    COORD_PID=$!
    tries=0
    until "$APR" status --endpoint "$ENDPOINT" --timeout 1 >/dev/null 2>&1; do
        tries=$((tries + 1))
        if [ $tries -gt 60 ] || ! kill -0 "$COORD_PID" 2>/dev/null; then
            echo "FAIL: apr-coord did not become ready:"
            cat "$TMP/coord.log"
            exit 1
        fi
        sleep 0.25
    done
}

stop_coord() {
    kill -TERM "$COORD_PID" 2>/dev/null
    wait "$COORD_PID"
    st=$?
    COORD_PID=
    [ "$st" -eq 0 ] || { fail "apr-coord exited with status $st"; cat "$TMP/coord.log"; }
}

finish() {
    echo "$checks checks, $fails failed"
    [ "$fails" -eq 0 ]
}
