# Declarations of includes/fl_compat.h (prefetch and branch hints for the batch loop).
cdef extern from "fl_compat.h" nogil:
    void fl_prefetch(const void *p)
    void fl_prefetch_w(const void *p)
    bint fl_likely(bint x)
    bint fl_unlikely(bint x)
    void *fl_alloc_table(size_t size)
