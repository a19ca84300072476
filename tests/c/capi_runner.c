/* tests/c/capi_runner.c: runs one fastctc_loss_f32/_f64 call described by a binary file
 * and writes the results to another, so tests/test_capi.py can compare the C API with
 * the Python API on random problems.
 *
 * Input (native byte order): 11 int32 values
 *     T, N, C, blank, from_logits, zero_infinity, num_threads, batch_major,
 *     want_grad, use_f32, workspace_mode (0 internal, 1 caller-owned, 2 caller-owned at
 *     an odd address)
 * then N int32 input lengths, N int32 label lengths, sum(label lengths) int32 labels,
 * T*N*C float64 acts in the layout batch_major names.
 * Output: N float64 costs, then (want_grad) T*N*C float64 grads in the same layout.
 * Usage: capi_runner IN OUT.  Exit status: the fastctc_status (0 OK), 90+ for I/O errors.
 */
#define FASTCTC_IMPLEMENTATION
#include <fastctc/fastctc.h>

#include <stdio.h>
#include <stdlib.h>

static int read_ints(FILE *f, int *out, size_t n) { return fread(out, sizeof(int), n, f) == n; }

int main(int argc, char **argv) {
    int h[11], T, N, C, want_grad, use_f32, ws_mode;
    int *il, *ll, *labels;
    size_t total = 0, count, i;
    double *acts, *grads, *costs;
    fastctc_options o;
    fastctc_status st;
    void *buf = NULL, *ws = NULL;
    size_t ws_bytes = 0;
    FILE *f;
    if (argc != 3) return 90;
    f = fopen(argv[1], "rb");
    if (!f || !read_ints(f, h, 11)) return 91;
    T = h[0];
    N = h[1];
    C = h[2];
    o.blank = h[3];
    o.from_logits = h[4];
    o.zero_infinity = h[5];
    o.num_threads = h[6];
    o.batch_major = h[7];
    want_grad = h[8];
    use_f32 = h[9];
    ws_mode = h[10];
    if (T < 0 || N < 0 || C < 1) return 92;
    il = (int *)malloc((size_t)N * sizeof(int) + 1);
    ll = (int *)malloc((size_t)N * sizeof(int) + 1);
    if (!read_ints(f, il, (size_t)N) || !read_ints(f, ll, (size_t)N)) return 93;
    for (i = 0; i < (size_t)N; ++i) total += (size_t)(ll[i] > 0 ? ll[i] : 0);
    labels = (int *)malloc(total * sizeof(int) + 1);
    if (!read_ints(f, labels, total)) return 94;
    count = (size_t)T * (size_t)N * (size_t)C;
    acts = (double *)malloc(count * sizeof(double) + 1);
    grads = (double *)malloc(count * sizeof(double) + 1);
    costs = (double *)malloc((size_t)N * sizeof(double) + 1);
    if (fread(acts, sizeof(double), count, f) != count) return 95;
    fclose(f);

    if (ws_mode) {
        st =
            fastctc_workspace_size(ll, il, T, N, C, want_grad, use_f32 ? sizeof(float) : sizeof(double), &o, &ws_bytes);
        if (st != FASTCTC_OK) return (int)st;
        buf = malloc(ws_bytes + 1);
        ws = ws_mode == 2 ? (void *)((char *)buf + 1) : buf;
    }
    if (use_f32) {
        float *a = (float *)malloc(count * sizeof(float) + 1), *g = (float *)malloc(count * sizeof(float) + 1);
        float *c = (float *)malloc((size_t)N * sizeof(float) + 1);
        for (i = 0; i < count; ++i) a[i] = (float)acts[i];
        st = fastctc_loss_f32(a, want_grad ? g : NULL, labels, ll, il, T, N, C, c, ws, ws_bytes, &o);
        for (i = 0; i < count; ++i) grads[i] = g[i];
        for (i = 0; i < (size_t)N; ++i) costs[i] = c[i];
        free(a);
        free(g);
        free(c);
    } else {
        st = fastctc_loss_f64(acts, want_grad ? grads : NULL, labels, ll, il, T, N, C, costs, ws, ws_bytes, &o);
    }
    if (st != FASTCTC_OK) {
        fprintf(stderr, "capi_runner: %s\n", fastctc_status_string(st));
        return (int)st;
    }
    f = fopen(argv[2], "wb");
    if (!f) return 96;
    if (fwrite(costs, sizeof(double), (size_t)N, f) != (size_t)N) return 97;
    if (want_grad && fwrite(grads, sizeof(double), count, f) != count) return 97;
    fclose(f);
    free(buf);
    free(il);
    free(ll);
    free(labels);
    free(acts);
    free(grads);
    free(costs);
    return 0;
}
