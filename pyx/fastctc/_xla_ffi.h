/* pyx/fastctc/_xla_ffi.h: the XLA FFI handler behind fastctc.jax.ctc_loss, in plain C, for
 * _optax_core.pyx (which exports it to Python as a PyCapsule).
 *
 * Why hand-written declarations: XLA's FFI is a stable C ABI (xla/ffi/api/c_api.h, shipped
 * in jaxlib's include folder), but needing jax installed to *build* fastctc would tie the
 * wheel to a jaxlib at build time.  The few structs the handler touches are declared below
 * with the same layout (pointer-sized fields and int-sized enums, as in c_api.h);
 * tests/test_jax.py compiles tests/c/xla_ffi_abi.c, which checks every offset and size here
 * against jaxlib's own header when one is installed.  The handler declares the FFI API
 * version its layout follows (FCTC_XLA_API_MINOR); XLA keeps accepting old versions.
 *
 * Call (registered as target "fastctc_optax_ctc", platform "cpu"):
 *   operands  logits (lead..., B, T, K) f32|f64, logit_paddings (lead..., B, T),
 *             labels (lead..., B, N) s32, label_paddings (lead..., B, N), log_epsilon (lead...),
 *             all of logits' dtype except labels; lead... are vmapped axes
 *             (vmap_method="broadcast_all"), folded into the batch here.
 *   results   loss (lead..., B), and optionally grad (lead..., B, T, K) = d loss / d logits
 *   attrs     blank (integer scalar), num_threads (integer scalar, 0 = OpenMP's default)
 * Bad shapes or types come back as an XLA error (a Python exception), never a crash.
 */
#ifndef FASTCTC_XLA_FFI_H
#define FASTCTC_XLA_FFI_H

#include <stddef.h>
#include <stdint.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#define FCTC_XLA_API_MAJOR 0
#define FCTC_XLA_API_MINOR 1

enum {
    FCTC_XLA_EXT_METADATA = 1,
    FCTC_XLA_ERR_INVALID_ARGUMENT = 3,
    FCTC_XLA_ERR_RESOURCE_EXHAUSTED = 8,
    FCTC_XLA_ERR_INTERNAL = 13,
    FCTC_XLA_S32 = 4,
    FCTC_XLA_S64 = 5,
    FCTC_XLA_F32 = 11,
    FCTC_XLA_F64 = 12,
    FCTC_XLA_BUFFER = 1,  /* argument / result kind */
    FCTC_XLA_SCALAR = 3,  /* attribute kind */
    FCTC_XLA_EXECUTE = 3  /* execution stage */
};

typedef struct fctc_xla_ext {
    size_t struct_size;
    int type;
    struct fctc_xla_ext *next;
} fctc_xla_ext;

typedef struct {
    size_t struct_size;
    fctc_xla_ext *extension_start;
    int major_version;
    int minor_version;
} fctc_xla_version;

typedef struct {
    size_t struct_size;
    fctc_xla_version api_version;
    uint32_t traits;
    int64_t state_type_id;
} fctc_xla_metadata;

typedef struct {
    fctc_xla_ext extension_base;
    fctc_xla_metadata *metadata;
} fctc_xla_metadata_ext;

typedef struct {
    size_t struct_size;
    fctc_xla_ext *extension_start;
    int dtype;
    void *data;
    int64_t rank;
    int64_t *dims;
} fctc_xla_buffer;

typedef struct {
    size_t struct_size;
    fctc_xla_ext *extension_start;
    int64_t size;
    int *types;
    void **items;
} fctc_xla_list; /* XLA_FFI_Args and XLA_FFI_Rets share this layout */

typedef struct {
    const char *ptr;
    size_t len;
} fctc_xla_span;

typedef struct {
    int dtype;
    void *value;
} fctc_xla_scalar;

typedef struct {
    size_t struct_size;
    fctc_xla_ext *extension_start;
    int64_t size;
    int *types;
    fctc_xla_span **names;
    void **attrs;
} fctc_xla_attrs;

typedef struct fctc_xla_error fctc_xla_error; /* opaque, owned by XLA */

typedef struct {
    size_t struct_size;
    fctc_xla_ext *extension_start;
    const char *message;
    int errc;
} fctc_xla_error_args;

typedef fctc_xla_error *fctc_xla_error_create_fn(fctc_xla_error_args *args);

typedef struct {
    size_t struct_size;
    fctc_xla_ext *extension_start;
    fctc_xla_version api_version;
    const void *internal_api;
    fctc_xla_error_create_fn *error_create; /* the first of the API's functions */
} fctc_xla_api;

typedef struct {
    size_t struct_size;
    fctc_xla_ext *extension_start;
    const fctc_xla_api *api;
    void *ctx;
    int stage;
    fctc_xla_list args;
    fctc_xla_list rets;
    fctc_xla_attrs attrs;
} fctc_xla_call_frame;

/* c_api.h's XLA_FFI_*_STRUCT_SIZE: the offset past each struct's last field it knows of */
#define FCTC_XLA_SIZE_UPTO(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))
#define FCTC_XLA_CALL_FRAME_SIZE FCTC_XLA_SIZE_UPTO(fctc_xla_call_frame, attrs)
#define FCTC_XLA_METADATA_SIZE FCTC_XLA_SIZE_UPTO(fctc_xla_metadata, traits)
#define FCTC_XLA_METADATA_EXT_SIZE FCTC_XLA_SIZE_UPTO(fctc_xla_metadata_ext, metadata)
#define FCTC_XLA_VERSION_SIZE FCTC_XLA_SIZE_UPTO(fctc_xla_version, minor_version)
#define FCTC_XLA_ERROR_ARGS_SIZE FCTC_XLA_SIZE_UPTO(fctc_xla_error_args, errc)
#define FCTC_XLA_BUFFER_SIZE FCTC_XLA_SIZE_UPTO(fctc_xla_buffer, dims)

static fctc_xla_error *fctc_xla_fail(const fctc_xla_call_frame *cf, int code, const char *msg) {
    fctc_xla_error_args e;
    e.struct_size = FCTC_XLA_ERROR_ARGS_SIZE;
    e.extension_start = NULL;
    e.message = msg;
    e.errc = code;
    return cf->api->error_create(&e); /* XLA copies the message */
}

/* An integer scalar attribute by name; 0 if found (stored in *out), 1 if absent or not an
 * integer scalar. */
static int fctc_xla_int_attr(const fctc_xla_call_frame *cf, const char *name, int64_t *out) {
    int64_t i;
    size_t len = strlen(name);
    for (i = 0; i < cf->attrs.size; ++i) {
        const fctc_xla_span *s = cf->attrs.names[i];
        const fctc_xla_scalar *v;
        if (s->len != len || memcmp(s->ptr, name, len) != 0) continue;
        if (cf->attrs.types[i] != FCTC_XLA_SCALAR) return 1;
        v = (const fctc_xla_scalar *)cf->attrs.attrs[i];
        if (v->dtype == FCTC_XLA_S64) *out = *(const int64_t *)v->value;
        else if (v->dtype == FCTC_XLA_S32) *out = *(const int32_t *)v->value;
        else return 1;
        return 0;
    }
    return 1;
}

/* 0 if buffer `buf` has shape (lead_dims..., tail[0], ..., tail[extra - 1]). */
static int fctc_xla_shape(const fctc_xla_buffer *buf, int64_t lead, const int64_t *lead_dims, int extra,
                          const int64_t *tail) {
    int64_t i;
    if (buf->rank != lead + extra) return 1;
    for (i = 0; i < lead; ++i)
        if (buf->dims[i] != lead_dims[i]) return 1;
    for (i = 0; i < extra; ++i)
        if (buf->dims[lead + i] != tail[i]) return 1;
    return 0;
}

static fctc_xla_error *fctc_xla_optax_ctc(fctc_xla_call_frame *cf) {
    const fctc_xla_buffer *logits, *fpad, *labels, *lpad, *eps, *loss, *grad = NULL;
    fctc_optax_batch_args a;
    int64_t lead, i, outer = 1, blank = 0, threads = 0, btk[3], bn[2];
    int is_f64, status;
    char msg[256];
    if (cf->extension_start && cf->extension_start->type == FCTC_XLA_EXT_METADATA) {
        /* registration-time query: which FFI version this handler was written against */
        fctc_xla_metadata_ext *ext = (fctc_xla_metadata_ext *)cf->extension_start;
        if (ext->extension_base.struct_size < FCTC_XLA_METADATA_EXT_SIZE ||
            ext->metadata->struct_size < FCTC_XLA_METADATA_SIZE)
            return fctc_xla_fail(cf, FCTC_XLA_ERR_INVALID_ARGUMENT, "fastctc: XLA FFI metadata struct too small");
        ext->metadata->api_version.struct_size = FCTC_XLA_VERSION_SIZE;
        ext->metadata->api_version.extension_start = NULL;
        ext->metadata->api_version.major_version = FCTC_XLA_API_MAJOR;
        ext->metadata->api_version.minor_version = FCTC_XLA_API_MINOR;
        ext->metadata->traits = 0;
        return NULL;
    }
    if (cf->struct_size < FCTC_XLA_CALL_FRAME_SIZE)
        return fctc_xla_fail(cf, FCTC_XLA_ERR_INVALID_ARGUMENT, "fastctc: XLA FFI call frame too small");
    if (cf->stage != FCTC_XLA_EXECUTE) return NULL;
    if (cf->args.size != 5 || (cf->rets.size != 1 && cf->rets.size != 2))
        return fctc_xla_fail(cf, FCTC_XLA_ERR_INVALID_ARGUMENT,
                             "fastctc_optax_ctc: expected 5 operands and 1 or 2 results");
    for (i = 0; i < cf->args.size; ++i)
        if (cf->args.types[i] != FCTC_XLA_BUFFER)
            return fctc_xla_fail(cf, FCTC_XLA_ERR_INVALID_ARGUMENT, "fastctc_optax_ctc: operands must be buffers");
    for (i = 0; i < cf->rets.size; ++i)
        if (cf->rets.types[i] != FCTC_XLA_BUFFER)
            return fctc_xla_fail(cf, FCTC_XLA_ERR_INVALID_ARGUMENT, "fastctc_optax_ctc: results must be buffers");
    logits = (const fctc_xla_buffer *)cf->args.items[0];
    fpad = (const fctc_xla_buffer *)cf->args.items[1];
    labels = (const fctc_xla_buffer *)cf->args.items[2];
    lpad = (const fctc_xla_buffer *)cf->args.items[3];
    eps = (const fctc_xla_buffer *)cf->args.items[4];
    loss = (const fctc_xla_buffer *)cf->rets.items[0];
    if (cf->rets.size == 2) grad = (const fctc_xla_buffer *)cf->rets.items[1];
    if (fctc_xla_int_attr(cf, "blank", &blank) || fctc_xla_int_attr(cf, "num_threads", &threads))
        return fctc_xla_fail(cf, FCTC_XLA_ERR_INVALID_ARGUMENT,
                             "fastctc_optax_ctc: integer attributes 'blank' and 'num_threads' are required");
    if (logits->dtype != FCTC_XLA_F32 && logits->dtype != FCTC_XLA_F64)
        return fctc_xla_fail(cf, FCTC_XLA_ERR_INVALID_ARGUMENT, "fastctc_optax_ctc: logits must be f32 or f64");
    is_f64 = logits->dtype == FCTC_XLA_F64;
    if (fpad->dtype != logits->dtype || lpad->dtype != logits->dtype || eps->dtype != logits->dtype ||
        loss->dtype != logits->dtype || (grad && grad->dtype != logits->dtype) || labels->dtype != FCTC_XLA_S32)
        return fctc_xla_fail(cf, FCTC_XLA_ERR_INVALID_ARGUMENT,
                             "fastctc_optax_ctc: paddings, log_epsilon and results must have logits' dtype, labels s32");
    if (logits->rank < 3)
        return fctc_xla_fail(cf, FCTC_XLA_ERR_INVALID_ARGUMENT, "fastctc_optax_ctc: logits must have rank >= 3");
    lead = logits->rank - 3;
    for (i = 0; i < lead; ++i) outer *= logits->dims[i];
    for (i = 0; i < 3; ++i) btk[i] = logits->dims[lead + i];
    if (labels->rank != lead + 2)
        return fctc_xla_fail(cf, FCTC_XLA_ERR_INVALID_ARGUMENT, "fastctc_optax_ctc: labels must have rank lead + 2");
    bn[0] = btk[0];
    bn[1] = labels->dims[lead + 1];
    if (fctc_xla_shape(labels, lead, logits->dims, 2, bn) || fctc_xla_shape(lpad, lead, logits->dims, 2, bn) ||
        fctc_xla_shape(fpad, lead, logits->dims, 2, btk) || fctc_xla_shape(eps, lead, logits->dims, 0, NULL) ||
        fctc_xla_shape(loss, lead, logits->dims, 1, btk) || (grad && fctc_xla_shape(grad, lead, logits->dims, 3, btk)))
        return fctc_xla_fail(cf, FCTC_XLA_ERR_INVALID_ARGUMENT,
                             "fastctc_optax_ctc: operand shapes do not match (lead..., B, T, K) logits");
    if (btk[1] < 1 || btk[2] < 1 || outer * btk[0] > INT_MAX || btk[1] > INT_MAX || btk[2] > INT_MAX ||
        bn[1] > (INT_MAX - 8) / 2 || blank < 0 || blank >= btk[2] || threads < 0 || threads > INT_MAX) {
        snprintf(msg, sizeof msg, "fastctc_optax_ctc: sizes or attributes out of range (B=%lld T=%lld K=%lld N=%lld blank=%lld)",
                 (long long)(outer * btk[0]), (long long)btk[1], (long long)btk[2], (long long)bn[1], (long long)blank);
        return fctc_xla_fail(cf, FCTC_XLA_ERR_INVALID_ARGUMENT, msg);
    }
    memset(&a, 0, sizeof a);
    a.B = (int)(outer * btk[0]);
    a.T = (int)btk[1];
    a.K = (int)btk[2];
    a.N = (int)bn[1];
    a.blank = (int)blank;
    a.x = logits->data;
    a.x_ts = a.K;
    a.x_bs = (ptrdiff_t)a.T * a.K;
    a.pad = fpad->data;
    a.pad_ts = 1;
    a.pad_bs = a.T;
    a.labels = (const int *)labels->data;
    a.lab_bs = a.N;
    a.lpad = lpad->data;
    a.lpad_ns = 1;
    a.lpad_bs = a.N;
    a.eps = eps->data;
    a.eps_group = btk[0] > 0 ? (ptrdiff_t)btk[0] : 1;
    a.loss = loss->data;
    if (grad) {
        a.grad = grad->data;
        a.g_ts = a.K;
        a.g_bs = (ptrdiff_t)a.T * a.K;
    }
    a.num_threads = (int)threads;
    status = is_f64 ? fctc_optax_batch_f64(&a) : fctc_optax_batch_f32(&a);
    if (status == FASTCTC_OUT_OF_MEMORY)
        return fctc_xla_fail(cf, FCTC_XLA_ERR_RESOURCE_EXHAUSTED, "fastctc_optax_ctc: out of memory for scratch");
    if (status != FASTCTC_OK)
        return fctc_xla_fail(cf, FCTC_XLA_ERR_INVALID_ARGUMENT, "fastctc_optax_ctc: sizes out of range");
    return NULL;
}

#endif /* FASTCTC_XLA_FFI_H */
