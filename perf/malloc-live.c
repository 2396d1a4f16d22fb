// LD_PRELOAD live-heap breakdown for perf/idle-memory.sh: where the bytes of idle connections live.
// - OpenSSL's allocations (CRYPTO_set_mem_functions, installed before OpenSSL allocates anything):
//   live bytes and blocks per allocation site (source file:line as OpenSSL passes them).
// - Everything else (Swift, glibc): live bytes and blocks per malloc_usable_size class.
// SIGUSR2 appends a snapshot to $MALLOC_LIVE_FILE; diff two snapshots to see what N connections hold.
// "allocs FILE:LINE N" lines: allocations ever made at that OpenSSL site (diff two snapshots taken during a
// relay run to see which sites allocate per record).
// Diagnostic only (a signal handler that formats text), never for production.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <malloc.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);

// ---- plain malloc, by usable size (16-byte classes up to 64 KiB, one bucket above) ----
#define CLASSES 4097
static atomic_long cls_bytes[CLASSES], cls_count[CLASSES];
static inline int cls(size_t usable) { size_t c = usable / 16; return c < CLASSES - 1 ? (int)c : CLASSES - 1; }
static inline void account(void *p, long sign) {
  if (!p) return;
  size_t u = malloc_usable_size(p);
  atomic_fetch_add(&cls_bytes[cls(u)], sign * (long)u);
  atomic_fetch_add(&cls_count[cls(u)], sign);
}
void *malloc(size_t s) { void *p = __libc_malloc(s); account(p, 1); return p; }
void *calloc(size_t a, size_t b) { void *p = __libc_calloc(a, b); account(p, 1); return p; }
void *realloc(void *q, size_t s) { account(q, -1); void *p = __libc_realloc(q, s); account(p ? p : q, 1); if (!p && s == 0) account(q, 0); return p; }
void free(void *p) { account(p, -1); __libc_free(p); }
int posix_memalign(void **r, size_t a, size_t s) { void *p = __libc_memalign(a, s); if (!p) return 12; account(p, 1); *r = p; return 0; }
void *aligned_alloc(size_t a, size_t s) { void *p = __libc_memalign(a, s); account(p, 1); return p; }
void *memalign(size_t a, size_t s) { void *p = __libc_memalign(a, s); account(p, 1); return p; }

// ---- OpenSSL, by allocation site; a 16-byte header holds the site index and the size ----
#define SITES 4096
struct site { const char *file; int line; atomic_long bytes, count, total; };
static struct site sites[SITES];
static pthread_mutex_t site_lock = PTHREAD_MUTEX_INITIALIZER;
static int site_index(const char *file, int line) {
  unsigned h = ((unsigned)(uintptr_t)file * 2654435761u) ^ (unsigned)line * 40503u;
  for (unsigned i = 0; i < SITES; i++) {
    struct site *s = &sites[(h + i) % SITES];
    if (s->file == file && s->line == line) return (int)((h + i) % SITES);
    if (!s->file) {
      pthread_mutex_lock(&site_lock);
      if (!s->file) { s->line = line; s->file = file ? file : "?"; }
      pthread_mutex_unlock(&site_lock);
      if (s->file == (file ? file : "?") && s->line == line) return (int)((h + i) % SITES);
    }
  }
  return 0;
}
struct hdr { int site; int pad; size_t size; };
static void *ossl_malloc(size_t n, const char *file, int line) {
  struct hdr *h = __libc_malloc(n + sizeof *h);
  if (!h) return NULL;
  h->site = site_index(file, line); h->size = n;
  atomic_fetch_add(&sites[h->site].bytes, (long)n); atomic_fetch_add(&sites[h->site].count, 1);
  atomic_fetch_add(&sites[h->site].total, 1);
  return h + 1;
}
static void ossl_free(void *p, const char *file, int line) {
  (void)file; (void)line;
  if (!p) return;
  struct hdr *h = (struct hdr *)p - 1;
  atomic_fetch_sub(&sites[h->site].bytes, (long)h->size); atomic_fetch_sub(&sites[h->site].count, 1);
  __libc_free(h);
}
static void *ossl_realloc(void *p, size_t n, const char *file, int line) {
  if (!p) return ossl_malloc(n, file, line);
  if (n == 0) { ossl_free(p, file, line); return NULL; }
  struct hdr *old = (struct hdr *)p - 1;
  int site = old->site; size_t oldSize = old->size;
  struct hdr *h = __libc_realloc(old, n + sizeof *h);
  if (!h) return NULL;
  atomic_fetch_add(&sites[site].bytes, (long)n - (long)oldSize);
  h->size = n;
  return h + 1;
}

static char out[1 << 20];
static void dump(int sig) {
  (void)sig;
  size_t o = 0;
  long tb = 0, tc = 0;
  o += snprintf(out + o, sizeof out - o, "snapshot\n");
  for (int i = 0; i < SITES; i++) {
    if (!sites[i].file) continue;
    long b = atomic_load(&sites[i].bytes), c = atomic_load(&sites[i].count);
    long t = atomic_load(&sites[i].total);
    if (o < sizeof out - 256) o += snprintf(out + o, sizeof out - o, "allocs %s:%d %ld 0\n", sites[i].file, sites[i].line, t);
    if (c == 0 && b == 0) continue;
    tb += b; tc += c;
    if (o < sizeof out - 256) o += snprintf(out + o, sizeof out - o, "ossl %s:%d %ld %ld\n", sites[i].file, sites[i].line, b, c);
  }
  o += snprintf(out + o, sizeof out - o, "ossl-total %ld %ld\n", tb, tc);
  tb = 0; tc = 0;
  for (int i = 0; i < CLASSES; i++) {
    long b = atomic_load(&cls_bytes[i]), c = atomic_load(&cls_count[i]);
    if (c == 0) continue;
    tb += b; tc += c;
    if (o < sizeof out - 256) o += snprintf(out + o, sizeof out - o, "size %d %ld %ld\n", i * 16, b, c);
  }
  o += snprintf(out + o, sizeof out - o, "size-total %ld %ld\nend\n", tb, tc);
  const char *f = getenv("MALLOC_LIVE_FILE");
  if (!f) return;
  int fd = open(f, O_WRONLY | O_APPEND | O_CREAT, 0644);
  if (fd < 0) return;
  ssize_t w = write(fd, out, o); (void)w;
  close(fd);
}
__attribute__((constructor)) static void init(void) {
  if (!CRYPTO_set_mem_functions(ossl_malloc, ossl_realloc, ossl_free)) {
    const char m[] = "malloc-live: CRYPTO_set_mem_functions refused (OpenSSL allocated first)\n";
    ssize_t w = write(2, m, sizeof m - 1); (void)w;
  }
  signal(SIGUSR2, dump);
}
