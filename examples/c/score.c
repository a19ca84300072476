/* examples/c/score.c: score one utterance with fastctc's C API.
 *
 * Reads a (T, C) float32 or float64 array of per-frame log-probabilities (or, with
 * --logits, unnormalised scores) from a NumPy .npy file, and a label sequence, and
 * prints the CTC loss -log p(labels | frames).
 *
 *   cc -O2 -fopenmp -I "$(python -c 'import fastctc; print(fastctc.get_include())')" \
 *      examples/c/score.c -o score -lm
 *   ./score [--blank B] [--logits] FILE.npy LABELS        LABELS: e.g. 3,1,20 ("" = none)
 *
 * Output: "loss <value>" (inf when the labels cannot fit the frames).  Exit status 0 on
 * success, 1 on a bad file or argument (with a message on stderr).
 */
#define FASTCTC_IMPLEMENTATION
#include <fastctc/fastctc.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int die(const char *msg, const char *detail) {
    fprintf(stderr, "score: %s%s%s\n", msg, detail ? ": " : "", detail ? detail : "");
    return 1;
}

/* Value of a key in the .npy header dict, e.g. 'descr': '<f4' -> points at '<f4'. */
static const char *npy_field(const char *header, const char *key) {
    const char *p = strstr(header, key);
    if (!p) return NULL;
    p += strlen(key);
    while (*p == ' ' || *p == '\'' || *p == '"' || *p == ':') ++p;
    return p;
}

/* Loads a 2-D float32/float64 .npy file as doubles in C order; 0 on success. */
static int load_npy(const char *path, double **out, int *rows, int *cols, const char **why) {
    unsigned char magic[10];
    char *header = NULL;
    size_t header_len, count, i, elem;
    long dims[2];
    int fortran, big_endian, ndim = 0;
    const char *p;
    unsigned char *raw = NULL;
    double *data = NULL;
    FILE *f = fopen(path, "rb");
    *why = "cannot open the file";
    if (!f) return 1;
    *why = "not a .npy file";
    if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "\x93NUMPY", 6) != 0) goto fail;
    if (magic[6] == 1) {
        if (fread(magic + 8, 1, 2, f) != 2) goto fail;
        header_len = (size_t)magic[8] | ((size_t)magic[9] << 8);
    } else if (magic[6] == 2 || magic[6] == 3) {
        unsigned char b[4];
        if (fread(b, 1, 4, f) != 4) goto fail;
        header_len = (size_t)b[0] | ((size_t)b[1] << 8) | ((size_t)b[2] << 16) | ((size_t)b[3] << 24);
    } else {
        *why = "unsupported .npy version";
        goto fail;
    }
    if (header_len > 1u << 20) goto fail;
    header = (char *)malloc(header_len + 1);
    if (!header || fread(header, 1, header_len, f) != header_len) goto fail;
    header[header_len] = 0;

    *why = "dtype must be float32 or float64";
    p = npy_field(header, "descr");
    if (!p || (p[0] != '<' && p[0] != '>' && p[0] != '=') || p[1] != 'f' || (p[2] != '4' && p[2] != '8') ||
        (p[3] != '\'' && p[3] != '"'))
        goto fail;
    elem = p[2] == '4' ? 4 : 8;
    {
        const unsigned one = 1;
        int host_little = *(const unsigned char *)&one == 1;
        big_endian = (p[0] == '>' && host_little) || (p[0] == '<' && !host_little);
    }
    p = npy_field(header, "fortran_order");
    fortran = p && strncmp(p, "True", 4) == 0;
    *why = "shape must be (T, C) with C >= 1";
    p = npy_field(header, "shape");
    if (!p || *p != '(') goto fail;
    ++p;
    while (ndim < 3) {
        char *end;
        long v;
        while (*p == ' ') ++p;
        if (*p == ')') break;
        v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > INT_MAX) goto fail;
        if (ndim < 2) dims[ndim] = v;
        ++ndim;
        p = end;
        while (*p == ' ' || *p == ',') ++p;
    }
    if (ndim != 2 || dims[1] < 1) goto fail;
    count = (size_t)dims[0] * (size_t)dims[1];
    raw = (unsigned char *)malloc(count * elem + 1);
    data = (double *)malloc(count * sizeof(double) + 1);
    *why = "the file is shorter than its shape says";
    if (!raw || !data || fread(raw, elem, count, f) != count) goto fail;
    for (i = 0; i < count; ++i) {
        unsigned char *b = raw + i * elem;
        double v;
        if (big_endian) {
            size_t j;
            for (j = 0; j < elem / 2; ++j) {
                unsigned char tmp = b[j];
                b[j] = b[elem - 1 - j];
                b[elem - 1 - j] = tmp;
            }
        }
        if (elem == 4) {
            float x;
            memcpy(&x, b, 4);
            v = x;
        } else {
            memcpy(&v, b, 8);
        }
        if (fortran) { /* element i is (i % T, i / T) */
            size_t t = i % (size_t)dims[0], c = i / (size_t)dims[0];
            data[t * (size_t)dims[1] + c] = v;
        } else {
            data[i] = v;
        }
    }
    fclose(f);
    free(header);
    free(raw);
    *out = data;
    *rows = (int)dims[0];
    *cols = (int)dims[1];
    return 0;
fail:
    fclose(f);
    free(header);
    free(raw);
    free(data);
    return 1;
}

/* "3,1,20" or "3 1 20" -> labels; returns the count, -1 on a malformed list. */
static int parse_labels(const char *text, int **labels) {
    int n = 0, cap = 16;
    const char *p = text;
    *labels = (int *)malloc((size_t)cap * sizeof(int));
    for (;;) {
        char *end;
        long v;
        while (*p == ' ' || *p == ',') ++p;
        if (!*p) return n;
        v = strtol(p, &end, 10);
        if (end == p || v < INT_MIN || v > INT_MAX) return -1;
        if (n == cap) {
            cap *= 2;
            *labels = (int *)realloc(*labels, (size_t)cap * sizeof(int));
        }
        (*labels)[n++] = (int)v;
        p = end;
    }
}

int main(int argc, char **argv) {
    fastctc_options opt;
    const char *path = NULL, *label_text = NULL, *why = NULL;
    double *acts = NULL, cost = 0;
    int *labels = NULL, T = 0, C = 0, L, i;
    fastctc_status st;
    memset(&opt, 0, sizeof opt); /* all zero = defaults: blank 0, log-probs */
    for (i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--blank") && i + 1 < argc)
            opt.blank = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--logits"))
            opt.from_logits = 1;
        else if (!path)
            path = argv[i];
        else if (!label_text)
            label_text = argv[i];
        else
            return die("too many arguments", argv[i]);
    }
    if (!path || !label_text) return die("usage: score [--blank B] [--logits] FILE.npy LABELS", NULL);
    if (load_npy(path, &acts, &T, &C, &why)) return die(why, path);
    L = parse_labels(label_text, &labels);
    if (L < 0) return die("labels must be integers separated by commas or spaces", label_text);

    /* One sequence: minibatch 1, so the time-major and batch-major layouts coincide. */
    st = fastctc_loss_f64(acts, NULL, labels, &L, &T, T, 1, C, &cost, NULL, 0, &opt);
    if (st != FASTCTC_OK) return die(fastctc_status_string(st), "check --blank and that every label is in [0, C)");
    printf("loss %.9g\n", cost);
    free(acts);
    free(labels);
    return 0;
}
