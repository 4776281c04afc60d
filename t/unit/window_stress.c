/* Many processes and threads raise one shared window end at once, as httpd
 * children do when several 429s with different Retry-After values arrive
 * together.  Afterwards the end must be the latest value anyone tried
 * (no lost update that matters), and no read along the way may have seen
 * a value nobody wrote (no torn read).  Prints TAP.
 *
 * Every value written carries a check pattern in its low 16 bits, derived
 * from its high bits, so a torn read shows as a broken pattern. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "apr_general.h"
#include "aoai_window.h"

#define PROCESSES 4
#define THREADS 4
#define RAISES 200000

typedef struct {
    volatile apr_uint64_t end;
    apr_uint64_t latest_tried[PROCESSES * THREADS];
    apr_uint64_t reads[PROCESSES * THREADS];
    apr_uint64_t torn[PROCESSES * THREADS];
} shared_t;

static shared_t *shared;
static int process_index;

static apr_uint64_t check_bits(apr_uint64_t high)
{
    return (high * 0x9E3779B97F4A7C15ULL) >> 48;
}

static apr_uint64_t with_check(apr_uint64_t high)
{
    return (high << 16) | check_bits(high);
}

static void *raiser(void *arg)
{
    int slot = process_index * THREADS + (int)(long)arg;
    apr_uint64_t state = 0x12345678ULL * (slot + 1), latest = 0;
    int i;

    for (i = 0; i < RAISES; i++) {
        apr_uint64_t high, value, seen;
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        high = (state >> 24) & 0xFFFFFFFFFFULL;   /* 40 bits: positive */
        value = with_check(high);
        if (value > latest) {
            latest = value;
        }
        aoai_window_raise(&shared->end, (apr_time_t)value);
        seen = (apr_uint64_t)aoai_window_read(&shared->end);
        shared->reads[slot]++;
        if (seen && (seen & 0xFFFF) != check_bits(seen >> 16)) {
            shared->torn[slot]++;
        }
    }
    shared->latest_tried[slot] = latest;
    return NULL;
}

int main(void)
{
    pid_t children[PROCESSES];
    apr_uint64_t latest = 0, reads = 0, torn = 0;
    int p, t, failed = 0;

    apr_initialize();
    shared = mmap(NULL, sizeof(*shared), PROT_READ | PROT_WRITE,
                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) {
        printf("1..0 # SKIP no shared memory\n");
        return 0;
    }
    for (p = 0; p < PROCESSES; p++) {
        children[p] = fork();
        if (children[p] == 0) {
            pthread_t threads[THREADS];
            process_index = p;
            for (t = 0; t < THREADS; t++) {
                pthread_create(&threads[t], NULL, raiser, (void *)(long)t);
            }
            for (t = 0; t < THREADS; t++) {
                pthread_join(threads[t], NULL);
            }
            _exit(0);
        }
    }
    for (p = 0; p < PROCESSES; p++) {
        int status;
        waitpid(children[p], &status, 0);
        failed |= !WIFEXITED(status) || WEXITSTATUS(status);
    }
    for (t = 0; t < PROCESSES * THREADS; t++) {
        if (shared->latest_tried[t] > latest) {
            latest = shared->latest_tried[t];
        }
        reads += shared->reads[t];
        torn += shared->torn[t];
    }
    printf("1..4\n");
    printf("%sok 1 - %d processes x %d threads x %d raises finished\n",
           failed ? "not " : "", PROCESSES, THREADS, RAISES);
    printf("%sok 2 - the window ends at the latest value anyone tried\n",
           shared->end == latest ? "" : "not ");
    if (shared->end != latest) {
        printf("# end %llu, latest tried %llu\n",
               (unsigned long long)shared->end, (unsigned long long)latest);
    }
    printf("%sok 3 - no torn read in %llu reads\n", torn ? "not " : "",
           (unsigned long long)reads);
    printf("%sok 4 - a window end of 0 or less is never installed\n",
           aoai_window_raise(&shared->end, -5) == 0
           && shared->end == latest ? "" : "not ");
    return failed || shared->end != latest || torn;
}
