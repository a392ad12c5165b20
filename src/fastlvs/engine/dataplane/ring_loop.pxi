# The ring loop: receive a batch (up to 64) from each port, hand the frames to the engine in
# place (GIL released; taken back only for the one scheduler call per batch with new flows),
# transmit the TX verdicts on the port of out_ifindex (by descriptor when both ports share a
# UMEM, else one copy), recycle the rest, then flush TX and refill the fill rings once per pass.
# poll() returns after a pass that found nothing, so the daemon can look at signals/requests.

cdef struct fl_l2fwd_rule:
    uint32_t in_ifindex
    uint32_t out_ifindex
    uint8_t src[6]
    uint8_t dst[6]
    uint8_t set_src
    uint8_t set_dst
    uint8_t swap
    uint8_t used


cdef struct fl_loop:
    fl_port **ports
    int nports
    fl_frame *frames
    uint64_t *cookies
    fl_engine *est               # NULL: pass-through
    PyObject *engine
    fl_l2fwd_rule *rules
    uint64_t no_port             # TX verdicts naming an interface that is not one of the ports


cdef class PassThrough:
    """The bare forwarder (no engine): what arrives on `in_ifindex` leaves on `out_ifindex`
    with its MACs rewritten. add(in_port, out_port=None, src_mac=None, dst_mac=None):
    out_port None = back out of the same port with the MACs swapped. The yardstick of the
    ring code, and its test without the engine."""
    cdef fl_l2fwd_rule rules[RING_MAX_PORTS]
    cdef int n

    def add(self, in_port, out_port=None, src_mac=None, dst_mac=None):
        cdef fl_l2fwd_rule *r
        if self.n >= RING_MAX_PORTS:
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


cdef inline void l2fwd_batch(fl_l2fwd_rule *rules, uint32_t in_ifindex, fl_frame *frames,
                             int n) noexcept nogil:
    cdef fl_l2fwd_rule *r = NULL
    cdef int i
    cdef fl_frame *f
    cdef uint8_t tmp[6]
    for i in range(RING_MAX_PORTS):
        if not rules[i].used:
            break
        if rules[i].in_ifindex == in_ifindex:
            r = &rules[i]
            break
    for i in range(n):
        f = &frames[i]
        f.out_adj = 0
        f.out_len = f.len
        f.xrec = 0
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
        l2fwd_batch(L.rules, src.ifindex, L.frames, n)
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
    that. engine: an Engine (its verdicts decide) or a PassThrough. A scheduler callback
    error is raised after the pass."""
    cdef fl_port *pp[RING_MAX_PORTS]
    cdef uint64_t cookies[MAX_BATCH]
    cdef fl_frame own[RING_BATCH]
    cdef fl_loop L
    cdef uint64_t total
    cdef uint64_t mf = max_frames
    cdef Engine eng
    cdef PassThrough pt
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
    elif isinstance(engine, PassThrough):
        pt = engine
        L.rules = pt.rules
        L.frames = own
    else:
        raise TypeError(f"engine must be an Engine or a PassThrough, not {type(engine).__name__}")
    with nogil:
        total = ring_run(&L, timeout_ms, mf, stay_ms)
    if L.est != NULL:
        eng._raise_pending()
    return total


def transmit(port, frames, count=0):
    """Send `frames` (bytes-likes) out of `port`, `count` frames in total cycling through
    them (0 = each once), copied into the TX ring without the GIL and flushed every 64.
    Returns the number accepted by the ring (the rest found it full). For tests and
    traffic generators; the forwarding path is poll()."""
    cdef Port pt = port
    cdef fl_port *p = pt.p
    cdef int nf = len(frames), i
    cdef uint64_t total = count if count else nf
    cdef uint64_t k, before, full
    cdef uint8_t **ptrs
    cdef uint32_t *lens
    cdef const uint8_t[::1] view
    if p.kind == 0:
        raise ValueError(f"{port!r} is closed")
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
    before = p.tx_ring_full
    try:
        with nogil:
            for k in range(total):
                i = <int>(k % nf)
                if p.kind == PORT_XDP:
                    xdp_complete(p)
                    xdp_tx_copy(p, ptrs[i], lens[i])
                    if p.tx_reserved >= RING_BATCH:
                        xdp_tx_flush(p)
                else:
                    pkt_tx_copy(p, ptrs[i], lens[i])
            if p.kind == PORT_XDP:
                xdp_tx_flush(p)
            else:
                pkt_tx_flush(p)
    finally:
        free(ptrs)
        free(lens)
    full = p.tx_ring_full - before
    return total - full
