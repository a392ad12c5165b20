/* Small compiler helpers the fast path uses from Cython (prefetch, branch hints). */
#ifndef FL_COMPAT_H
#define FL_COMPAT_H
#define fl_prefetch(p) __builtin_prefetch((const void *)(p), 0, 3)
#define fl_prefetch_w(p) __builtin_prefetch((const void *)(p), 1, 3)
#define fl_likely(x) __builtin_expect(!!(x), 1)
#define fl_unlikely(x) __builtin_expect(!!(x), 0)

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Big tables (conn entries, buckets): zeroed, 2 MiB aligned and advised as huge pages, so a
 * random lookup in a table of millions of entries costs a cache miss, not also a TLB miss. */
static inline void *fl_alloc_table(size_t size)
{
    void *p = NULL;
    size_t align = (size_t)2 << 20;
    size_t sz = (size + align - 1) & ~(align - 1);
    if (sz == 0)
        sz = align;
    if (posix_memalign(&p, align, sz) != 0)
        return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, sz, MADV_HUGEPAGE);
#endif
    memset(p, 0, sz);
    return p;
}
#endif
