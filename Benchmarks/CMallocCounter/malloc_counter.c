// Counts the process's heap allocations for the benchmarks. Defined in C
// because interposing libc's allocator means defining `malloc` itself, a name
// Swift reserves (a Swift `@_cdecl("malloc")` is warned about and will be
// rejected). The executable exports these (`--export-dynamic`), so calls from
// the Swift runtime and every shared library land here and pass on to glibc's
// own entry points.
#include "malloc_counter.h"

#include <errno.h>  // also defines __GLIBC__ where libc is glibc
#include <stdatomic.h>
#include <stddef.h>

#if defined(__GLIBC__)

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t count, size_t size);
extern void *__libc_realloc(void *pointer, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);

static atomic_long calls;

static inline void count_call(void) {
    atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);
}

void *malloc(size_t size) {
    count_call();
    return __libc_malloc(size);
}

void *calloc(size_t count, size_t size) {
    count_call();
    return __libc_calloc(count, size);
}

void *realloc(void *pointer, size_t size) {
    count_call();
    return __libc_realloc(pointer, size);
}

int posix_memalign(void **result, size_t alignment, size_t size) {
    count_call();
    void *pointer = __libc_memalign(alignment, size);
    if (pointer == NULL) return ENOMEM;
    *result = pointer;
    return 0;
}

long yomo_bench_malloc_calls(void) {
    return atomic_load_explicit(&calls, memory_order_relaxed);
}
#else
long yomo_bench_malloc_calls(void) { return 0; }
#endif
