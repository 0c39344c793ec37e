#!/bin/sh
# Fills .carry/ (ignored by git) with what tests/gpu/run.sh needs on the device
# machine, which has no libzmq/msgpack/liburing/utf8proc and no ../shared:
#   .carry/bin     apr, apr-coord, apr-worker and the GPU test binary (built
#                  here: make && make gpu)
#   .carry/lib     the shared libraries `ldd build/apr` lists, glibc's excepted
#   .carry/models  stories260K.gguf and a vocabulary-only GGUF for apr mkmodel
# Then: run tests/gpu/run.sh there with carry [".carry"].
set -eu
BUILD=${BUILD:-build}
SHARED=${SHARED:-../shared}
C=.carry
rm -rf "$C/bin" "$C/lib" "$C/models"
mkdir -p "$C/bin" "$C/lib" "$C/models"
cp "$BUILD/apr" "$BUILD/apr-coord" "$BUILD/apr-worker" "$BUILD/gpu/test_kernels_cuda" "$C/bin/"
ldd "$BUILD/apr" | awk '/=> \// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
    libc.so*|libm.so*|libresolv.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
    *) cp -L "$lib" "$C/lib/" ;;
    esac
done
# the kernel tracer (timeline.sh), where the toolkit has CUPTI
CUPTI=$(ls /usr/local/cuda/lib/libcupti.so /usr/local/cuda/lib64/libcupti.so /usr/local/cuda/extras/CUPTI/lib64/libcupti.so 2>/dev/null | head -1)
if [ -n "$CUPTI" ]; then
    cc -std=c17 -Wall -Wextra -Werror -O2 -shared -fPIC -I/usr/local/cuda/include tests/gpu/ktrace.c \
        -L"$(dirname "$CUPTI")" -lcupti -Wl,-rpath,'$ORIGIN' -o "$C/lib/libktrace.so"
    cp -L "$(dirname "$CUPTI")"/libcupti.so.[0-9]* "$C/lib/" 2>/dev/null || cp -L "$CUPTI" "$C/lib/"
fi
cp "$SHARED/models/stories260K.gguf" "$C/models/"
"$BUILD/gpu/mkvocab" "$SHARED/models/tiny-qwen2-a.gguf" "$C/models/vocab-qwen2.gguf"
du -sh "$C"
