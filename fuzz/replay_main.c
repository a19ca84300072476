/* fuzz/replay_main.c: runs the libFuzzer harness (fuzz_capi.c) over saved inputs without
 * libFuzzer, so any C compiler (gcc included) can replay the corpus and the regression
 * files, with or without sanitizers.  Usage: replay FILE_OR_DIR...  Exit status 0 when
 * every input ran (a broken contract aborts).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    long n;
    uint8_t *buf;
    if (!f) return 1;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = (uint8_t *)malloc(n > 0 ? (size_t)n : 1);
    if (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(buf);
        return 1;
    }
    fclose(f);
    LLVMFuzzerTestOneInput(buf, (size_t)(n > 0 ? n : 0));
    free(buf);
    return 0;
}

int main(int argc, char **argv) {
    int i, count = 0, errors = 0;
    for (i = 1; i < argc; ++i) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            ++errors;
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            DIR *d = opendir(argv[i]);
            struct dirent *e;
            while (d && (e = readdir(d)) != NULL) {
                char path[4096];
                if (e->d_name[0] == '.') continue;
                snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
                errors += run_file(path);
                ++count;
            }
            if (d) closedir(d);
        } else {
            errors += run_file(argv[i]);
            ++count;
        }
    }
    printf("replayed %d inputs, %d unreadable\n", count, errors);
    return errors != 0;
}
