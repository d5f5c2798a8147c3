#ifndef YOMO_BENCH_MALLOC_COUNTER_H
#define YOMO_BENCH_MALLOC_COUNTER_H

/// Heap allocations (malloc, calloc, realloc, posix_memalign) so far in the
/// whole process, every thread; 0 where the counter cannot interpose (not glibc).
long yomo_bench_malloc_calls(void);

#endif
