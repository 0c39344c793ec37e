#!/bin/sh
# deploy/: the install script into temporary trees, the unit it installs
# (systemd-analyze verify, which needs no running systemd), the example
# configuration round-tripping through `apr-coord --print-config`, bad
# configuration files (exit 2, one line naming file:line), flags winning over
# the file, and apr-coord serving from a --config file until SIGTERM.
APR_BIN=${APR_BIN:-build}
SHARED=${SHARED:-../shared}
COORD="$APR_BIN/apr-coord"
APR="$APR_BIN/apr"
[ -x "$COORD" ] || { echo "FAIL: $COORD not built"; exit 1; }

tmp=$(mktemp -d) || exit 1
coord_pid=
cleanup() {
    [ -n "$coord_pid" ] && kill -9 "$coord_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
fails=0
checks=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
check() { checks=$((checks + 1)); }

# ---- install.sh into a temporary prefix
had_user=no
getent passwd apr >/dev/null 2>&1 && had_user=yes
P="$tmp/prefix"
check
BUILD="$APR_BIN" PREFIX="$P" sh deploy/install.sh >"$tmp/install.out" 2>&1 ||
    fail "install.sh into $P: exit $?: $(cat "$tmp/install.out")"
for f in bin/apr bin/apr-coord bin/apr-worker; do
    check
    [ -x "$P/$f" ] || fail "install.sh: $P/$f missing or not executable"
done
check
[ -f "$P/lib/systemd/system/apr-coord.service" ] || fail "install.sh: no unit in $P/lib/systemd/system"
check
cmp -s "$P/etc/apr/apr.conf" deploy/apr.conf || grep -q "$P/etc/apr/apr.conf" "$P/etc/apr/apr.conf" ||
    fail "install.sh: $P/etc/apr/apr.conf is not the example config with its paths"
check
( cd "$P" && find . -type f | sort ) >"$tmp/tree"
printf '%s\n' ./bin/apr ./bin/apr-coord ./bin/apr-worker ./etc/apr/apr.conf \
    ./lib/systemd/system/apr-coord.service >"$tmp/tree.want"
cmp -s "$tmp/tree" "$tmp/tree.want" || fail "install.sh: unexpected tree: $(cat "$tmp/tree")"
check
grep -q "not created" "$tmp/install.out" || fail "install.sh: no note that the user was not created"
check
[ "$had_user" = no ] && getent passwd apr >/dev/null 2>&1 && fail "install.sh made user apr under a temporary prefix"
unit="$P/lib/systemd/system/apr-coord.service"
check
grep -q "^ExecStart=$P/bin/apr-coord --config $P/etc/apr/apr.conf --run-dir %t/apr\$" "$unit" ||
    fail "installed unit: ExecStart does not point into $P: $(grep ExecStart= "$unit")"
check
grep -q /usr/local "$unit" && fail "installed unit still names /usr/local: $(grep -n /usr/local "$unit")"

# a second install keeps the host's configuration
echo "# edited by the operator" >>"$P/etc/apr/apr.conf"
check
BUILD="$APR_BIN" PREFIX="$P" sh deploy/install.sh >"$tmp/install.out" 2>&1 || fail "second install.sh: exit $?"
grep -q "edited by the operator" "$P/etc/apr/apr.conf" || fail "install.sh overwrote an existing config"
grep -q "kept the existing" "$tmp/install.out" || fail "install.sh does not say it kept the config"

# DESTDIR: files staged under it, paths inside them without it; a given UNITDIR
D="$tmp/dest"
check
BUILD="$APR_BIN" DESTDIR="$D" UNITDIR=/etc/systemd/system sh deploy/install.sh >"$tmp/install.out" 2>&1 ||
    fail "install.sh DESTDIR=$D: exit $?: $(cat "$tmp/install.out")"
check
[ -x "$D/usr/local/bin/apr-coord" ] && [ -f "$D/usr/local/etc/apr/apr.conf" ] ||
    fail "install.sh DESTDIR: files not under $D/usr/local"
check
grep -q "^ExecStart=/usr/local/bin/apr-coord --config /usr/local/etc/apr/apr.conf " \
    "$D/etc/systemd/system/apr-coord.service" 2>/dev/null || fail "install.sh DESTDIR: unit not in UNITDIR or has DESTDIR in its paths"
check
[ "$had_user" = no ] && getent passwd apr >/dev/null 2>&1 && fail "install.sh made user apr under DESTDIR"

# refused: relative prefix, a '%' (a systemd specifier), a missing build
for bad in "PREFIX=relative/dir" "PREFIX=/opt/a%b" "PREFIX=/opt/a b" "BUILD=$tmp/nothing"; do
    check
    env BUILD="$APR_BIN" "$bad" sh deploy/install.sh >"$tmp/out" 2>"$tmp/err"
    st=$?
    [ "$st" -eq 2 ] && [ -s "$tmp/err" ] || fail "install.sh with $bad: exit $st, stderr '$(cat "$tmp/err")'"
done

# ---- the unit parses: systemd-analyze verify wants ExecStart's binary to
# exist, so it checks the copy installed into $P. Any output is a finding
# (unknown keys and bad values are only warnings to it).
if ! command -v systemd-analyze >/dev/null 2>&1; then
    fail "systemd-analyze not found: install Debian's systemd package (deploy/setup.sh does)"
else
    check
    out=$(systemd-analyze verify "$unit" 2>&1)
    st=$?
    [ "$st" -eq 0 ] && [ -z "$out" ] || fail "systemd-analyze verify $unit: exit $st: $out"
    # and it does notice mistakes
    sed 's/^Restart=on-failure$/Restart=on-failure\nRestartt=always/' "$unit" >"$tmp/broken.service"
    check
    out=$(systemd-analyze verify "$tmp/broken.service" 2>&1)
    echo "$out" | grep -q "Restartt" || fail "systemd-analyze verify missed an unknown key: $out"
fi
check
for want in "^User=apr\$" "^RuntimeDirectory=apr\$" "^RuntimeDirectoryMode=0700\$" "^LimitMEMLOCK=" \
    "^LimitNOFILE=" "^TasksMax=" "^Restart=on-failure\$" "^RestartPreventExitStatus=2\$"; do
    grep -q "$want" deploy/apr-coord.service || fail "deploy/apr-coord.service lacks $want"
done
check
grep -Eq "^(PrivateDevices|DevicePolicy|DeviceAllow|ProtectClock|MemoryDenyWriteExecute)=" deploy/apr-coord.service &&
    fail "deploy/apr-coord.service sets an option that hides the GPU from CUDA"

# ---- the configuration round-trips: parse -> print -> parse -> print
check
if "$COORD" --config deploy/apr.conf --print-config >"$tmp/p1" 2>"$tmp/err"; then
    "$COORD" --config "$tmp/p1" --print-config >"$tmp/p2" 2>>"$tmp/err" || fail "printed config does not parse: $(cat "$tmp/err")"
    cmp -s "$tmp/p1" "$tmp/p2" || fail "config does not round-trip: $(diff "$tmp/p1" "$tmp/p2")"
    # every setting of the example is in the effective configuration
    grep -v '^[[:space:]]*#' deploy/apr.conf | grep '=' | sed 's/[[:space:]]*=[[:space:]]*/ = /' |
        while IFS= read -r line; do
            grep -qxF "$line" "$tmp/p1" || echo "$line"
        done >"$tmp/missing"
    [ -s "$tmp/missing" ] && fail "--print-config lost settings: $(cat "$tmp/missing")"
    [ -s "$tmp/err" ] && fail "--print-config wrote to stderr: $(cat "$tmp/err")"
else
    fail "apr-coord --config deploy/apr.conf --print-config: exit $?: $(cat "$tmp/err")"
fi
# the installed copy too (its worker_bin comment points into $P)
check
"$P/bin/apr-coord" --config "$P/etc/apr/apr.conf" --print-config >"$tmp/p3" 2>"$tmp/err" ||
    fail "installed apr-coord --config installed apr.conf --print-config: $(cat "$tmp/err")"
grep -qx "worker_bin = $P/bin/apr-worker" "$tmp/p3" || fail "installed apr-coord does not find its apr-worker: $(cat "$tmp/p3")"

# flags win over the file, before or after --config
for args in "--max-batch 3 --config deploy/apr.conf" "--config deploy/apr.conf --max-batch 3"; do
    check
    # shellcheck disable=SC2086
    "$COORD" $args --print-config -v >"$tmp/out" 2>&1 || fail "$args: exit $?: $(cat "$tmp/out")"
    grep -qx "max_batch = 3" "$tmp/out" && grep -qx "verbose = true" "$tmp/out" ||
        fail "flags do not win over the file ($args): $(cat "$tmp/out")"
done
check
printf 'max_batch = 8\n' >"$tmp/nomodel.conf"
"$COORD" --config "$tmp/nomodel.conf" -m /x.gguf --print-config 2>&1 | grep -qx "model = /x.gguf" ||
    fail "-m with a config that has no model"

# ---- bad files: exit 2, nothing on stdout, one line on stderr that names
# FILE:LINE and says what is wrong
# bad NAME LINE WORDS CONTENT: CONTENT is printf'd into the file
bad() {
    name=$1; line=$2; words=$3; shift 3
    f="$tmp/$name.conf"
    printf "$@" >"$f"
    check
    "$COORD" --config "$f" >"$tmp/out" 2>"$tmp/err"
    st=$?
    [ "$st" -eq 2 ] || fail "$name: exit $st, want 2 ($(cat "$tmp/err"))"
    [ -s "$tmp/out" ] && fail "$name: printed on stdout: $(cat "$tmp/out")"
    [ "$(wc -l <"$tmp/err")" -eq 1 ] || fail "$name: stderr is not one line: $(cat "$tmp/err")"
    grep -qF "$f:$line: " "$tmp/err" || fail "$name: the error does not name $f:$line: $(cat "$tmp/err")"
    grep -qF "$words" "$tmp/err" || fail "$name: the error does not say '$words': $(cat "$tmp/err")"
}
bad unknown-key 2 "unknown key 'model_path'" 'model = /m.gguf\nmodel_path = /m.gguf\n'
bad dash-key 1 "max_batch" 'max-batch = 4\n'
bad duplicate 4 "duplicate key 'threads' (first set on line 2)" '# c\nthreads = 2\nmodel = /m\nthreads = 3\n'
bad not-int 1 "threads: 'four' is not an integer" 'threads = four\n'
bad out-of-range 1 "max_batch: '0' is not an integer in [1, 256]" 'max_batch = 0\n'
bad too-big 1 "chunk" 'chunk = 3841\n'
bad overflow 1 "ctx" 'ctx = 99999999999999999999\n'
bad no-equals 3 "expected 'key = value'" 'model = /m\n\nworkers cpu\n'
bad empty-value 1 "model: empty value" 'model =\n'
bad trailing-comment 1 "comments go on their own line" 'threads = 4  # cores\n'
bad bad-bool 1 "verbose: 'yes' is not true or false" 'verbose = yes\n'
bad bad-workers 1 "is not a list of cpu and cuda" 'workers = cpu,gpu\n'
bad too-many-workers 1 "at most" 'workers = cpu,cpu,cpu,cpu,cpu\n'
bad empty-worker 1 "is not a list of cpu and cuda" 'workers = cpu,\n'
bad bad-listen 1 "is not a tcp:// or ipc:// endpoint" 'listen = http://127.0.0.1:80\n'
bad control-char 1 "control character" 'model = /a\033b\n'
bad nul-byte 2 "NUL byte" 'model = /m\nthreads = 1\000x\n'
bad long-line 2 "line longer than 8192 bytes" "model = /m\nrun_dir = /%09000d\n" 0
bad long-last-line 1 "line longer than 8192 bytes" "# %09000d" 0
check
"$COORD" --config "$tmp/absent.conf" >"$tmp/out" 2>"$tmp/err"
st=$?
[ "$st" -eq 2 ] && grep -qF "$tmp/absent.conf: No such file or directory" "$tmp/err" ||
    fail "missing config: exit $st: $(cat "$tmp/err")"
check
"$COORD" --config "$tmp" >"$tmp/out" 2>"$tmp/err"
st=$?
[ "$st" -eq 2 ] && grep -qF "$tmp: Is a directory" "$tmp/err" || fail "directory as config: exit $st: $(cat "$tmp/err")"
check
"$COORD" --config deploy/apr.conf --config deploy/apr.conf >"$tmp/out" 2>"$tmp/err"
[ $? -eq 2 ] && grep -q "twice" "$tmp/err" || fail "--config twice: $(cat "$tmp/err")"
check
"$COORD" --config "$tmp/nomodel.conf" >"$tmp/out" 2>"$tmp/err"
[ $? -eq 2 ] && grep -q "no model" "$tmp/err" || fail "config without a model: $(cat "$tmp/err")"
check
"$COORD" --config deploy/apr.conf --threads 0 >"$tmp/out" 2>"$tmp/err"
[ $? -eq 2 ] && grep -qF -- "--threads: '0' is not an integer in [1, 1024]" "$tmp/err" ||
    fail "a bad flag beside --config: $(cat "$tmp/err")"
check
"$COORD" -m /x.gguf --listen ' tcp://127.0.0.1:1' --print-config >"$tmp/out" 2>"$tmp/err"
[ $? -eq 2 ] && [ ! -s "$tmp/out" ] || fail "--print-config printed a value that cannot be read back"

# ---- apr-coord serves from a config file, with its worker sockets in run_dir
MODEL="$SHARED/models/stories260K.gguf"
if [ ! -f "$MODEL" ]; then
    echo "deploy: $MODEL absent, serving from --config skipped"
else
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    E="tcp://127.0.0.1:$port"
    mkdir -m 0700 "$tmp/run"
    cat >"$tmp/serve.conf" <<EOF
# written by tests/integration/deploy.sh
model = $MODEL
listen = $E
workers = cpu
threads = 1
max_batch = 2
queue = 4
run_dir = $tmp/run
EOF
    "$COORD" --config "$tmp/serve.conf" 2>"$tmp/coord.log" &
    coord_pid=$!
    tries=0
    until "$APR" status --endpoint "$E" --timeout 1 >"$tmp/status" 2>&1; do
        tries=$((tries + 1))
        if [ $tries -ge 60 ] || ! kill -0 "$coord_pid" 2>/dev/null; then
            break
        fi
        sleep 0.5
    done
    check
    if grep -q "^cpu0 .* ready " "$tmp/status"; then
        check
        [ -S "$tmp/run/workers" ] || fail "no worker socket in run_dir $tmp/run"
        check
        out=$("$APR" generate --endpoint "$E" -p "Once upon a time" -n 4 --timeout 10 2>&1) ||
            fail "apr generate against the --config server: $out"
    else
        fail "apr-coord --config did not become ready: $(cat "$tmp/status") $(cat "$tmp/coord.log")"
    fi
    kill -TERM "$coord_pid"
    wait "$coord_pid"
    st=$?
    coord_pid=
    check
    [ "$st" -eq 0 ] || fail "apr-coord exit status $st after SIGTERM: $(tail -5 "$tmp/coord.log")"
    check
    [ -e "$tmp/run/workers" ] && fail "the worker socket outlived apr-coord"
    check
    [ -d "$tmp/run" ] || fail "apr-coord removed the run_dir it was given"
fi

if [ "$fails" -ne 0 ]; then
    echo "deploy: $fails of $checks checks failed"
    exit 1
fi
echo "deploy: $checks checks passed"
