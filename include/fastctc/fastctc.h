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
#if defined(__GNUC__) || defined(__clang__)
/* "unused": a file that calls only some entry points must still build with -Werror. */
#define FASTCTC_DEF static __attribute__((unused))
#else
#define FASTCTC_DEF static
#endif
#else
#define FASTCTC_DEF
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    FASTCTC_OK = 0,
    FASTCTC_INVALID_ARGUMENT = 1, /* null pointer, size or value out of range */
    FASTCTC_WORKSPACE_TOO_SMALL = 2, /* workspace_bytes below fastctc_workspace_size() */
    FASTCTC_OUT_OF_MEMORY = 3 /* workspace == NULL and the allocation failed */
} fastctc_status;

/* Options; an all-zero struct (or a NULL pointer) means the defaults. */
typedef struct {
    int blank; /* index of the blank class, 0 <= blank < alphabet_size */
    int from_logits; /* 0: acts are log-probabilities; 1: unnormalised, softmax fused */
    int zero_infinity; /* 1: infeasible sequences cost 0 instead of +inf */
    int num_threads; /* threads for this call; 0: the OpenMP default */
    int batch_major; /* 0: acts[(t*minibatch + n)*alphabet_size + c];
                          1: acts[(n*max_time + t)*alphabet_size + c] */
} fastctc_options;

/* SIMD levels of the CPU kernels. */
enum { FASTCTC_SIMD_SCALAR = 0, FASTCTC_SIMD_NEON = 1, FASTCTC_SIMD_AVX2 = 2, FASTCTC_SIMD_AVX512 = 3 };

/* A readable English description of a status code: a static string, never NULL (unknown
 * codes give "unknown fastctc status"); never to be freed. */
FASTCTC_DEF const char *fastctc_status_string(fastctc_status status);

/* Bytes of caller-owned workspace a fastctc_loss_f32/_f64 call with these sizes needs.
 *  [in]  label_lengths  minibatch label lengths, each in [0, (INT_MAX - 8) / 2]
 *                       (may be NULL when minibatch == 0)
 *  [in]  input_lengths  minibatch input lengths, each in [0, max_time] (NULL if minibatch == 0)
 *  [in]  max_time, minibatch, alphabet_size  the dimensions of acts (>= 0, >= 0, >= 1)
 *  [in]  want_grad      nonzero if grads will be requested (needs much more: one
 *                       sequence's forward variables per thread), 0 for costs only
 *  [in]  elem_size      sizeof(float) for fastctc_loss_f32, sizeof(double) for _f64
 *  [in]  options        may be NULL (defaults); must be the options of the later call
 *                       (num_threads sets how many per-thread scratch areas are counted)
 *  [out] size_bytes     the size, including up to 63 bytes of alignment slack: any
 *                       address will do, no alignment is required of the caller
 * The size depends only on the longest input and label, the thread count and the batch
 * size, so a workspace sized for a worst case can be reused across calls.
 * Returns FASTCTC_OK, or FASTCTC_INVALID_ARGUMENT (size_bytes NULL, elem_size not 4 or 8,
 * any size, length or option out of range, or a size that overflows size_t). */
FASTCTC_DEF fastctc_status fastctc_workspace_size(const int *label_lengths, const int *input_lengths, int max_time,
                                                  int minibatch, int alphabet_size, int want_grad, size_t elem_size,
                                                  const fastctc_options *options, size_t *size_bytes);

/* CTC cost (and gradient) of a minibatch, float32.
 *  [in]  acts           max_time * minibatch * alphabet_size values; layout per
 *                       options->batch_major:
 *                         0 (time-major):  acts[(t * minibatch + n) * alphabet_size + c]
 *                         1 (batch-major): acts[(n * max_time + t) * alphabet_size + c]
 *                       Frames t >= input_lengths[n] are never read.  May be NULL when
 *                       max_time or minibatch is 0.
 *  [out] grads          NULL for costs only; else max_time * minibatch * alphabet_size
 *                       values in acts' layout: d costs[n] / d acts for frames
 *                       t < input_lengths[n], 0 for later frames and for every frame of
 *                       an infeasible sequence (see the conventions above).
 *  [in]  flat_labels    sum(label_lengths) labels, sequence after sequence, each in
 *                       [0, alphabet_size); may be NULL when every label length is 0.
 *                       A label equal to blank is accepted but makes the cost
 *                       meaningless (several alignments then spell the same frames).
 *  [in]  label_lengths  minibatch values in [0, (INT_MAX - 8) / 2]
 *  [in]  input_lengths  minibatch values in [0, max_time]
 *  [in]  max_time, minibatch, alphabet_size   dimensions (>= 0, >= 0, >= 1); the
 *                       element count of acts must fit PTRDIFF_MAX / 8
 *  [out] costs          minibatch values: -log p(labels_n | acts_n); +inf for an
 *                       infeasible sequence (0 with options->zero_infinity); 0 for an
 *                       empty sequence with an empty label; NaN (never hidden by
 *                       zero_infinity, gradient rows NaN) under the non-finite rule of
 *                       fastctc_sequence_f32 below.
 *  [in]  workspace      caller-owned scratch of workspace_bytes bytes (any alignment),
 *                       or NULL to let the call malloc and free it.  A workspace of at
 *                       least fastctc_workspace_size() bytes runs with every thread asked
 *                       for; a smaller one that still holds one thread's scratch runs
 *                       with as many threads as fit; below that the call returns
 *                       FASTCTC_WORKSPACE_TOO_SMALL.  Concurrent calls need separate
 *                       workspaces.
 *  [in]  workspace_bytes  size of workspace (ignored when it is NULL)
 *  [in]  options        may be NULL (defaults: blank 0, log-probabilities, +inf for
 *                       infeasible, OpenMP's default thread count, time-major).  At most
 *                       min(num_threads, minibatch, 1024, usable processors, what the OS
 *                       can create) threads run; 1 without OpenMP and in a process forked
 *                       after the library's first call (the OpenMP runtime cannot run a
 *                       team there).
 * grads, costs and workspace must not overlap each other or any input (checked:
 * FASTCTC_INVALID_ARGUMENT), since a frame of acts is read after its gradient is written.
 * Returns FASTCTC_OK; FASTCTC_INVALID_ARGUMENT (a NULL pointer that is needed, a size,
 * length, label or option out of range, overlapping buffers); FASTCTC_WORKSPACE_TOO_SMALL;
 * FASTCTC_OUT_OF_MEMORY (workspace NULL and malloc failed).  On any status but FASTCTC_OK
 * neither costs nor grads has been written.  At a given SIMD level, results are the
 * same bits for either layout, any thread count and either workspace owner.
 */
FASTCTC_DEF fastctc_status fastctc_loss_f32(const float *acts, float *grads, const int *flat_labels,
                                            const int *label_lengths, const int *input_lengths, int max_time,
                                            int minibatch, int alphabet_size, float *costs, void *workspace,
                                            size_t workspace_bytes, const fastctc_options *options);

/* The same for float64: every argument as for fastctc_loss_f32, with double acts, grads
 * and costs (elem_size = sizeof(double) in fastctc_workspace_size). */
FASTCTC_DEF fastctc_status fastctc_loss_f64(const double *acts, double *grads, const int *flat_labels,
                                            const int *label_lengths, const int *input_lengths, int max_time,
                                            int minibatch, int alphabet_size, double *costs, void *workspace,
                                            size_t workspace_bytes, const fastctc_options *options);

/* ---- One sequence at a time (the engine the batch calls and the Python module share) ---- */

/* One sequence's problem, float32.  Rows are addressed through strides, so time-major
 * and batch-major batches are read in place.  Every pointer/size is trusted: the batch
 * entry points and the Python module validate first. */
typedef struct {
    const float *acts; /* [in] acts[t * act_stride + c], t < input_length, c < alphabet_size */
    ptrdiff_t act_stride; /* elements between consecutive frames */
    const int *labels; /* [in] label_length labels, each in [0, alphabet_size) */
    int label_length;
    int input_length;
    int alphabet_size;
    int blank;
    int from_logits;
    float *grad; /* [out] NULL, or grad[t * grad_stride + c] for t < grad_rows
                               (rows past input_length are zeroed) */
    ptrdiff_t grad_stride;
    int grad_rows;
    double grad_scale; /* the gradient is multiplied by this (reduction weights) */
    float *log_alpha; /* [out] NULL, or log_alpha[t * alpha_stride + s] for t < alpha_rows,
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
FASTCTC_DEF size_t fastctc_sequence_scratch_bytes(int max_time, int max_label_length, int want_grad, size_t elem_size);

/* Runs one sequence; returns its negative log-likelihood: +inf when infeasible (then the
 * gradient rows are 0, whatever the values), NaN under the non-finite rule: a NaN or +inf
 * in a cell a feasible sequence reads at one of its frames t < input_length -- with
 * log-probabilities the emission of a state s of the band S - 2(T - t) <= s < 2t + 2
 * (the cells a path of T frames can pass through), with logits any class of the frame (a
 * frame with no score above -inf counts too) -- makes the cost NaN and the gradient rows
 * [0, input_length) NaN (rows past it 0); -inf is a legal log-probability.
 * Bit-identical results whatever the thread count.
 * scratch: fastctc_sequence_scratch_bytes() bytes, 64-byte aligned.  Without log_alpha, a
 * sequence whose label_length exceeds its input_length is infeasible and needs no label
 * scratch: max_label_length may be taken over min(label_length, input_length). */
FASTCTC_DEF float fastctc_sequence_f32(const fastctc_job_f32 *job, void *scratch);
FASTCTC_DEF double fastctc_sequence_f64(const fastctc_job_f64 *job, void *scratch);

/* ---- Forced alignment (Viterbi best path) ---- */

/* The most probable CTC path of each sequence that collapses to its labels, with
 * torchaudio.functional.forced_align's tie-breaking (see detail/align.h), batched.
 * acts, flat_labels, label_lengths, input_lengths and options as for fastctc_loss_*
 * (options->zero_infinity is ignored; from_logits = 1 aligns log_softmax(acts)).
 *  [out] paths   minibatch * max_time labels, paths[n * max_time + t]: the class of the
 *                path at frame t; blank for t >= input_lengths[n]
 *  [out] scores  NULL, or minibatch * max_time values, same layout: the log-probability
 *                of paths' class at that frame (log_softmax'ed with from_logits); 0 for
 *                t >= input_lengths[n].  Their sum over t is the path's log-probability.
 *  [in]  workspace, workspace_bytes  caller-owned scratch of at least
 *                fastctc_align_workspace_size() bytes, or NULL to allocate inside
 * Returns FASTCTC_INVALID_ARGUMENT, before writing anything, also when a label equals the
 * blank, when a sequence's labels cannot fit its input length (input_lengths[n] <
 * label_lengths[n] + the number of adjacent repeated labels), or when paths, scores or
 * the workspace overlap each other or any input. */
FASTCTC_DEF fastctc_status fastctc_align_f32(const float *acts, const int *flat_labels, const int *label_lengths,
                                             const int *input_lengths, int max_time, int minibatch, int alphabet_size,
                                             int *paths, float *scores, void *workspace, size_t workspace_bytes,
                                             const fastctc_options *options);
FASTCTC_DEF fastctc_status fastctc_align_f64(const double *acts, const int *flat_labels, const int *label_lengths,
                                             const int *input_lengths, int max_time, int minibatch, int alphabet_size,
                                             int *paths, double *scores, void *workspace, size_t workspace_bytes,
                                             const fastctc_options *options);

/* Bytes of workspace fastctc_align_f32/_f64 need (arguments as fastctc_workspace_size);
 * per thread about input_length * (2 * label_length + 1) bytes of backpointers. */
FASTCTC_DEF fastctc_status fastctc_align_workspace_size(const int *label_lengths, const int *input_lengths,
                                                        int max_time, int minibatch, int alphabet_size,
                                                        size_t elem_size, const fastctc_options *options,
                                                        size_t *size_bytes);

/* One sequence's alignment problem, float32 (strided rows as in fastctc_job_f32).
 * Every pointer/size is trusted: labels in [0, alphabet_size), none equal to blank. */
typedef struct {
    const float *acts; /* [in] acts[t * act_stride + c], t < input_length */
    ptrdiff_t act_stride;
    const int *labels; /* [in] label_length labels */
    int label_length;
    int input_length;
    int alphabet_size;
    int blank;
    int from_logits;
    int *path; /* [out] path[t] for t < out_rows (blank past input_length) */
    float *scores; /* [out] NULL, or scores[t] for t < out_rows (0 past input_length) */
    int out_rows;
} fastctc_align_job_f32;

typedef struct {
    const double *acts;
    ptrdiff_t act_stride;
    const int *labels;
    int label_length;
    int input_length;
    int alphabet_size;
    int blank;
    int from_logits;
    int *path;
    double *scores;
    int out_rows;
} fastctc_align_job_f64;

/* Scratch bytes of one fastctc_align_sequence_* call (64-byte aligned); 0 on overflow. */
FASTCTC_DEF size_t fastctc_align_scratch_bytes(int max_time, int max_label_length, size_t elem_size);

/* Aligns one sequence; returns the best path's log-probability (the sum of its scores),
 * -inf when the labels cannot fit (then path is all blank and scores 0). */
FASTCTC_DEF float fastctc_align_sequence_f32(const fastctc_align_job_f32 *job, void *scratch);
FASTCTC_DEF double fastctc_align_sequence_f64(const fastctc_align_job_f64 *job, void *scratch);

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
static size_t fctc_row_width(int label_length) { return fctc_round_up((size_t)(2 * (size_t)label_length + 1) + 4, 16); }

/* Software prefetch for reading, no temporal locality hint beyond L2 (the rows are
 * streamed once).  FCTC_PREFETCH_LINES(p, bytes) covers [p, p + bytes) a 64-byte line at
 * a time; with a constant `bytes` the loop unrolls to one or two instructions. */
#if defined(__GNUC__) || defined(__clang__)
#define FCTC_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 0)
#define FCTC_PREFETCH_W(p) __builtin_prefetch((const void *)(p), 1, 0)
#else
#define FCTC_PREFETCH(p) ((void)(p))
#define FCTC_PREFETCH_W(p) ((void)(p))
#endif
/* Non-temporal (streaming) stores are weakly ordered on x86: after a sequence's last one,
 * a store fence makes them visible to other threads before the caller's join does. */
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#include <xmmintrin.h>
#define FCTC_STREAM_FENCE() _mm_sfence()
#else
#define FCTC_STREAM_FENCE() ((void)0)
#endif
#define FCTC_PREFETCH_LINES(p, bytes)                                                                                  \
    do {                                                                                                               \
        for (size_t fctc_pf_ = 0; fctc_pf_ < (size_t)(bytes); fctc_pf_ += 64)                                          \
            FCTC_PREFETCH((const char *)(p) + fctc_pf_);                                                               \
    } while (0)

/* Whether a sequence's gradient rows are written with non-temporal stores: only when the
 * block (rows x C) is larger than a core's L2 cache, so it could not stay cached for the
 * caller anyway, and rows are long enough (4 KiB) that the partial lines at their ends
 * are few.  Below that, cached stores are faster (and the caller may read the rows
 * while they are still in cache). */
#define FCTC_STREAM_MIN_ROW_BYTES 4096
#define FCTC_STREAM_MIN_BLOCK_BYTES ((size_t)1 << 20)
static int fctc_stream_rows(int rows, int C, size_t elem_size) {
    size_t row = (size_t)(C > 0 ? C : 0) * elem_size;
    return row >= FCTC_STREAM_MIN_ROW_BYTES && (size_t)(rows > 0 ? rows : 0) * row >= FCTC_STREAM_MIN_BLOCK_BYTES;
}

#include "detail/logmath.h"
#include "detail/dispatch.h"
#include "detail/threads.h"
#include "detail/template.h"
#include "detail/batch_common.h"

/* Kernel tables, the row kernels of each ISA, and the trellis, per dtype. */
#define FCTC_USE_F32
#include "detail/template.h"
#include "detail/kernels.h"
#include "detail/rows_scalar.h"
#include "detail/rows_avx2.h"
#include "detail/rows_avx512.h"
#include "detail/rows_neon.h"
#include "detail/select.h"
#include "detail/trellis.h"
#include "detail/split.h"
#include "detail/align.h"
#include "detail/driver.h"
#include "detail/batch.h"

#define FCTC_USE_F64
#include "detail/template.h"
#include "detail/kernels.h"
#include "detail/rows_scalar.h"
#include "detail/rows_avx2.h"
#include "detail/rows_avx512.h"
#include "detail/rows_neon.h"
#include "detail/select.h"
#include "detail/trellis.h"
#include "detail/split.h"
#include "detail/align.h"
#include "detail/driver.h"
#include "detail/batch.h"

FASTCTC_DEF const char *fastctc_status_string(fastctc_status status) {
    switch (status) {
    case FASTCTC_OK: return "no error";
    case FASTCTC_INVALID_ARGUMENT: return "invalid argument: a null pointer, or a size or value out of range";
    case FASTCTC_WORKSPACE_TOO_SMALL: return "workspace too small: see fastctc_workspace_size()";
    case FASTCTC_OUT_OF_MEMORY: return "out of memory: the internal workspace could not be allocated";
    default: return "unknown fastctc status";
    }
}

FASTCTC_DEF size_t fastctc_sequence_scratch_bytes(int max_time, int max_label_length, int want_grad, size_t elem_size) {
    if (max_time < 0 || max_label_length < 0 || (elem_size != 4 && elem_size != 8)) return 0;
    size_t S = 2 * (size_t)max_label_length + 1;
    size_t W = fctc_row_width(max_label_length);
    size_t T = max_time > 0 ? (size_t)max_time : 1;
    size_t alpha_rows = want_grad ? T : 2;
    /* alpha_rows * W * elem_size must not overflow */
    if (W > (SIZE_MAX / 4) / elem_size / alpha_rows) return 0;
    size_t bytes = fctc_round_up((S + 2) * sizeof(int), FCTC_ALIGN);
    bytes += 3 * fctc_round_up(W * elem_size, FCTC_ALIGN); /* skip, emit, gamma */
    bytes += fctc_round_up(2 * W * elem_size, FCTC_ALIGN); /* beta rows */
    bytes += fctc_round_up(T * elem_size, FCTC_ALIGN); /* per-frame log-sum-exp */
    bytes += fctc_round_up(T * sizeof(double), FCTC_ALIGN); /* per-row alpha offsets */
    bytes += fctc_round_up(alpha_rows * W * elem_size, FCTC_ALIGN);
    return bytes;
}

#ifdef __cplusplus
}
#endif

#endif /* FASTCTC_IMPLEMENTATION */
#endif /* FASTCTC_FASTCTC_H */
