/* Small compiler helpers the fast path uses from Cython (prefetch, branch hints). */
#ifndef FL_COMPAT_H
#define FL_COMPAT_H
#define fl_prefetch(p) __builtin_prefetch((const void *)(p), 0, 3)
#define fl_prefetch_w(p) __builtin_prefetch((const void *)(p), 1, 3)
#define fl_likely(x) __builtin_expect(!!(x), 1)
#define fl_unlikely(x) __builtin_expect(!!(x), 0)
#endif
