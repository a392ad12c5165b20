# The ring loop: receive a batch (up to 64) from each port, hand the frames to the engine in
# place (GIL released; taken back only for the one scheduler call per batch with new flows),
# transmit the TX verdicts on the port of out_ifindex (by descriptor when both ports share a
# UMEM, else one copy), recycle the rest, then flush TX and refill the fill rings once per pass.
# poll() returns after a pass that found nothing, so the daemon can look at signals/requests.

cdef struct fl_loop:
    fl_port **ports
    int nports
    fl_frame *frames
    uint64_t *cookies
    fl_engine *est               # NULL: a Bare forwarder's fn(ctx, ...) decides
    PyObject *engine
    fl_bare_fn bare
    void *bare_ctx
    uint64_t no_port             # TX verdicts naming an interface that is not one of the ports


cdef class Bare:
    """A forwarder the ring loop runs in place of an Engine, through its C function `fn`
    (declared in _core.pxd). The only ones are test tools (_testing.PassThrough, the bare
    yardstick of the ring code): the product always polls with an Engine."""

    def __cinit__(self, *args, **kwargs):
        if type(self) is Bare:
            raise TypeError("Bare is a base class; use a forwarder built on it")


cdef inline fl_port *ring_port_of(fl_loop *L, uint32_t ifindex, fl_port *src) noexcept nogil:
    cdef int i
    if ifindex == 0 or ifindex == src.ifindex:
        return src
    for i in range(L.nports):
        if L.ports[i].ifindex == ifindex:
            return L.ports[i]
    return NULL


cdef void ring_tx_xrec(fl_engine *e, fl_port *dst, fl_frame *f) noexcept nogil:
    # a reassembled datagram lives in engine memory and may leave as several fragments
    cdef fl_xrec *rec = &e.frag.xrec[f.xrec - 1]
    cdef fl_xseg *sg
    cdef uint32_t k
    for k in range(rec.nseg):
        sg = &e.frag.xseg[rec.seg0 + k]
        if dst.kind == PORT_XDP:
            xdp_tx_copy(dst, sg.data, sg.len)
        else:
            pkt_tx_copy(dst, sg.data, sg.len)


cdef inline void ring_dispatch(fl_loop *L, fl_port *src, int n) noexcept nogil:
    # Transmit the TX verdicts, give every other frame back.
    cdef int j
    cdef fl_frame *f
    cdef fl_port *dst
    cdef uint64_t addr
    for j in range(n):
        f = &L.frames[j]
        if f.verdict == VERDICT_TX and f.out_len != 0:
            dst = ring_port_of(L, f.out_ifindex, src)
            if dst == NULL:
                L.no_port += 1
            elif fl_unlikely(f.xrec != 0):
                ring_tx_xrec(L.est, dst, f)
            elif src.kind == PORT_XDP and dst.kind == PORT_XDP and dst.umem == src.umem:
                # same UMEM: the TX descriptor points at the received frame, no copy
                addr = <uint64_t>(f.data - src.umem.area) + <int64_t>f.out_adj
                if xdp_tx_desc(dst, addr, f.out_len):
                    continue
            elif dst.kind == PORT_XDP:
                xdp_tx_copy(dst, f.data + f.out_adj, f.out_len)
            else:
                pkt_tx_copy(dst, f.data + f.out_adj, f.out_len)
        elif f.verdict == VERDICT_PASS and src.kind == PORT_XDP:
            # the program only steers service traffic here, so this is rare: the kernel
            # never saw the frame and does not get it now
            src.passed += 1
        if src.kind == PORT_XDP:
            xdp_free_push(src.umem, L.cookies[j])
    if src.kind == PORT_PACKET:
        pkt_rx_done(src)


cdef inline void ring_process(fl_loop *L, fl_port *src, int n) noexcept nogil:
    cdef int parked
    if L.est == NULL:
        L.bare(L.bare_ctx, src.ifindex, L.frames, n)
        return
    parked = engine_rx_batch(L.est, L.frames, n)
    if parked:
        with gil:
            ring_schedule(<object>L.engine, L.frames)
        engine_bind_parked(L.est, L.frames)


cdef int ring_schedule(Engine eng, fl_frame *frames) except -1:
    # exceptions never unwind through the ring loop: keep the first, raise after poll()
    try:
        eng._schedule_parked(frames)
    except BaseException as exc:
        if eng.error is None:
            eng.error = exc
    return 0


cdef int ring_pass(fl_loop *L, uint64_t *frames_left) noexcept nogil:
    # One round over the ports; returns the frames received.
    cdef int i, k, got = 0, want
    cdef fl_port *p
    cdef uint64_t now = ring_now_ns()
    for i in range(L.nports):
        p = L.ports[i]
        want = RING_BATCH if frames_left[0] >= RING_BATCH else <int>frames_left[0]
        if want == 0:
            break
        if p.kind == PORT_XDP:
            xdp_complete(p)
            xdp_refill(p)
            if p.busy_poll:
                xdp_wake_rx(p)          # busy polling: our syscall runs the NAPI loop
            k = xdp_rx(p, L.frames, L.cookies, want, now)
            if k == 0 and not p.busy_poll:
                xdp_wake_rx(p)          # kicks only if the kernel flagged the fill ring
        elif p.kind == PORT_PACKET:
            k = pkt_rx(p, L.frames, L.cookies, want, now)
            if k == 0:
                pkt_rx_done(p)
        else:
            continue
        if k == 0:
            continue
        got += k
        frames_left[0] -= k
        ring_process(L, p, k)
        ring_dispatch(L, p, k)
    for i in range(L.nports):
        p = L.ports[i]
        if p.kind == PORT_XDP:
            xdp_tx_flush(p)
            xdp_refill(p)
        elif p.kind == PORT_PACKET:
            pkt_tx_flush(p)
    return got


cdef uint64_t ring_run(fl_loop *L, int timeout_ms, uint64_t max_frames,
                       int stay_ms) noexcept nogil:
    cdef uint64_t total = 0, left = max_frames
    cdef int got, i, wait_ms
    cdef bint waited = False
    cdef pk.pollfd pfds[RING_MAX_PORTS]
    cdef fl_port *p
    cdef uint64_t now, deadline = ring_now_ns() + <uint64_t>stay_ms * 1000000
    for i in range(L.nports):
        p = L.ports[i]
        pfds[i].fd = p.xsk_fd if p.kind == PORT_XDP else p.rx_fd
        pfds[i].events = pk.POLLIN
    while left > 0:
        got = ring_pass(L, &left)
        total += got
        if got:
            continue
        if stay_ms > 0:
            # Stay in C until the deadline: when the director shares its core with the
            # NAPI that fills its rings, every drain ends in an empty pass, and going back
            # to Python each time cost more than the engine itself.
            now = ring_now_ns()
            if now >= deadline:
                break
            # rounded up: a 0 ms poll() in the last millisecond would spin, and a spinning
            # director starves the NAPI thread that fills its rings
            wait_ms = <int>((deadline - now + 999999) // 1000000)
        elif total or waited or timeout_ms == 0:
            break
        else:
            wait_ms = timeout_ms
        # nothing waiting: sleep in poll() (which also kicks a flagged fill ring)
        for i in range(L.nports):
            pfds[i].revents = 0
        pk.poll(pfds, L.nports, wait_ms)
        waited = True
    return total


def poll(engine, ports, int timeout_ms=0, max_frames=1 << 20, int stay_ms=0):
    """Receive, process and transmit what is waiting on `ports` (XdpPort/PacketPort), then
    return the number of frames received. When nothing is waiting, first sleep up to
    timeout_ms for frames (0 = do not wait). Stops after max_frames. With stay_ms > 0 it
    returns only once stay_ms have passed (or max_frames came), sleeping in poll() whenever
    the rings are empty: the daemon's loop, which has bookkeeping to do between calls, uses
    that. engine: an Engine (its verdicts decide) or a Bare forwarder (test tools). A
    scheduler callback error is raised after the pass."""
    cdef fl_port *pp[RING_MAX_PORTS]
    cdef uint64_t cookies[MAX_BATCH]
    cdef fl_frame own[RING_BATCH]
    cdef fl_loop L
    cdef uint64_t total
    cdef uint64_t mf = max_frames
    cdef Engine eng
    cdef Bare bare
    cdef int i
    ports = list(ports)
    if not ports:
        return 0
    if len(ports) > RING_MAX_PORTS:
        raise ValueError(f"at most {RING_MAX_PORTS} ports")
    for i in range(len(ports)):
        port = ports[i]
        if not isinstance(port, Port):
            raise TypeError(f"not a port: {port!r}")
        if (<Port>port).p.kind == 0:
            raise ValueError(f"{port!r} is closed")
        pp[i] = (<Port>port).p
    memset(&L, 0, sizeof(fl_loop))
    L.ports = pp
    L.nports = len(ports)
    L.cookies = cookies
    if isinstance(engine, Engine):
        eng = engine
        L.est = &eng.st
        L.frames = own
        L.engine = <PyObject *>engine
    elif isinstance(engine, Bare) and (<Bare>engine).fn != NULL:
        bare = engine
        L.bare = bare.fn
        L.bare_ctx = bare.ctx
        L.frames = own
    else:
        raise TypeError(f"engine must be an Engine or a Bare forwarder, not {type(engine).__name__}")
    with nogil:
        total = ring_run(&L, timeout_ms, mf, stay_ms)
    if L.est != NULL:
        eng._raise_pending()
    return total


# The ring's send operations for code outside this module (declared in _core.pxd; the one
# user is _testing.transmit, the traffic injector of the ring tests). `ring` is an open
# Port's fl_port, as port_ring() returns it.

cdef void *port_ring(object port) except NULL:
    cdef Port pt = port
    if pt.p.kind == 0:
        raise ValueError(f"{port!r} is closed")
    return pt.p


cdef void ring_tx_copy(void *ring, const uint8_t *data, uint32_t len) noexcept nogil:
    # one frame copied into the TX ring (a full ring counts it in tx_ring_full); AF_XDP
    # reaps completions first and submits every RING_BATCH descriptors
    cdef fl_port *p = <fl_port *>ring
    if p.kind == PORT_XDP:
        xdp_complete(p)
        xdp_tx_copy(p, data, len)
        if p.tx_reserved >= RING_BATCH:
            xdp_tx_flush(p)
    else:
        pkt_tx_copy(p, data, len)


cdef void ring_tx_flush(void *ring) noexcept nogil:
    cdef fl_port *p = <fl_port *>ring
    if p.kind == PORT_XDP:
        xdp_tx_flush(p)
    else:
        pkt_tx_flush(p)


cdef uint64_t ring_tx_full(void *ring) noexcept nogil:
    return (<fl_port *>ring).tx_ring_full
