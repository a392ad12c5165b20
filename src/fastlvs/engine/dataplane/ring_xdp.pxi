# The AF_XDP backend: one shared UMEM (XdpUmem), one XSK per (interface, queue) (XdpPort), and
# our XDP steering program (bpf/steer.bpf.o) loaded through libxdp, which redirects only
# virtual-service traffic (and NAT replies not addressed to the director) to the sockets. Hot ring operations are small
# inline functions on fl_port in libxdp's reserve/submit, peek/release style; setup and
# teardown live in the classes below.

cdef enum:
    XDP_DEFAULT_RING = 4096
    XDP_BUSY_POLL_USECS = 20
    SO_BUSY_POLL_ = 46
    SO_PREFER_BUSY_POLL_ = 69
    SO_BUSY_POLL_BUDGET_ = 70
    XDP_MAX_TX_SKB_BUDGET_ = 9   # <linux/if_xdp.h> since 6.13; older kernels refuse it
    XDP_TX_SKB_BUDGET = 256
    FL_FAST_KEYS = 8             # == bpf/steer.bpf.c
    FL_ANY_PORT = 0x10           # == bpf/steer.bpf.c: in a key's family, a port-0 key


cdef struct fl_steer_key:
    # == struct fl_steer_key in bpf/steer.bpf.c: IPv4 in addr[0], port in network order
    uint8_t family
    uint8_t proto
    uint16_t port
    uint32_t addr[4]


cdef struct fl_fast:
    # == struct fl_fast in bpf/steer.bpf.c: the key sets compared in place while small
    uint32_t nsvc
    uint32_t nrs
    fl_steer_key svc[FL_FAST_KEYS]
    fl_steer_key rs[FL_FAST_KEYS]
    uint32_t nlocal
    fl_steer_key local[FL_FAST_KEYS]
    uint32_t any            # 1: a port-0 service key is set, 2: a port-0 real server key


XDP_BUILT = bool(FL_XDP_BUILT)
XDP_MISSING = ("AF_XDP backend not built: libxdp-dev/libbpf-dev/clang were missing at build "
               "time (install them, e.g. `make deps`, and rebuild)")


def _steer_obj_path():
    path = _os.environ.get("FASTLVS_STEER_OBJ")
    if path:
        return path
    return _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "bpf", "steer.bpf.o")


# -- hot ring operations -------------------------------------------------------------------------

cdef inline void xdp_free_push(fl_umem *u, uint64_t addr) noexcept nogil:
    # addr may point anywhere inside its chunk: keep the chunk start
    u.free[u.nfree] = addr & <uint64_t>u.frame_mask
    u.nfree += 1


cdef inline void xdp_complete(fl_port *p) noexcept nogil:
    # Completion ring -> free stack: these frames left on the wire.
    cdef uint32_t idx = 0, i
    cdef uint32_t n = xsk_ring_cons__peek(&p.comp, p.comp.size, &idx)
    if n == 0:
        return
    for i in range(n):
        xdp_free_push(p.umem, xsk_ring_cons__comp_addr(&p.comp, idx + i)[0])
    # release after reading: the kernel may reuse the slots once the consumer moves
    xsk_ring_cons__release(&p.comp, n)


cdef inline void xdp_refill(fl_port *p) noexcept nogil:
    # Keep the fill ring as full as the free stack allows.
    cdef fl_umem *u = p.umem
    cdef uint32_t idx = 0, i
    cdef uint32_t n = xsk_prod_nb_free(&p.fill, p.fill.size)
    if n > u.nfree:
        n = u.nfree
    if n == 0:
        if u.nfree == 0:
            p.fill_empty += 1
        return
    if xsk_ring_prod__reserve(&p.fill, n, &idx) != n:
        return
    for i in range(n):
        u.nfree -= 1
        xsk_ring_prod__fill_addr(&p.fill, idx + i)[0] = u.free[u.nfree]
    # submit publishes the addresses with a release store (libxdp's barrier)
    xsk_ring_prod__submit(&p.fill, n)


cdef inline int xdp_rx(fl_port *p, fl_frame *frames, uint64_t *cookies, int maxn,
                       uint64_t now) noexcept nogil:
    # Peek up to maxn descriptors; the frames stay ours (cookie = address) until
    # transmitted or pushed back on the free stack, so the RX slots are released at once.
    cdef uint32_t idx = 0, i
    cdef const xdp_desc *d
    cdef fl_frame *f
    cdef uint32_t n = xsk_ring_cons__peek(&p.rx, maxn, &idx)
    if n == 0:
        return 0
    for i in range(n):
        d = xsk_ring_cons__rx_desc(&p.rx, idx + i)
        f = &frames[i]
        f.data = p.umem.area + d.addr
        f.len = d.len
        f.headroom = <uint32_t>(d.addr & ~(<uint64_t>p.umem.frame_mask))
        f.ts_ns = now
        f.csum = FRAME_CSUM_UNKNOWN     # copy mode carries no checksum metadata: detect
        cookies[i] = d.addr
    xsk_ring_cons__release(&p.rx, n)
    p.rx_frames += n
    return n


cdef inline void xdp_kick_tx(fl_port *p) noexcept nogil:
    # need_wakeup: only a flagged TX ring needs the syscall (copy mode always flags it)
    if xsk_ring_prod__needs_wakeup(&p.tx):
        pk.sendto(p.xsk_fd, NULL, 0, pk.MSG_DONTWAIT, NULL, 0)
        p.wakeups += 1


cdef inline void xdp_tx_flush(fl_port *p) noexcept nogil:
    cdef int tries = 0
    if p.tx_reserved:
        xsk_ring_prod__submit(&p.tx, p.tx_reserved)
        p.tx_frames += p.tx_reserved
        p.tx_reserved = 0
    # copy mode sends at most a budget (32) per syscall: kick until the kernel took all
    while tries < 8 and xsk_prod_nb_free(&p.tx, p.tx.size) < p.tx.size:
        if not xsk_ring_prod__needs_wakeup(&p.tx):
            break
        xdp_kick_tx(p)
        tries += 1
    xdp_complete(p)


cdef inline bint xdp_tx_desc(fl_port *p, uint64_t addr, uint32_t length) noexcept nogil:
    cdef uint32_t idx = 0
    cdef xdp_desc *d
    if xsk_ring_prod__reserve(&p.tx, 1, &idx) != 1:
        # full: hand what we have to the kernel, take back completions, try once more
        xdp_tx_flush(p)
        if xsk_ring_prod__reserve(&p.tx, 1, &idx) != 1:
            p.tx_ring_full += 1
            return False
    d = xsk_ring_prod__tx_desc(&p.tx, idx)
    d.addr = addr
    d.len = length
    d.options = 0
    p.tx_reserved += 1
    return True


cdef inline void xdp_tx_copy(fl_port *p, const uint8_t *data, uint32_t length) noexcept nogil:
    # A frame from another port's memory: copy it into one of our free chunks.
    cdef fl_umem *u = p.umem
    cdef uint64_t addr
    if u.nfree == 0:
        xdp_complete(p)
        if u.nfree == 0:
            p.tx_ring_full += 1
            return
    if length > u.frame_size:
        p.tx_oversize += 1
        return
    u.nfree -= 1
    addr = u.free[u.nfree]
    memcpy(u.area + addr, data, length)
    p.tx_copies += 1
    if not xdp_tx_desc(p, addr, length):
        xdp_free_push(u, addr)


cdef inline void xdp_wake_rx(fl_port *p) noexcept nogil:
    # Nothing received: with busy polling a non-blocking recvfrom runs the NAPI loop; without
    # it the kernel only needs a kick when it flagged the fill ring (the loop's poll() does it).
    if p.busy_poll or xsk_ring_prod__needs_wakeup(&p.fill):
        pk.recvfrom(p.xsk_fd, NULL, 0, pk.MSG_DONTWAIT, NULL, NULL)
        p.wakeups += 1


# -- setup and teardown --------------------------------------------------------------------------

cdef class XdpUmem:
    """One UMEM: `frames` chunks of `frame_size` (2048 or 4096) bytes. Give the same XdpUmem
    to several XdpPorts to transmit frames received on one of them on another without a
    copy. Freed when closed (or collected) after all its ports are closed."""
    cdef fl_umem *u
    cdef readonly int frames
    cdef readonly int frame_size
    cdef readonly int nports

    def __cinit__(self, int frames=16384, int frame_size=4096):
        cdef uint32_t i
        if frame_size not in (2048, 4096):
            raise ValueError(f"frame_size must be 2048 or 4096, got {frame_size}")
        if frames < 64 or frames > (1 << 22):
            raise ValueError(f"frames must be 64..{1 << 22}, got {frames}")
        self.u = <fl_umem *>calloc(1, sizeof(fl_umem))
        if self.u == NULL:
            raise MemoryError()
        self.frames = frames
        self.frame_size = frame_size
        self.u.size = <uint64_t>frames * frame_size
        self.u.area = <uint8_t *>pk.mmap(NULL, self.u.size, pk.PROT_READ | pk.PROT_WRITE,
                                         pk.MAP_PRIVATE | pk.MAP_ANONYMOUS | pk.MAP_POPULATE,
                                         -1, 0)
        if <void *>self.u.area == pk.MAP_FAILED:
            self.u.area = NULL
            raise MemoryError(f"cannot map a UMEM of {self.u.size} bytes")
        self.u.free = <uint64_t *>malloc(frames * sizeof(uint64_t))
        if self.u.free == NULL:
            raise MemoryError()
        self.u.nframes = frames
        self.u.frame_size = frame_size
        self.u.frame_mask = ~(<uint32_t>frame_size - 1)
        # lowest addresses on top of the stack
        for i in range(<uint32_t>frames):
            self.u.free[i] = <uint64_t>(frames - 1 - i) * frame_size
        self.u.nfree = frames

    def close(self):
        """Free the UMEM; raises RuntimeError while ports still use it."""
        if self.u == NULL:
            return
        if self.nports:
            raise RuntimeError(f"UMEM still used by {self.nports} port(s)")
        if self.u.umem != NULL:
            xsk_umem__delete(self.u.umem)
            self.u.umem = NULL
        if self.u.area != NULL:
            pk.munmap(self.u.area, self.u.size)
        free(self.u.free)
        free(self.u)
        self.u = NULL

    def __dealloc__(self):
        if self.u != NULL and self.nports == 0:
            self.close()

    @property
    def free_frames(self):
        return self.u.nfree if self.u != NULL else 0


cdef class _SteerProg:
    # Our XDP program attached to one interface, shared by the XdpPorts on its queues.
    cdef xdp_program *prog
    cdef int ifindex
    cdef xdp_attach_mode amode
    cdef int xsks_fd, svc_fd, rs_fd, stats_fd, fast_fd, sel_fd, local_fd
    cdef int refs
    cdef object key
    cdef readonly str mode
    cdef object svc_keys, rs_keys, local_keys     # the keys in the hash maps, as bytes
    cdef object addr_refs             # (rserver, port-0 key) -> keys of that address
    cdef uint32_t fast_active         # the fl_fast copy the program reads

    def __cinit__(self):
        self.prog = NULL
        self.xsks_fd = self.svc_fd = self.rs_fd = self.stats_fd = -1
        self.fast_fd = self.sel_fd = self.local_fd = -1
        self.svc_keys = set()
        self.rs_keys = set()
        self.local_keys = set()
        self.addr_refs = {}
        self.fast_active = 0

    cdef int publish(self) except -1:
        # Write the unused fl_fast copy from the key sets, then point the program at it.
        cdef fl_fast f
        cdef uint32_t zero = 0, slot = 1 - self.fast_active
        cdef bytes b
        cdef int i
        memset(&f, 0, sizeof(fl_fast))
        f.nsvc = len(self.svc_keys) if len(self.svc_keys) <= FL_FAST_KEYS else 0xFFFFFFFF
        f.nrs = len(self.rs_keys) if len(self.rs_keys) <= FL_FAST_KEYS else 0xFFFFFFFF
        f.nlocal = len(self.local_keys) if len(self.local_keys) <= FL_FAST_KEYS else 0xFFFFFFFF
        f.any = ((1 if any(b[0] & FL_ANY_PORT for b in self.svc_keys) else 0)
                 | (2 if any(b[0] & FL_ANY_PORT for b in self.rs_keys) else 0))
        if f.nsvc != 0xFFFFFFFF:
            for i, b in enumerate(sorted(self.svc_keys)):
                memcpy(&f.svc[i], <const char *>b, sizeof(fl_steer_key))
        if f.nrs != 0xFFFFFFFF:
            for i, b in enumerate(sorted(self.rs_keys)):
                memcpy(&f.rs[i], <const char *>b, sizeof(fl_steer_key))
        if f.nlocal != 0xFFFFFFFF:
            for i, b in enumerate(sorted(self.local_keys)):
                memcpy(&f.local[i], <const char *>b, sizeof(fl_steer_key))
        r = bpf_map_update_elem(self.fast_fd, &slot, &f, 0)
        if r == 0:
            r = bpf_map_update_elem(self.sel_fd, &zero, &slot, 0)
        if r:
            raise OSError(-r, f"fl_fast update: {_os.strerror(-r)}")
        self.fast_active = slot
        return 0

    cdef int set_addr_key(self, bint rserver, fl_steer_key *k, bint add) except -1:
        # (proto, address, port 0) in the hash map while some key of that address is there:
        # later fragments of its datagrams carry no ports (the fast copy never holds these).
        # Called once per key really added or removed, so the count is of distinct keys.
        cdef fl_steer_key a
        cdef uint32_t one = 1
        cdef int fd = self.rs_fd if rserver else self.svc_fd
        memcpy(&a, k, sizeof(fl_steer_key))
        a.port = 0
        a.family &= ~FL_ANY_PORT
        b = (rserver, (<char *>&a)[:sizeof(fl_steer_key)])
        n = self.addr_refs.get(b, 0)
        if add:
            if n == 0:
                r = bpf_map_update_elem(fd, &a, &one, 0)
                if r:
                    raise OSError(-r, f"{'fl_rservers' if rserver else 'fl_services'} "
                                      f"update: {_os.strerror(-r)}")
            self.addr_refs[b] = n + 1
        elif n <= 1:
            self.addr_refs.pop(b, None)
            bpf_map_delete_elem(fd, &a)
        else:
            self.addr_refs[b] = n - 1
        return 0

    cdef int set_key(self, int which, fl_steer_key *k, bint add) except -1:
        # The hash map first, then the in-place copy: both always hold the same keys.
        # which: 0 services, 1 NAT real servers, 2 local addresses.
        cdef uint32_t one = 1
        cdef int fd = (self.svc_fd, self.rs_fd, self.local_fd)[which]
        keys = (self.svc_keys, self.rs_keys, self.local_keys)[which]
        b = (<char *>k)[:sizeof(fl_steer_key)]
        if add:
            r = bpf_map_update_elem(fd, k, &one, 0)
            if r:
                raise OSError(-r, f"{('fl_services', 'fl_rservers', 'fl_locals')[which]} "
                                  f"update: {_os.strerror(-r)}")
            if b in keys:
                return 0
            keys.add(b)
            if which < 2:
                self.set_addr_key(which == 1, k, True)
        else:
            bpf_map_delete_elem(fd, k)
            if b not in keys:
                return 0
            keys.discard(b)
            if which < 2:
                self.set_addr_key(which == 1, k, False)
        self.publish()
        return 0

    cdef int attach(self, int ifindex, str ifname, str mode, str path, int offload_fd=-1,
                    unsigned offload_max=0) except -1:
        cdef long err
        cdef int r = 0
        cdef bytes bpath = path.encode()
        cdef xdp_attach_mode m
        if not _os.path.exists(path):
            raise RuntimeError(f"XDP steering program {path} not found (clang was missing at "
                               "build time?); rebuild with clang installed")
        fl_xdp_quiet()
        tries = {"auto": ("native", "skb"), "native": ("native",), "skb": ("skb",)}[mode]
        errors = []
        for want in tries:
            self.prog = xdp_program__open_file(bpath, b"xdp", NULL)
            err = libxdp_get_error(self.prog)
            if err:
                self.prog = NULL
                raise OSError(-err, f"cannot open {path}: {_os.strerror(-err)} "
                                    f"({fl_xdp_last().decode(errors='replace').strip()})")
            m = XDP_MODE_NATIVE if want == "native" else XDP_MODE_SKB
            if offload_fd >= 0:
                # the engine's connection map (offload.pxi), shared by every interface
                r = fl_off_reuse(xdp_program__bpf_obj(self.prog), offload_fd, offload_max)
                if r:
                    xdp_program__close(self.prog)
                    self.prog = NULL
                    raise OSError(-r, f"cannot give the XDP program the offload map: "
                                      f"{_os.strerror(-r)}")
            # libxdp tries its multi-program dispatcher first; here it fails (EPERM or no
            # bpffs) and libxdp falls back to attaching our program alone: that is normal.
            r = xdp_program__attach(self.prog, ifindex, m, 0)
            if r == 0:
                self.amode = m
                self.mode = want
                break
            errors.append(f"{want}: {_os.strerror(-r)}")
            xdp_program__close(self.prog)
            self.prog = NULL
        if self.prog == NULL:
            raise OSError(-r, f"cannot attach the XDP program to {ifname}: "
                              + "; ".join(errors))
        self.ifindex = ifindex
        obj = xdp_program__bpf_obj(self.prog)
        self.xsks_fd = bpf_object__find_map_fd_by_name(obj, b"fl_xsks")
        self.svc_fd = bpf_object__find_map_fd_by_name(obj, b"fl_services")
        self.rs_fd = bpf_object__find_map_fd_by_name(obj, b"fl_rservers")
        self.stats_fd = bpf_object__find_map_fd_by_name(obj, b"fl_stats")
        self.fast_fd = bpf_object__find_map_fd_by_name(obj, b"fl_fast")
        self.sel_fd = bpf_object__find_map_fd_by_name(obj, b"fl_fast_sel")
        self.local_fd = bpf_object__find_map_fd_by_name(obj, b"fl_locals")
        if min(self.xsks_fd, self.svc_fd, self.rs_fd, self.stats_fd, self.fast_fd, self.sel_fd,
               self.local_fd) < 0:
            self.detach()
            raise RuntimeError(f"{path} lacks the fl_xsks/fl_services/fl_rservers/fl_stats/"
                               "fl_fast/fl_fast_sel/fl_locals maps")
        return 0

    cdef void detach(self):
        if self.prog != NULL:
            xdp_program__detach(self.prog, self.ifindex, self.amode, 0)
            xdp_program__close(self.prog)   # closes the map fds with the object
            self.prog = NULL

    def __dealloc__(self):
        self.detach()


_STEER_PROGS = {}   # (netns inode, ifindex) -> _SteerProg


cdef int _steer_key(fl_steer_key *k, proto, addr, int port) except -1:
    a = _ipaddress.ip_address(addr)
    memset(k, 0, sizeof(fl_steer_key))
    k.family = a.version
    k.proto = _proto_num(proto) if proto else 0        # 0: a local address (fl_locals)
    if port < 0 or port > 65535:
        raise ValueError(f"port out of range: {port}")
    k.port = pk.htons(port)
    if port == 0 and k.proto != 0:
        # a port-0 service or real server: a key of its own, looked for after the exact one
        k.family |= FL_ANY_PORT
    packed = a.packed
    memcpy(k.addr, <const char *>packed, len(packed))
    return 0


cdef class XdpPort(Port):
    """XdpPort(ifname, queue=0, mode="auto"|"native"|"skb", ring_size=4096, busy_poll=False,
    umem=None, frame_size=4096): an AF_XDP socket on one queue of `ifname` plus our steering
    program on the interface (shared by the ports of its queues; attached native, or SKB when
    the driver has no native XDP and mode is "auto"). umem=None makes a private XdpUmem of
    4 * ring_size frames; pass one XdpUmem to several ports for copy-free forwarding between
    them. Traffic reaches the socket only for keys added with add_service()/add_rserver().
    close() detaches the program (when its last port closes), deletes the socket and leaves
    nothing attached or pinned."""
    cdef readonly int queue
    cdef readonly int ring_size
    cdef readonly XdpUmem umem
    cdef _SteerProg prog
    cdef readonly dict tuning

    def __init__(self, ifname, int queue=0, mode="auto", int ring_size=XDP_DEFAULT_RING,
                 busy_poll=False, XdpUmem umem=None, int frame_size=4096, prog_path=None,
                 offload_fd=-1, offload_max=0):
        cdef xsk_socket_config cfg
        cdef xsk_umem_config ucfg
        cdef int r, one = 1, usecs = XDP_BUSY_POLL_USECS, budget = RING_BATCH
        cdef fl_port *p = self.p
        cdef xdp_options opts
        cdef pk.socklen_t optlen = sizeof(opts)
        cdef bytes bname
        if not FL_XDP_BUILT:
            raise RuntimeError(XDP_MISSING)
        if mode not in ("auto", "native", "skb"):
            raise ValueError(f"mode must be auto, native or skb, got {mode!r}")
        if ring_size < 64 or ring_size > 65536 or ring_size & (ring_size - 1):
            raise ValueError(f"ring_size must be a power of two in 64..65536, got {ring_size}")
        self.ifname = ifname
        self.ifindex = _ifindex(ifname)
        self.queue = queue
        self.ring_size = ring_size
        self.backend = "xdp"
        self.tuning = {}
        self.nsfd = _netns_fd()
        if umem is None:
            umem = XdpUmem(frames=4 * ring_size, frame_size=frame_size)
        self.umem = umem
        if umem.u == NULL:
            raise ValueError("that XdpUmem is closed")
        # one frame, one chunk (no multi-buffer): a larger frame would be dropped by the
        # kernel without a word, so refuse the interface instead (the daemon's auto backend
        # then takes AF_PACKET)
        from fastlvs.engine.contract import mtu_problem
        problem = mtu_problem("xdp", ifname, _if_mtu(ifname), umem.frame_size)
        if problem:
            raise RuntimeError(problem)
        # 1. the steering program (one per interface and namespace)
        key = (_os.fstat(self.nsfd).st_ino, self.ifindex)
        prog = _STEER_PROGS.get(key)
        if prog is None:
            prog = _SteerProg()
            (<_SteerProg>prog).attach(self.ifindex, ifname, mode,
                                      prog_path or _steer_obj_path(), offload_fd, offload_max)
            (<_SteerProg>prog).key = key
            _STEER_PROGS[key] = prog
        elif mode != "auto" and (<_SteerProg>prog).mode != mode:
            raise RuntimeError(f"{ifname} already has our program in {prog.mode} mode")
        self.prog = prog
        self.prog.refs += 1
        try:
            # 2. the socket: shared UMEM, own fill/completion rings per (ifindex, queue)
            memset(&cfg, 0, sizeof(cfg))
            cfg.rx_size = ring_size
            cfg.tx_size = ring_size
            cfg.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD
            cfg.bind_flags = XDP_USE_NEED_WAKEUP
            bname = ifname.encode()
            if umem.u.umem == NULL:
                memset(&ucfg, 0, sizeof(ucfg))
                ucfg.fill_size = ring_size
                ucfg.comp_size = ring_size
                ucfg.frame_size = umem.frame_size
                ucfg.frame_headroom = 0
                ucfg.flags = 0
                r = xsk_umem__create(&umem.u.umem, umem.u.area, umem.u.size, &p.fill, &p.comp,
                                     &ucfg)
                if r:
                    umem.u.umem = NULL
                    raise OSError(-r, f"xsk_umem__create: {_os.strerror(-r)}")
            r = xsk_socket__create_shared(&p.xsk, bname, queue, umem.u.umem, &p.rx, &p.tx,
                                          &p.fill, &p.comp, &cfg)
            if r:
                p.xsk = NULL
                raise OSError(-r, f"cannot create an AF_XDP socket on {ifname} queue {queue}: "
                                  f"{_os.strerror(-r)}")
            p.xsk_fd = xsk_socket__fd(p.xsk)
            p.kind = PORT_XDP
            p.ifindex = self.ifindex
            p.umem = umem.u
            umem.nports += 1
            if pk.getsockopt(p.xsk_fd, SOL_XDP, XDP_OPTIONS, &opts, &optlen) == 0:
                p.zerocopy = 1 if opts.flags & XDP_OPTIONS_ZEROCOPY else 0
            self.mode = f"{self.prog.mode}/{'zerocopy' if p.zerocopy else 'copy'}"
            # Copy mode sends at most 32 frames per kick by default: a whole 64-frame batch
            # (and more) per syscall halves the kicks. Kernels without the option keep 32.
            one = XDP_TX_SKB_BUDGET
            self.tuning["tx_skb_budget"] = XDP_TX_SKB_BUDGET if pk.setsockopt(
                p.xsk_fd, SOL_XDP, XDP_MAX_TX_SKB_BUDGET_, &one, sizeof(int)) == 0 else None
            if busy_poll:
                self._busy_poll(usecs, budget)
            # 3. fill ring full before the socket is visible to the program
            xdp_refill(p)
            r = bpf_map_update_elem(self.prog.xsks_fd, &self.queue, &p.xsk_fd, 0)
            if r:
                raise OSError(-r, f"cannot put the socket in fl_xsks: {_os.strerror(-r)}")
            _OPEN_PORTS.add(self)
        except BaseException:
            self.close()
            raise

    cdef _busy_poll(self, int usecs, int budget):
        # SO_PREFER_BUSY_POLL + SO_BUSY_POLL(_BUDGET) on the socket; the interface's sysfs
        # side (napi_defer_hard_irqs, gro_flush_timeout) is system policy: system/napi.py.
        cdef int one = 1
        cdef fl_port *p = self.p
        ok = True
        for opt, val in ((SO_PREFER_BUSY_POLL_, one), (SO_BUSY_POLL_, usecs),
                         (SO_BUSY_POLL_BUDGET_, budget)):
            one = val
            if pk.setsockopt(p.xsk_fd, pk.SOL_SOCKET, opt, &one, sizeof(int)) != 0:
                ok = False
        p.busy_poll = 1 if ok else 0
        self.tuning["busy_poll"] = ok

    # -- steering maps: control-plane calls ----------------------------------------------------
    def add_service(self, proto, addr, int port):
        """Steer (proto, VIP, vport) to the sockets of this interface. Adding twice is a no-op."""
        cdef fl_steer_key k
        self._check_open()
        _steer_key(&k, proto, addr, port)
        self.prog.set_key(0, &k, True)

    def del_service(self, proto, addr, int port):
        """Stop steering (proto, VIP, vport). Removing an absent key is a no-op."""
        cdef fl_steer_key k
        self._check_open()
        _steer_key(&k, proto, addr, port)
        self.prog.set_key(0, &k, False)

    def add_rserver(self, proto, addr, int port):
        """Steer replies from the NAT real server (proto, RIP, rport). Idempotent."""
        cdef fl_steer_key k
        self._check_open()
        _steer_key(&k, proto, addr, port)
        self.prog.set_key(1, &k, True)

    def del_rserver(self, proto, addr, int port):
        """Stop steering replies of (proto, RIP, rport). Removing an absent key is a no-op."""
        cdef fl_steer_key k
        self._check_open()
        _steer_key(&k, proto, addr, port)
        self.prog.set_key(1, &k, False)

    def add_local(self, addr):
        """Mark `addr` as one of the director's own addresses: a NAT real server's frame
        addressed to it answers the director's own connection and goes to the kernel.
        Adding twice is a no-op."""
        cdef fl_steer_key k
        self._check_open()
        _steer_key(&k, 0, addr, 0)
        self.prog.set_key(2, &k, True)

    def del_local(self, addr):
        """Forget a local address. Removing an absent one is a no-op."""
        cdef fl_steer_key k
        self._check_open()
        _steer_key(&k, 0, addr, 0)
        self.prog.set_key(2, &k, False)

    def steer_stats(self):
        """{"redirected": n, "passed": n, "offloaded": n}: the program's per-CPU counters,
        summed (offloaded: frames it forwarded itself from the offload map)."""
        cdef uint32_t key
        cdef int ncpu = libbpf_num_possible_cpus()
        cdef uint64_t *vals
        self._check_open()
        vals = <uint64_t *>calloc(ncpu if ncpu > 0 else 1, sizeof(uint64_t))
        out = {}
        try:
            for key, name in ((0, "redirected"), (1, "passed"), (2, "offloaded")):
                memset(vals, 0, ncpu * sizeof(uint64_t))
                bpf_map_lookup_elem(self.prog.stats_fd, &key, vals)
                out[name] = sum(vals[i] for i in range(ncpu))
        finally:
            free(vals)
        return out

    def xsk_stats(self):
        """The kernel's XDP_STATISTICS of this socket: rx_dropped, rx_invalid_descs,
        tx_invalid_descs, rx_ring_full, rx_fill_ring_empty_descs, tx_ring_empty_descs."""
        cdef xdp_statistics st
        cdef pk.socklen_t optlen = sizeof(st)
        self._check_open()
        memset(&st, 0, sizeof(st))
        if pk.getsockopt(self.p.xsk_fd, SOL_XDP, XDP_STATISTICS, &st, &optlen) != 0:
            raise OSError(pk.errno, f"XDP_STATISTICS: {_os.strerror(pk.errno)}")
        return {"rx_dropped": st.rx_dropped, "rx_invalid_descs": st.rx_invalid_descs,
                "tx_invalid_descs": st.tx_invalid_descs, "rx_ring_full": st.rx_ring_full,
                "rx_fill_ring_empty_descs": st.rx_fill_ring_empty_descs,
                "tx_ring_empty_descs": st.tx_ring_empty_descs}

    def _check_open(self):
        if self.p.kind == 0 or self.prog is None:
            raise ValueError(f"{self.ifname}: port is closed")

    def close(self):
        """Remove the socket from the map, delete it, detach the program when this was its
        last port, give the UMEM back. Idempotent; works from any network namespace."""
        cdef fl_port *p = self.p
        with _InNetns(self.nsfd):
            if self.prog is not None:
                if p.xsk != NULL and self.prog.prog != NULL:
                    bpf_map_delete_elem(self.prog.xsks_fd, &self.queue)
                self.prog.refs -= 1
                if self.prog.refs <= 0:
                    self.prog.detach()
                    _STEER_PROGS.pop(self.prog.key, None)
                self.prog = None
            if p.xsk != NULL:
                xsk_socket__delete(p.xsk)
                p.xsk = NULL
                self.umem.nports -= 1
        p.xsk_fd = -1
        p.kind = 0
        if self.umem is not None and self.umem.nports == 0 and self.umem.u != NULL:
            # every frame is back with us once no socket holds the UMEM
            if self.umem.u.umem != NULL:
                xsk_umem__delete(self.umem.u.umem)
                self.umem.u.umem = NULL
            self.umem.u.nfree = 0
            for i in range(self.umem.u.nframes):
                self.umem.u.free[i] = <uint64_t>(self.umem.u.nframes - 1 - i) * self.umem.frame_size
            self.umem.u.nfree = self.umem.u.nframes
        if self.nsfd >= 0:
            _os.close(self.nsfd)
            self.nsfd = -1

