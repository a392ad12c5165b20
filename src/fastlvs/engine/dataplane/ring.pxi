# The I/O ports shared by both backends: the fl_port/fl_umem structs the ring loop runs on
# (plain C, no Python object), the clock, network-namespace capture for clean teardown, and
# the Port base class XdpPort (ring_xdp.pxi) and PacketPort (ring_packet.pxi) extend. The loop
# itself is in ring_loop.pxi.

cdef enum:
    PORT_XDP = 1
    PORT_PACKET = 2
    RING_BATCH = 64             # frames taken from one port per engine batch


cdef struct fl_umem:
    # One UMEM shared by every XdpPort given the same XdpUmem: a received frame can be
    # transmitted on any of them by descriptor, without a copy.
    uint8_t *area
    uint64_t size
    uint64_t *free              # stack of free chunk addresses
    uint32_t nfree
    uint32_t nframes
    uint32_t frame_size
    uint32_t frame_mask         # ~(frame_size - 1) as 32 bits: chunk start of an address
    xsk_umem *umem              # created with the first socket's fill/completion rings


cdef struct fl_port:
    uint8_t kind
    uint8_t busy_poll
    uint8_t zerocopy
    uint32_t ifindex
    # counters (read by Port.stats())
    uint64_t rx_frames
    uint64_t tx_frames
    uint64_t tx_ring_full       # frames dropped because the TX ring had no room
    uint64_t tx_oversize        # frames dropped because they do not fit a TX slot / chunk
    uint64_t tx_copies          # frames copied in from another port's memory
    uint64_t passed             # engine verdict PASS on a port the kernel never saw it on
    uint64_t wakeups            # syscalls made to kick the kernel
    uint64_t fill_empty         # refills that found no free frame
    # AF_XDP
    fl_umem *umem
    xsk_socket *xsk
    int xsk_fd
    uint32_t tx_reserved        # written descriptors not yet submitted
    xsk_ring_cons rx
    xsk_ring_prod tx
    xsk_ring_prod fill
    xsk_ring_cons comp
    # AF_PACKET
    int rx_fd
    int tx_fd
    uint8_t *rx_ring
    size_t rx_ring_len
    uint32_t rx_block_size
    uint32_t rx_block_nr
    uint32_t rx_block           # current block
    uint32_t rx_left            # packets of the current block not yet handed out
    uint8_t *rx_next            # next tpacket3_hdr in the current block
    uint8_t rx_block_open       # 1 while the current block belongs to us
    uint8_t *tx_ring
    size_t tx_ring_len
    uint32_t tx_frame_size
    uint32_t tx_frame_nr
    uint32_t tx_head
    uint32_t tx_queued          # frames marked SEND_REQUEST since the last kick


import atexit as _atexit
import weakref as _weakref


cdef inline uint64_t ring_now_ns() noexcept nogil:
    # CLOCK_MONOTONIC, as time.monotonic_ns(): the engine's timeouts run on this clock
    cdef pk.timespec ts
    pk.clock_gettime(pk.CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


def _netns_fd():
    """An fd on this thread's network namespace (kept so close() can detach from it)."""
    return _os.open("/proc/thread-self/ns/net", _os.O_RDONLY | _os.O_CLOEXEC)


class _InNetns:
    """Context manager: run the block in the namespace of `fd` (this thread only)."""
    def __init__(self, fd):
        self.fd = fd
        self.back = -1

    def __enter__(self):
        if self.fd < 0:
            return self
        self.back = _netns_fd()
        if _os.fstat(self.back).st_ino == _os.fstat(self.fd).st_ino:
            _os.close(self.back)
            self.back = -1
            return self
        if pk.setns(self.fd, pk.CLONE_NEWNET) != 0:
            _os.close(self.back)
            self.back = -1
            raise OSError(pk.errno, "setns: " + _os.strerror(pk.errno))
        return self

    def __exit__(self, *exc):
        if self.back >= 0:
            pk.setns(self.back, pk.CLONE_NEWNET)
            _os.close(self.back)
            self.back = -1
        return False


_OPEN_PORTS = _weakref.WeakSet()


def _close_open_ports():
    # at exit (also after SIGTERM handled by Python): no XDP program, nft table or socket
    # may outlive the process; an attached XDP program would, as it is not tied to our fds
    for port in list(_OPEN_PORTS):
        try:
            port.close()
        except Exception:
            pass


_atexit.register(_close_open_ports)




def _if_mtu(ifname):
    """The MTU of `ifname` in this thread's network namespace (SIOCGIFMTU)."""
    import fcntl
    import socket as _socket
    import struct
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        res = fcntl.ioctl(s.fileno(), 0x8921, struct.pack("16si20x", ifname.encode()[:15], 0))
    finally:
        s.close()
    return struct.unpack("16si20x", res)[1]


def _ifindex(ifname):
    cdef unsigned int i = pk.if_nametoindex(ifname.encode())
    if i == 0:
        raise OSError(f"no interface {ifname!r} in this network namespace")
    return i


cdef class Port:
    """An interface the ring loop receives from and transmits on (base of XdpPort and
    PacketPort). .ifname, .ifindex, .backend ("xdp"|"packet"), .mode; close() is idempotent."""
    cdef fl_port *p
    cdef readonly str ifname
    cdef readonly int ifindex
    cdef readonly str backend
    cdef readonly str mode
    cdef int nsfd
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self.p = <fl_port *>calloc(1, sizeof(fl_port))
        if self.p == NULL:
            raise MemoryError()
        self.p.xsk_fd = -1
        self.p.rx_fd = -1
        self.p.tx_fd = -1
        self.nsfd = -1
        self.mode = ""
        self.backend = ""

    def __dealloc__(self):
        free(self.p)
        self.p = NULL
        if self.nsfd >= 0:
            _os.close(self.nsfd)
            self.nsfd = -1

    @property
    def closed(self):
        return self.p.kind == 0

    def stats(self):
        """Counters of this port: rx/tx frames, tx_ring_full drops, tx_copies, wakeups..."""
        return {"rx": self.p.rx_frames, "tx": self.p.tx_frames,
                "tx_ring_full": self.p.tx_ring_full, "tx_oversize": self.p.tx_oversize,
                "tx_copies": self.p.tx_copies,
                "passed": self.p.passed, "wakeups": self.p.wakeups,
                "fill_empty": self.p.fill_empty}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        pass

    def __repr__(self):
        state = "closed" if self.p.kind == 0 else self.mode
        return f"<{type(self).__name__} {self.ifname} ifindex={self.ifindex} {state}>"
