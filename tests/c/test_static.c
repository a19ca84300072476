/* tests/c/test_static.c: the header with FASTCTC_STATIC (every function private to this
 * file) builds cleanly under -Werror while calling only one entry point, and works:
 * one label over T uniform frames of C classes, blank 0.  The alignments are the
 * T (T + 1) / 2 nonempty runs of the label among blanks, each of probability C^-T, so
 * the cost is T log C - log(T (T + 1) / 2).  Exit status 0 when the cost matches.
 */
#define FASTCTC_IMPLEMENTATION
#define FASTCTC_STATIC
#include <fastctc/fastctc.h>

#include <math.h>
#include <stdio.h>

int main(void) {
    enum { T = 6, C = 4 };
    double acts[T * C], cost = 0, want = T * log((double)C) - log(T * (T + 1) / 2.0);
    int label = 2, L = 1, len = T, k;
    for (k = 0; k < T * C; ++k) acts[k] = -log((double)C);
    if (fastctc_loss_f64(acts, NULL, &label, &L, &len, T, 1, C, &cost, NULL, 0, NULL) != FASTCTC_OK) return 1;
    printf("test_static: cost %.12g, want %.12g\n", cost, want);
    return fabs(cost - want) < 1e-12 ? 0 : 2;
}
