// LD_PRELOAD malloc counter for perf/mallocs-per-message.sh: counts malloc/calloc/realloc/posix_memalign
// calls of the whole process; SIGUSR2 appends the count to $MALLOC_COUNT_FILE.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <signal.h>
static atomic_ulong n;
static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static char bootstrap[4096]; static size_t boot_used;
void *malloc(size_t s) { if (!real_malloc) real_malloc = dlsym(RTLD_NEXT, "malloc"); atomic_fetch_add(&n, 1); return real_malloc(s); }
void *calloc(size_t a, size_t b) {
  if (!real_calloc) { if (boot_used + a*b < sizeof bootstrap) { void *p = bootstrap + boot_used; boot_used += a*b; return p; } }
  if (!real_calloc) real_calloc = dlsym(RTLD_NEXT, "calloc");
  atomic_fetch_add(&n, 1); return real_calloc(a, b); }
void *realloc(void *p, size_t s) { if (!real_realloc) real_realloc = dlsym(RTLD_NEXT, "realloc"); atomic_fetch_add(&n, 1); return real_realloc(p, s); }
int posix_memalign(void **p, size_t a, size_t s) { if (!real_posix_memalign) real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign"); atomic_fetch_add(&n, 1); return real_posix_memalign(p, a, s); }
void free(void *p) { static void (*real_free)(void *); if ((char*)p >= bootstrap && (char*)p < bootstrap + sizeof bootstrap) return; if (!real_free) real_free = dlsym(RTLD_NEXT, "free"); real_free(p); }
static void dump(int sig) { char b[64]; int l = snprintf(b, sizeof b, "%lu\n", (unsigned long)atomic_load(&n)); const char *f = getenv("MALLOC_COUNT_FILE"); if (f) { FILE *o = fopen(f, "a"); if (o) { fwrite(b, 1, l, o); fclose(o);} } }
__attribute__((constructor)) static void init(void) { signal(SIGUSR2, dump); }
