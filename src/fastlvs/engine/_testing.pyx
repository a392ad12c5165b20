# cython: language_level=3
"""Test and benchmark tools over the engine extension; the product never imports this module.

`Loaded` keeps frames in C memory and replays them through an Engine's batch entry (the
engine benchmarks' loop, and beside it the bare baseline loop they are measured against);
`py_hash_32` and `py_hsiphash_u32` expose the C hashes to the differential tests. It reaches
the engine through the C side that _core.pxd declares, and compiles the same dataplane
fragments (csum.pxi, hash.pxi) the engine is built from.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t, int32_t, int64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy
from compat cimport fl_prefetch, fl_prefetch_w, fl_likely, fl_unlikely

from fastlvs.engine._core cimport *

include "dataplane/csum.pxi"
include "dataplane/hash.pxi"


def py_hash_32(uint32_t val, unsigned int bits):
    """hash_32(val, bits) computed in C, for differential tests against the Python version."""
    if bits < 1 or bits > 32:
        raise ValueError(f"bits must be 1..32, got {bits}")
    return hash_32(val, bits)


def py_hsiphash_u32(uint32_t val, uint64_t k0, uint64_t k1):
    """hsiphash of the native u32 `val` with key (k0, k1), computed in C (64-bit kernel)."""
    return hsiphash_1u32(val, k0, k1)


cdef void baseline_touch(fl_engine *e, fl_frame *frames, int n) noexcept nogil:
    # The reference loop for benchmarks: read what any forwarder must read (ethertype,
    # addresses, ports) and write the MACs, nothing else.
    cdef int i
    cdef uint8_t *d
    cdef uint32_t acc = 0
    for i in range(n):
        d = frames[i].data
        if rd16(d + 12) == 0x0800:
            acc += rd32(d + 26) ^ rd32(d + 30) ^ rd32(d + 34)
            memcpy(d, e.local_mac, 6)
            memcpy(d + 6, e.local_mac, 6)
            frames[i].verdict = VERDICT_TX
            frames[i].out_len = frames[i].len + (acc & 0)


cdef class Loaded:
    """Loaded(engine, frames=()): copies of `frames` (any count) kept in C memory, which
    process() and baseline() run through `engine`'s frame slots in batches of engine.batch."""
    cdef readonly Engine engine
    cdef uint8_t *saved
    cdef uint32_t *saved_len
    cdef size_t *saved_off
    cdef int nloaded
    cdef readonly uint32_t new_flow_src   # last source process(new_flows=True) wrote

    def __cinit__(self, Engine engine not None, frames=()):
        self.engine = engine
        self.new_flow_src = 0x0B000001
        self.load(frames)

    def load(self, frames):
        """Replace the kept frames by copies of `frames`; new_flow_src carries on."""
        cdef size_t total = 0, off = 0
        cdef int j, n = len(frames)
        cdef const uint8_t[::1] view
        for fr in frames:
            if len(fr) > SLOT_SIZE - SLOT_HEADROOM:
                raise ValueError("frame too large")
            total += len(fr)
        free(self.saved)
        free(self.saved_len)
        free(self.saved_off)
        self.nloaded = 0
        self.saved = <uint8_t *>malloc(total + 1)
        self.saved_len = <uint32_t *>calloc(n + 1, sizeof(uint32_t))
        self.saved_off = <size_t *>calloc(n + 1, sizeof(size_t))
        if self.saved == NULL or self.saved_len == NULL or self.saved_off == NULL:
            raise MemoryError()
        for j in range(n):
            view = frames[j]
            self.saved_len[j] = view.shape[0]
            self.saved_off[j] = off
            if view.shape[0]:
                memcpy(self.saved + off, &view[0], view.shape[0])
            off += view.shape[0]
        self.nloaded = n

    def __dealloc__(self):
        free(self.saved)
        free(self.saved_len)
        free(self.saved_off)

    def __len__(self):
        return self.nloaded

    cdef void _restore(self, int start, int n, uint64_t now_ns) noexcept nogil:
        cdef int j
        cdef fl_frame *f
        for j in range(n):
            f = &self.engine.frames[j]
            f.data = self.engine.slots + <size_t>j * SLOT_SIZE + SLOT_HEADROOM
            f.headroom = SLOT_HEADROOM
            f.len = self.saved_len[start + j]
            f.ts_ns = now_ns
            memcpy(f.data, self.saved + self.saved_off[start + j], f.len)

    def process(self, uint64_t now_ns, bint new_flows=False):
        """Restore the loaded frames (memcpy) batch by batch and run them; returns how many
        were sent. new_flows=True gives every frame a fresh IPv4 source address first (valid
        header checksum; the next one is new_flow_src + 1), so each run opens new conns."""
        cdef Engine e = self.engine
        cdef int j, n, start = 0, tx = 0
        cdef uint8_t *ip
        cdef uint32_t l2
        while start < self.nloaded:
            n = min(e.batch, self.nloaded - start)
            self._restore(start, n, now_ns)
            if new_flows:
                for j in range(n):
                    l2 = 18 if rd16(e.frames[j].data + 12) == 0x8100 else 14
                    ip = e.frames[j].data + l2
                    self.new_flow_src += 1
                    wr32(ip + 12, self.new_flow_src)
                    wr16(ip + 10, 0)
                    wr16(ip + 10, csum_of(ip, (ip[0] & 0x0F) * 4))
            e._run(n)
            for j in range(n):
                if e.frames[j].verdict == VERDICT_TX:
                    tx += 1
            start += n
            if e.error is not None:
                break
        e._raise_pending()
        return tx

    def baseline(self):
        """The same restores plus a minimal header touch per frame: the benchmarks' yardstick."""
        cdef Engine e = self.engine
        cdef int start = 0, n
        with nogil:
            while start < self.nloaded:
                n = e.batch if self.nloaded - start > e.batch else self.nloaded - start
                self._restore(start, n, 0)
                baseline_touch(&e.st, e.frames, n)
                start += n
        return self.nloaded
