# The C side of the extension that other Cython modules of fastlvs may cimport (uvloop's
# shape): the engine's plain C types and constants (dataplane/types.pxi, which includes the
# contract's generated constants), the frame slots, and cdef class Engine's attributes and
# C methods, the hook for bare forwarders and the ring's send operations. _testing.pyx, the
# test and benchmark tools, is its one user.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t, int32_t, int64_t

include "dataplane/types.pxi"

cdef enum:
    SLOT_HEADROOM = 128             # frames copied in from Python: room to grow forwards
    SLOT_SIZE = 128 + 9216 + 64


cdef class Engine:
    cdef fl_engine st
    cdef fl_frame *frames           # MAX_BATCH descriptors over `slots`, for frames from Python
    cdef uint8_t *slots
    cdef readonly int batch
    cdef object callback
    cdef object error               # the first scheduler callback error, raised after the batch
    cdef double _off_read_at        # time.monotonic() of the last offload read-back

    cdef uint16_t _vip_intern(self, uint8_t proto, uint32_t *addr, uint16_t port) except 0
    cdef int _dest_grow(self, uint32_t dest_id) except -1
    cdef int _schedule_parked(self, fl_frame *frames) except -1
    cdef int run_frames(self, fl_frame *frames, int n) except -1
    cdef int _run(self, int n) except -1
    cdef int _load(self, chunk, ts) except -1
    cdef int _frag_alloc(self, size_t mem) except -1
    cdef int _frag_addrs(self) except -1
    cdef void _count_port0(self)
    cdef int _addr_set(self, uint32_t **tab, uint32_t *mask, addrs) except -1
    cdef list _outputs(self, fl_frame *f)
    cdef int _off_fresh(self) except -1


# The ring loop (dataplane/ring_loop.pxi) runs a Bare forwarder's fn in place of an Engine.
ctypedef void (*fl_bare_fn)(void *ctx, uint32_t in_ifindex, fl_frame *frames,
                            int n) noexcept nogil

cdef class Bare:
    cdef fl_bare_fn fn
    cdef void *ctx

# Sending on a port from outside the ring loop: `ring` is what port_ring(port) returns.
cdef void *port_ring(object port) except NULL
cdef void ring_tx_copy(void *ring, const uint8_t *data, uint32_t len) noexcept nogil
cdef void ring_tx_flush(void *ring) noexcept nogil
cdef uint64_t ring_tx_full(void *ring) noexcept nogil
