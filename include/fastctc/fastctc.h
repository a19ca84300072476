/* fastctc/fastctc.h: the public C API of fastctc, a fast CTC (Connectionist Temporal
 * Classification) loss, gradient, forward variables and alignment.
 *
 * Header-only, stb style: every file that calls fastctc includes this header; exactly
 * one C or C++ file defines FASTCTC_IMPLEMENTATION before including it, which compiles
 * the implementation there.  Define FASTCTC_STATIC as well to make every function
 * static to that file.  C99 and C++11; OpenMP is used when the compiler enables it
 * (-fopenmp), and the code is correct (serial) without it.
 *
 * Conventions shared by every entry point
 * ---------------------------------------
 *  - Status codes, never printing, never aborting, no global state that changes results
 *    (the SIMD level is chosen once and only changes speed).  Safe to call from several
 *    threads at once.
 *  - A bad argument returns FASTCTC_INVALID_ARGUMENT before any output is written.
 *  - acts layout (options->batch_major == 0, time-major, the default):
 *        acts[(t * minibatch + n) * alphabet_size + c]
 *    batch-major (options->batch_major == 1):
 *        acts[(n * max_time + t) * alphabet_size + c]
 *    grads use the same layout as acts.
 *  - flat_labels holds the targets of all sequences back to back: sequence n's labels
 *    are flat_labels[offset_n .. offset_n + label_lengths[n]), offset_n = sum of the
 *    earlier label_lengths.
 *  - costs[n] = -log p(labels_n | acts_n), +inf when the labels cannot fit in the
 *    input length (0 instead with options->zero_infinity).
 *  - from_logits == 0: acts are log-probabilities, used exactly as given (no
 *    normalisation is checked or applied); grads = d cost_n / d acts = -(occupancy).
 *    from_logits == 1: acts are unnormalised scores, log_softmax is applied over the
 *    alphabet inside the same pass; grads = d cost_n / d acts = softmax - occupancy
 *    (warp-ctc's convention).
 *    Grads are zero past each input length, and zero for infeasible sequences.
 */
#ifndef FASTCTC_FASTCTC_H
#define FASTCTC_FASTCTC_H

#include <stddef.h>

#define FASTCTC_VERSION_MAJOR 0
#define FASTCTC_VERSION_MINOR 1
#define FASTCTC_VERSION_PATCH 0

#ifdef FASTCTC_STATIC
#define FASTCTC_DEF static
#else
#define FASTCTC_DEF
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    FASTCTC_OK = 0,
    FASTCTC_INVALID_ARGUMENT = 1,    /* null pointer, size or value out of range */
    FASTCTC_WORKSPACE_TOO_SMALL = 2, /* workspace_bytes below fastctc_workspace_size() */
    FASTCTC_OUT_OF_MEMORY = 3        /* workspace == NULL and the allocation failed */
} fastctc_status;

/* Options; an all-zero struct (or a NULL pointer) means the defaults. */
typedef struct {
    int blank;         /* index of the blank class, 0 <= blank < alphabet_size */
    int from_logits;   /* 0: acts are log-probabilities; 1: unnormalised, softmax fused */
    int zero_infinity; /* 1: infeasible sequences cost 0 instead of +inf */
    int num_threads;   /* threads for this call; 0: the OpenMP default */
    int batch_major;   /* 0: acts[(t*minibatch + n)*alphabet_size + c];
                          1: acts[(n*max_time + t)*alphabet_size + c] */
} fastctc_options;

/* SIMD levels of the CPU kernels. */
enum { FASTCTC_SIMD_SCALAR = 0, FASTCTC_SIMD_NEON = 1, FASTCTC_SIMD_AVX2 = 2, FASTCTC_SIMD_AVX512 = 3 };

/* A readable, static, English description of a status code. */
FASTCTC_DEF const char *fastctc_status_string(fastctc_status status);

/* Bytes of workspace fastctc_loss_f32/_f64 need for these sizes.
 *  [in]  label_lengths  minibatch label lengths (>= 0)
 *  [in]  input_lengths  minibatch input lengths, each in [0, max_time]
 *  [in]  max_time, minibatch, alphabet_size  the dimensions of acts (alphabet_size >= 1)
 *  [in]  want_grad      1 if grads will be requested, 0 for costs only
 *  [in]  elem_size      sizeof(float) or sizeof(double)
 *  [in]  options        may be NULL (defaults); num_threads is taken into account
 *  [out] size_bytes     the size
 * Returns FASTCTC_INVALID_ARGUMENT for bad sizes or when the size overflows size_t. */
FASTCTC_DEF fastctc_status fastctc_workspace_size(const int *label_lengths, const int *input_lengths,
                                                  int max_time, int minibatch, int alphabet_size,
                                                  int want_grad, size_t elem_size,
                                                  const fastctc_options *options, size_t *size_bytes);

/* CTC cost (and gradient) of a minibatch, float32.
 *  [in]  acts           max_time * minibatch * alphabet_size values, layout per options
 *  [out] grads          NULL for costs only; else same size and layout as acts,
 *                       d costs[n] / d acts (see the conventions above)
 *  [in]  flat_labels    the concatenated labels, each in [0, alphabet_size); may be NULL
 *                       when every label length is 0
 *  [in]  label_lengths  minibatch values >= 0
 *  [in]  input_lengths  minibatch values in [0, max_time]
 *  [in]  max_time, minibatch, alphabet_size   dimensions (>= 0, >= 0, >= 1)
 *  [out] costs          minibatch values
 *  [in]  workspace      caller-owned scratch of at least fastctc_workspace_size() bytes,
 *                       or NULL to let the call allocate (and free) it
 *  [in]  workspace_bytes  size of workspace (ignored when it is NULL)
 *  [in]  options        may be NULL (defaults)
 */
FASTCTC_DEF fastctc_status fastctc_loss_f32(const float *acts, float *grads, const int *flat_labels,
                                            const int *label_lengths, const int *input_lengths,
                                            int max_time, int minibatch, int alphabet_size,
                                            float *costs, void *workspace, size_t workspace_bytes,
                                            const fastctc_options *options);

/* The same for float64 (elem_size = sizeof(double) in fastctc_workspace_size). */
FASTCTC_DEF fastctc_status fastctc_loss_f64(const double *acts, double *grads, const int *flat_labels,
                                            const int *label_lengths, const int *input_lengths,
                                            int max_time, int minibatch, int alphabet_size,
                                            double *costs, void *workspace, size_t workspace_bytes,
                                            const fastctc_options *options);

/* ---- One sequence at a time (the engine the batch calls and the Python module share) ---- */

/* One sequence's problem, float32.  Rows are addressed through strides, so time-major
 * and batch-major batches are read in place.  Every pointer/size is trusted: the batch
 * entry points and the Python module validate first. */
typedef struct {
    const float *acts;      /* [in] acts[t * act_stride + c], t < input_length, c < alphabet_size */
    ptrdiff_t act_stride;   /* elements between consecutive frames */
    const int *labels;      /* [in] label_length labels, each in [0, alphabet_size) */
    int label_length;
    int input_length;
    int alphabet_size;
    int blank;
    int from_logits;
    float *grad;            /* [out] NULL, or grad[t * grad_stride + c] for t < grad_rows
                               (rows past input_length are zeroed) */
    ptrdiff_t grad_stride;
    int grad_rows;
    double grad_scale;      /* the gradient is multiplied by this (reduction weights) */
    float *log_alpha;       /* [out] NULL, or log_alpha[t * alpha_stride + s] for t < alpha_rows,
                               s < alpha_cols; -inf where a state is unreachable, past
                               input_length and past 2 * label_length + 1 */
    ptrdiff_t alpha_stride;
    int alpha_rows;
    int alpha_cols;
} fastctc_job_f32;

typedef struct {
    const double *acts;
    ptrdiff_t act_stride;
    const int *labels;
    int label_length;
    int input_length;
    int alphabet_size;
    int blank;
    int from_logits;
    double *grad;
    ptrdiff_t grad_stride;
    int grad_rows;
    double grad_scale;
    double *log_alpha;
    ptrdiff_t alpha_stride;
    int alpha_rows;
    int alpha_cols;
} fastctc_job_f64;

/* Scratch bytes one fastctc_sequence_* call needs for sequences of at most max_time
 * frames and max_label_length labels; 0 when the size would overflow size_t. */
FASTCTC_DEF size_t fastctc_sequence_scratch_bytes(int max_time, int max_label_length, int want_grad,
                                                  size_t elem_size);

/* Runs one sequence; returns its negative log-likelihood (+inf when infeasible).
 * scratch: fastctc_sequence_scratch_bytes() bytes, 64-byte aligned. */
FASTCTC_DEF float fastctc_sequence_f32(const fastctc_job_f32 *job, void *scratch);
FASTCTC_DEF double fastctc_sequence_f64(const fastctc_job_f64 *job, void *scratch);

/* ---- SIMD dispatch ---- */

/* The level in use: FASTCTC_SIMD_*.  Chosen on first use from cpuid/xgetbv, lowered by
 * the environment variable FASTCTC_SIMD=scalar|avx2|avx512|neon if set. */
FASTCTC_DEF int fastctc_simd_level(void);
/* 1 if this CPU (and build) can run the level. */
FASTCTC_DEF int fastctc_simd_level_supported(int level);
/* "scalar", "neon", "avx2", "avx512". */
FASTCTC_DEF const char *fastctc_simd_level_name(int level);
/* Forces a supported level (tests, benchmarks); FASTCTC_INVALID_ARGUMENT otherwise. */
FASTCTC_DEF fastctc_status fastctc_simd_set_level(int level);

#ifdef __cplusplus
}
#endif

/* ======================================================================== */
#if defined(FASTCTC_IMPLEMENTATION) && !defined(FASTCTC_IMPLEMENTATION_DONE)
#define FASTCTC_IMPLEMENTATION_DONE

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define FCTC_ALIGN 64

static size_t fctc_round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }
static int fctc_max_int(int a, int b) { return a > b ? a : b; }
static int fctc_min_int(int a, int b) { return a < b ? a : b; }

/* Elements per padded trellis row: 2 leading pads, S states, 2 trailing pads, rounded
 * up to a whole number of 64-byte lines for aligned vector access. */
static size_t fctc_row_width(int label_length) {
    return fctc_round_up((size_t)(2 * (size_t)label_length + 1) + 4, 16);
}

#include "logmath.h"
#include "dispatch.h"
#include "template.h"
#include "batch_common.h"

/* Kernel tables, the row kernels of each ISA, and the trellis, per dtype. */
#define FCTC_USE_F32
#include "template.h"
#include "kernels.inl"
#include "rows_scalar.inl"
#include "rows_avx2.inl"
#include "rows_avx512.inl"
#include "rows_neon.inl"
#include "select.inl"
#include "trellis.inl"
#include "batch.inl"

#define FCTC_USE_F64
#include "template.h"
#include "kernels.inl"
#include "rows_scalar.inl"
#include "rows_avx2.inl"
#include "rows_avx512.inl"
#include "rows_neon.inl"
#include "select.inl"
#include "trellis.inl"
#include "batch.inl"

FASTCTC_DEF const char *fastctc_status_string(fastctc_status status) {
    switch (status) {
    case FASTCTC_OK: return "no error";
    case FASTCTC_INVALID_ARGUMENT: return "invalid argument: a null pointer, or a size or value out of range";
    case FASTCTC_WORKSPACE_TOO_SMALL: return "workspace too small: see fastctc_workspace_size()";
    case FASTCTC_OUT_OF_MEMORY: return "out of memory: the internal workspace could not be allocated";
    default: return "unknown fastctc status";
    }
}

FASTCTC_DEF size_t fastctc_sequence_scratch_bytes(int max_time, int max_label_length, int want_grad,
                                                  size_t elem_size) {
    if (max_time < 0 || max_label_length < 0 || (elem_size != 4 && elem_size != 8)) return 0;
    size_t S = 2 * (size_t)max_label_length + 1;
    size_t W = fctc_row_width(max_label_length);
    size_t T = max_time > 0 ? (size_t)max_time : 1;
    size_t alpha_rows = want_grad ? T : 2;
    /* alpha_rows * W * elem_size must not overflow */
    if (W > (SIZE_MAX / 4) / elem_size / alpha_rows) return 0;
    size_t bytes = fctc_round_up((S + 2) * sizeof(int), FCTC_ALIGN);
    bytes += 3 * fctc_round_up(W * elem_size, FCTC_ALIGN);     /* skip, emit, gamma */
    bytes += fctc_round_up(2 * W * elem_size, FCTC_ALIGN);     /* beta rows */
    bytes += fctc_round_up(T * elem_size, FCTC_ALIGN);         /* per-frame log-sum-exp */
    bytes += fctc_round_up(T * sizeof(double), FCTC_ALIGN);    /* per-row alpha offsets */
    bytes += fctc_round_up(alpha_rows * W * elem_size, FCTC_ALIGN);
    if (want_grad) bytes += 4 * fctc_round_up(W * elem_size, FCTC_ALIGN); /* split pass: 2nd role's rows */
    return bytes;
}

#ifdef __cplusplus
}
#endif

#endif /* FASTCTC_IMPLEMENTATION */
#endif /* FASTCTC_FASTCTC_H */
