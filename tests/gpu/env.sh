# Sourced by the device scripts (run.sh, fusion.sh, ncu.sh, prefill.sh) from
# the repo root: where the carried binaries and libraries are, where logs and
# models go, and the helpers they share.
#   CARRY  the bundle (default .carry; tests/gpu/bundle.sh fills it)
#   OUT    logs (default /tmp/apr-gpu);  MODELS  synthetic models (default /tmp/apr-models)
set -u
C=${CARRY:-.carry}
export LD_LIBRARY_PATH="$PWD/$C/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUDA_MODULE_LOADING=EAGER
APR="$C/bin/apr"
LOG=${OUT:-/tmp/apr-gpu}
M=${MODELS:-/tmp/apr-models}
mkdir -p "$LOG" "$M"

# mk SHAPE: the path of a synthetic model of that shape (apr mkmodel --shape), made once
mk() {
    mk_p="$M/$1.gguf"
    [ -f "$mk_p" ] || "$APR" mkmodel --shape "$1" --vocab-from "$C/models/vocab-qwen2.gguf" -o "$mk_p" >&2 || return 1
    echo "$mk_p"
}

# rate WHAT LOGFILE: the tok/s of apr eval's last "WHAT: N tokens, T ms, R tok/s" line (prefill, decode)
rate() { sed -n "s/.*$1: [0-9]* tokens, [0-9.]* ms, \([0-9.]*\) tok\/s.*/\1/p" "$2" | tail -1; }
