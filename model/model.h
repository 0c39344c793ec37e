/* model/ — the GGUF file format (reader and writer), tensor types, quant block
 * layouts and the hyper-parameters of the architectures apr runs.
 *
 * Everything read from a GGUF file is validated against the file size and sane
 * limits before use; a bad file yields NULL / -1 and a one-line message in err.
 */
#ifndef APR_MODEL_H
#define APR_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define APR_ERRLEN 256

/* ---------------------------------------------------------------- types */

/* Tensor type ids, as GGUF stores them (ggml's numbering). */
enum apr_type {
    APR_TYPE_F32 = 0,
    APR_TYPE_F16 = 1,
    APR_TYPE_Q4_0 = 2,
    APR_TYPE_Q4_1 = 3,
    APR_TYPE_Q5_0 = 6,
    APR_TYPE_Q5_1 = 7,
    APR_TYPE_Q8_0 = 8,
    APR_TYPE_Q8_1 = 9,
    APR_TYPE_Q2_K = 10,
    APR_TYPE_Q3_K = 11,
    APR_TYPE_Q4_K = 12,
    APR_TYPE_Q5_K = 13,
    APR_TYPE_Q6_K = 14,
    APR_TYPE_Q8_K = 15,
    APR_TYPE_I8 = 24,
    APR_TYPE_I16 = 25,
    APR_TYPE_I32 = 26,
    APR_TYPE_I64 = 27,
    APR_TYPE_F64 = 28,
    APR_TYPE_BF16 = 30,
};

typedef struct {
    const char *name;    /* "Q4_K" */
    uint32_t block_size; /* elements per block */
    uint32_t type_size;  /* bytes per block */
} apr_type_info;

/* NULL when the id is not a type apr knows. */
const apr_type_info *apr_type_get(uint32_t type);
/* Bytes of a row of n elements; 0 when the type is unknown or n is not a
 * multiple of its block size. */
uint64_t apr_row_bytes(uint32_t type, uint64_t n);

/* Half-precision conversions (IEEE binary16 and bfloat16). */
float apr_fp16_to_f32(uint16_t h);
uint16_t apr_f32_to_fp16(float f);
float apr_bf16_to_f32(uint16_t h);
uint16_t apr_f32_to_bf16(float f);

/* ------------------------------------------------- quant block layouts */
/* Byte-identical to ggml's; static asserts in model/types.c check sizes. */

#define APR_QK 32   /* block size of the legacy quants */
#define APR_QK_K 256 /* block size of the K-quants */

typedef struct { uint16_t d; uint8_t qs[16]; } block_q4_0;                  /* 18 */
typedef struct { uint16_t d, m; uint8_t qs[16]; } block_q4_1;               /* 20 */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } block_q5_0;   /* 22 */
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } block_q5_1; /* 24 */
typedef struct { uint16_t d; int8_t qs[32]; } block_q8_0;                   /* 34 */
typedef struct { uint16_t d, s; int8_t qs[32]; } block_q8_1;                /* 36 */
typedef struct {
    uint8_t scales[16]; /* 4-bit scale and 4-bit min per 16 weights */
    uint8_t qs[64];
    uint16_t d, dmin;
} block_q2_K; /* 84 */
typedef struct {
    uint8_t hmask[32];
    uint8_t qs[64];
    uint8_t scales[12];
    uint16_t d;
} block_q3_K; /* 110 */
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12]; /* 8 sub-blocks: 6-bit scale, 6-bit min */
    uint8_t qs[128];
} block_q4_K; /* 144 */
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[32];
    uint8_t qs[128];
} block_q5_K; /* 176 */
typedef struct {
    uint8_t ql[128];
    uint8_t qh[64];
    int8_t scales[16];
    uint16_t d;
} block_q6_K; /* 210 */
typedef struct {
    float d;
    int8_t qs[256];
    int16_t bsums[16]; /* sums of qs in groups of 16 */
} block_q8_K; /* 292 */

/* ----------------------------------------------------------------- GGUF */

enum gguf_vtype {
    GGUF_U8 = 0, GGUF_I8 = 1, GGUF_U16 = 2, GGUF_I16 = 3, GGUF_U32 = 4,
    GGUF_I32 = 5, GGUF_F32 = 6, GGUF_BOOL = 7, GGUF_STR = 8, GGUF_ARR = 9,
    GGUF_U64 = 10, GGUF_I64 = 11, GGUF_F64 = 12,
};

/* A string inside the file image: not NUL-terminated, may contain NULs. */
typedef struct {
    uint64_t len;
    const char *s;
} gguf_str;

typedef struct gguf_value gguf_value;
struct gguf_value {
    uint32_t type; /* enum gguf_vtype */
    union {
        uint64_t u; /* U8..U64, BOOL */
        int64_t i;  /* I8..I64 */
        double f;   /* F32, F64 */
        gguf_str str;
        struct {
            uint32_t type;         /* element type */
            uint64_t n;            /* element count */
            const uint8_t *data;   /* scalar elements: raw little-endian bytes in the image */
            const gguf_str *strs;  /* GGUF_STR elements (owned by the gguf_file) */
            const gguf_value *vals; /* GGUF_ARR elements (nested arrays, owned) */
        } arr;
    };
};

typedef struct {
    gguf_str key;
    gguf_value val;
} gguf_kv;

typedef struct {
    char name[128];   /* NUL-terminated; longer names are refused */
    uint32_t n_dims;  /* 1..4 */
    uint64_t ne[4];   /* ne[0] is the row length (input dimension); unused dims are 1 */
    uint32_t type;    /* enum apr_type */
    uint64_t offset;  /* absolute offset of the data in the file */
    uint64_t nbytes;
} gguf_tensor;

typedef struct gguf_file {
    uint32_t version; /* 2 or 3 */
    uint64_t alignment;
    uint64_t n_kv;
    gguf_kv *kv;
    uint64_t n_tensors;
    gguf_tensor *tensors;
    uint64_t data_offset; /* start of the data section */
    uint64_t size;        /* bytes in the image */
    const uint8_t *base;  /* the file image (mapped read-only by gguf_open) */
    void *priv;           /* reader-owned allocations */
} gguf_file;

/* Map a file read-only and parse its header, metadata and tensor infos.
 * Tensor data is not touched. */
gguf_file *gguf_open(const char *path, char err[APR_ERRLEN]);
/* Parse an image already in memory; buf must outlive the result. */
gguf_file *gguf_parse(const uint8_t *buf, size_t len, char err[APR_ERRLEN]);
void gguf_close(gguf_file *f);

const gguf_value *gguf_get(const gguf_file *f, const char *key);
/* Typed getters: any integer type converts; dflt when missing or of another kind. */
int64_t gguf_get_int(const gguf_file *f, const char *key, int64_t dflt);
double gguf_get_float(const gguf_file *f, const char *key, double dflt);
bool gguf_get_bool(const gguf_file *f, const char *key, bool dflt);
/* {0, NULL} when missing or not a string. */
gguf_str gguf_get_str(const gguf_file *f, const char *key);
bool gguf_str_eq(gguf_str s, const char *c);
/* Element i of a scalar array, converted (i must be < n). */
int64_t gguf_arr_int(const gguf_value *arr, uint64_t i);
double gguf_arr_float(const gguf_value *arr, uint64_t i);

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* ---------------------------------------------------------- GGUF writer */

typedef struct gguf_writer gguf_writer;

gguf_writer *gguf_writer_new(void);
void gguf_writer_free(gguf_writer *w);
/* Metadata; values are copied. */
void gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v);
void gguf_writer_set_f32(gguf_writer *w, const char *key, float v);
void gguf_writer_set_bool(gguf_writer *w, const char *key, bool v);
void gguf_writer_set_str(gguf_writer *w, const char *key, const char *v);
/* Copy a key/value (any type, arrays included) from a parsed file. */
void gguf_writer_copy_kv(gguf_writer *w, const gguf_kv *kv);
/* Any value, arrays (nested, of strings) included; scalar array elements are
 * raw little-endian bytes as in a parsed file. Setting a key again replaces it. */
void gguf_writer_set_value(gguf_writer *w, const char *key, const gguf_value *v);
/* Declare a tensor; its data is produced later by gguf_writer_write's callback. */
int gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t type,
                           uint32_t n_dims, const uint64_t ne[4], char err[APR_ERRLEN]);
/* Write header, metadata, tensor infos, then each tensor's data as fill(i)
 * produces it into buf (nbytes of tensor i). */
typedef int (*gguf_fill_fn)(void *ctx, uint64_t i, const gguf_tensor *t, void *buf);
int gguf_writer_write(gguf_writer *w, const char *path, gguf_fill_fn fill, void *ctx,
                      char err[APR_ERRLEN]);

/* ------------------------------------------------------ hyper-parameters */

enum apr_arch { APR_ARCH_LLAMA = 1, APR_ARCH_QWEN2 = 2 };

typedef struct {
    enum apr_arch arch;
    char arch_name[32];
    uint32_t n_vocab;
    uint32_t n_embd;
    uint32_t n_layer;
    uint32_t n_head;
    uint32_t n_head_kv;
    uint32_t head_dim;   /* n_embd / n_head unless the file says otherwise */
    uint32_t n_ff;
    uint32_t n_ctx_train;
    uint32_t rope_dim;   /* rotated dims per head (<= head_dim) */
    bool rope_neox;      /* qwen2: rotate halves; llama: adjacent pairs */
    float rope_freq_base;
    float rms_eps;
} apr_hparams;

/* Reads and checks the hyper-parameters (architecture must be llama or qwen2). */
int apr_hparams_load(const gguf_file *f, apr_hparams *hp, char err[APR_ERRLEN]);

/* ------------------------------------------------------- synthetic models */

/* Writes a synthetic Qwen2.5 model of a named shape (qwen2.5-0.5b ... -32b) with
 * llama.cpp's Q4_K_M type mix and the vocabulary of vocab_from. n_threads <= 0:
 * all cores. Same seed, same bytes (whatever the thread count). Returns 0, -1 on
 * failure, -2 when the shape is unknown. */
int apr_mkmodel(const char *shape, const char *vocab_from, const char *out_path,
                uint64_t seed, int n_threads, bool progress, char err[APR_ERRLEN]);

#endif
