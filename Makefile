# apr — build, test, fuzz, bench.
#   make            build/apr, build/apr-coord, build/apr-worker (+ CUDA parts when nvcc exists)
#   make test       unit (Check) + integration tests, then the same under ASan+UBSan
#   make fuzz       libFuzzer targets, FUZZ_SECONDS each (default 60)
#   make demo       the main job on a model (MODEL=path, else a synthetic one)
#   make bench      CPU benchmarks that print figures
#   make gpu        GPU test binaries (build/gpu/), run on the device by tests/gpu/run.sh

BUILD   ?= build
SAN     ?= 0
SHARED  ?= $(abspath ../shared)
CC      ?= gcc
PKGS    := libzmq msgpack liburing check libutf8proc

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS))
PKG_LIBS   := $(shell pkg-config --libs libzmq msgpack liburing libutf8proc)
CHECK_LIBS := $(shell pkg-config --libs check)

OPT     ?= -O2
CFLAGS  := -std=c17 -D_GNU_SOURCE -Wall -Wextra -Werror -g $(OPT) -pthread -I. $(PKG_CFLAGS) $(EXTRA_CFLAGS)
LDFLAGS := -pthread $(EXTRA_LDFLAGS)
LDLIBS  := $(PKG_LIBS) -lm

ifeq ($(SAN),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

# CUDA: compiled whenever nvcc is found; cudart linked statically.
# CUDA_HOME is where nvcc really lives: /usr/local/bin/nvcc may be a wrapper script,
# so the toolkit is looked for in the usual places before nvcc's own directory.
ifeq ($(origin NVCC),undefined)
NVCC    := $(firstword $(wildcard /usr/local/cuda/bin/nvcc) $(shell command -v nvcc 2>/dev/null))
endif
CUDA_HOME := $(firstword $(patsubst %/lib64/libcudart_static.a,%,$(wildcard /usr/local/cuda/lib64/libcudart_static.a)) \
                         $(abspath $(dir $(NVCC))/..))
ifneq ($(NVCC),)
ifneq ($(SAN),1)
HAVE_CUDA  := 1
NVFLAGS    := -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I. -Xcompiler -Wall,-Wextra,-Werror,-fPIC
CFLAGS     += -DAPR_HAVE_CUDA=1
LDLIBS     += -L$(CUDA_HOME)/lib64 -L$(CUDA_HOME)/lib -lcudart_static -ldl -lrt -lstdc++
endif
endif

LIB_DIRS := model tokenizer proto worker coordinator client
LIB_SRCS := $(filter-out %/main.c,$(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.c)))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
CU_SRCS  := $(if $(HAVE_CUDA),$(wildcard cuda/*.cu))
CU_OBJS  := $(CU_SRCS:%.cu=$(BUILD)/obj/%.o)
LIBAPR   := $(BUILD)/libapr.a

BINS := $(BUILD)/apr $(BUILD)/apr-coord $(BUILD)/apr-worker

UNIT_SRCS  := $(wildcard tests/unit/test_*.c)
UNIT_BINS  := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
BENCH_SRCS := $(wildcard tests/bench/bench_*.c)
BENCH_BINS := $(BENCH_SRCS:tests/bench/%.c=$(BUILD)/bench/%)

all: $(BINS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -MMD -MP -c $< -o $@

$(LIBAPR): $(LIB_OBJS) $(CU_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/apr: $(BUILD)/obj/client/main.o $(LIBAPR)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/apr-coord: $(BUILD)/obj/coordinator/main.o $(LIBAPR)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/apr-worker: $(BUILD)/obj/worker/main.o $(LIBAPR)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(LIBAPR)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -o $@ $< $(LIBAPR) $(LDFLAGS) $(LDLIBS) $(CHECK_LIBS)

$(BUILD)/bench/%: tests/bench/%.c $(LIBAPR)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LIBAPR) $(LDFLAGS) $(LDLIBS)

tests: $(BINS) $(UNIT_BINS)

# Run everything once in this build, then again under the sanitizers.
test: test-run
	$(MAKE) --no-print-directory BUILD=build/san SAN=1 OPT=-O1 test-run

test-run: tests
	@BUILD=$(BUILD) SHARED=$(SHARED) sh tests/run_tests.sh

# ---- fuzzing (clang + libFuzzer)
FUZZ_SECONDS ?= 60
FUZZ_SRCS    := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_CFLAGS  := -std=c17 -D_GNU_SOURCE -g -O1 -I. $(PKG_CFLAGS) -fsanitize=fuzzer,address,undefined
FUZZ_LIBSRC  := $(filter model/% tokenizer/% proto/%,$(LIB_SRCS))

build/fuzz/%: tests/fuzz/%.c $(FUZZ_LIBSRC)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -o $@ $< $(FUZZ_LIBSRC) $(PKG_LIBS) -lm -pthread

fuzz: $(FUZZ_SRCS:tests/fuzz/%.c=build/fuzz/%)
	@SHARED=$(SHARED) FUZZ_SECONDS=$(FUZZ_SECONDS) sh tests/fuzz/run.sh $^

demo: $(BINS)
	@BUILD=$(BUILD) SHARED=$(SHARED) sh deploy/demo.sh

bench: $(BINS) $(BENCH_BINS)
	@SHARED=$(SHARED) BUILD=$(BUILD) sh tests/bench/run.sh

# ---- GPU tests: built here (nvcc, no GPU needed), run on the device machine
GPU_BINS := $(BUILD)/gpu/test_kernels_cuda $(BUILD)/gpu/mkvocab

$(BUILD)/gpu/test_kernels_cuda: tests/gpu/test_kernels_cuda.c $(LIBAPR)
	@test -n "$(HAVE_CUDA)" || { echo "make gpu: needs nvcc"; exit 1; }
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -I$(CUDA_HOME)/include -MMD -MP -o $@ $< $(LIBAPR) $(LDFLAGS) $(LDLIBS)

$(BUILD)/gpu/mkvocab: tests/gpu/mkvocab.c $(LIBAPR)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LIBAPR) $(LDFLAGS) $(LDLIBS)

gpu: $(BINS) $(GPU_BINS)

clean:
	rm -rf build

.PHONY: all tests test test-run fuzz bench demo gpu clean
-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
