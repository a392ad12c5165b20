# cython: language_level=3
"""Test and benchmark tools over the engine extension; the product never imports this module.

`Loaded` keeps frames in C memory and replays them through an Engine's batch entry (the
engine benchmarks' loop, and beside it the bare baseline loop they are measured against);
`PassThrough` is the bare forwarder the ring tests poll in place of an Engine, `transmit`
injects frames into a port's TX ring; `py_hash_32` and `py_hsiphash_u32` expose the C hashes
to the differential tests, `neigh_key`, `engine_seed` and `engine_rnd` the keys of its
tables. It reaches the engine through the C side that _core.pxd declares, and compiles the
same dataplane fragments (csum.pxi, hash.pxi) the engine is built from.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t, int32_t, int64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from compat cimport fl_prefetch, fl_prefetch_w, fl_likely, fl_unlikely

from fastlvs.engine._core cimport *

include "dataplane/csum.pxi"
include "dataplane/hash.pxi"

from fastlvs.engine._core import _mac_bytes


def py_hash_32(uint32_t val, unsigned int bits):
    """hash_32(val, bits) computed in C, for differential tests against the Python version."""
    if bits < 1 or bits > 32:
        raise ValueError(f"bits must be 1..32, got {bits}")
    return hash_32(val, bits)


def py_hsiphash_u32(uint32_t val, uint64_t k0, uint64_t k1):
    """hsiphash of the native u32 `val` with key (k0, k1), computed in C (64-bit kernel)."""
    return hsiphash_1u32(val, k0, k1)


def neigh_key(Engine engine):
    """(k0, k1): the random hsiphash key that places clients in `engine`'s client-MAC table,
    for a reference engine that is to choose the same sets."""
    return (engine.st.neigh_k0, engine.st.neigh_k1)


def engine_seed(Engine engine):
    """The random seed of `engine`'s keyed hashes (conn chains, reassembly shares), for a
    reference engine that is to count fragments against the same per-source shares."""
    return engine.st.seed


def engine_rnd(Engine engine):
    """The state of `engine`'s xorshift generator (drop_entry's random picks)."""
    return engine.st.rnd


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
        # the engine's pointers read once: memcpy may alias them, so the compiler would
        # reload them through self.engine on every frame
        cdef fl_frame *frames = self.engine.frames
        cdef uint8_t *slots = self.engine.slots
        cdef int j
        cdef fl_frame *f
        for j in range(n):
            f = &frames[j]
            f.data = slots + <size_t>j * SLOT_SIZE + SLOT_HEADROOM
            f.headroom = SLOT_HEADROOM
            f.csum = FRAME_CSUM_UNKNOWN
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


# -- the bare forwarder and frame injection for the ring tests ---------------------------------

cdef enum:
    PT_MAX_RULES = 64           # one rule per input port: as many ports as poll() takes


cdef struct fl_l2fwd_rule:
    uint32_t in_ifindex
    uint32_t out_ifindex
    uint8_t src[6]
    uint8_t dst[6]
    uint8_t set_src
    uint8_t set_dst
    uint8_t swap
    uint8_t used


cdef class PassThrough(Bare):
    """The bare forwarder (no engine): what arrives on `in_ifindex` leaves on `out_ifindex`
    with its MACs rewritten. add(in_port, out_port=None, src_mac=None, dst_mac=None):
    out_port None = back out of the same port with the MACs swapped. The yardstick of the
    ring code, and its test without the engine: poll(PassThrough().add(...), ports)."""
    cdef fl_l2fwd_rule rules[PT_MAX_RULES]
    cdef int n

    def __cinit__(self, *args, **kwargs):
        self.fn = l2fwd_batch
        self.ctx = <void *>self.rules

    def add(self, in_port, out_port=None, src_mac=None, dst_mac=None):
        cdef fl_l2fwd_rule *r
        if self.n >= PT_MAX_RULES:
            raise ValueError("too many rules")
        r = &self.rules[self.n]
        memset(r, 0, sizeof(fl_l2fwd_rule))
        r.in_ifindex = in_port if isinstance(in_port, int) else in_port.ifindex
        if out_port is None:
            r.out_ifindex = r.in_ifindex
            r.swap = 1
        else:
            r.out_ifindex = out_port if isinstance(out_port, int) else out_port.ifindex
        cdef bytes b
        if src_mac is not None:
            b = _mac_bytes(src_mac)
            memcpy(r.src, <const char *>b, 6)
            r.set_src = 1
        if dst_mac is not None:
            b = _mac_bytes(dst_mac)
            memcpy(r.dst, <const char *>b, 6)
            r.set_dst = 1
        r.used = 1
        self.n += 1
        return self


cdef void l2fwd_batch(void *ctx, uint32_t in_ifindex, fl_frame *frames, int n) noexcept nogil:
    cdef fl_l2fwd_rule *rules = <fl_l2fwd_rule *>ctx
    cdef fl_l2fwd_rule *r = NULL
    cdef int i
    cdef fl_frame *f
    cdef uint8_t tmp[6]
    for i in range(PT_MAX_RULES):
        if not rules[i].used:
            break
        if rules[i].in_ifindex == in_ifindex:
            r = &rules[i]
            break
    for i in range(n):
        f = &frames[i]
        f.out_adj = 0
        f.out_len = f.len
        f.xrec = 0              # a ring frame, never a reassembled datagram
        if r == NULL or f.len < 14:
            f.verdict = VERDICT_DROP
            continue
        if r.swap:
            memcpy(tmp, f.data, 6)
            memcpy(f.data, f.data + 6, 6)
            memcpy(f.data + 6, tmp, 6)
        if r.set_dst:
            memcpy(f.data, r.dst, 6)
        if r.set_src:
            memcpy(f.data + 6, r.src, 6)
        f.out_ifindex = r.out_ifindex
        f.verdict = VERDICT_TX


def transmit(port, frames, count=0):
    """Send `frames` (bytes-likes) out of `port`, `count` frames in total cycling through
    them (0 = each once), copied into the TX ring without the GIL and flushed every 64.
    Returns the number accepted by the ring (the rest found it full). For tests and
    traffic generators; the forwarding path is poll()."""
    cdef void *ring = port_ring(port)
    cdef int nf = len(frames), i
    cdef uint64_t total = count if count else nf
    cdef uint64_t k, before, full
    cdef uint8_t **ptrs
    cdef uint32_t *lens
    cdef const uint8_t[::1] view
    if nf == 0:
        return 0
    keep = [bytes(f) for f in frames]
    ptrs = <uint8_t **>malloc(nf * sizeof(uint8_t *))
    lens = <uint32_t *>malloc(nf * sizeof(uint32_t))
    if ptrs == NULL or lens == NULL:
        free(ptrs)
        free(lens)
        raise MemoryError()
    for i in range(nf):
        view = keep[i]
        ptrs[i] = <uint8_t *>&view[0]
        lens[i] = view.shape[0]
    before = ring_tx_full(ring)
    try:
        with nogil:
            for k in range(total):
                i = <int>(k % nf)
                ring_tx_copy(ring, ptrs[i], lens[i])
            ring_tx_flush(ring)
    finally:
        free(ptrs)
        free(lens)
    full = ring_tx_full(ring) - before
    return total - full
