# The Engine API: cdef class Engine, which owns the engine state and the frame slots, and the
# control plane's calls on it (services, dests, hash tables, neighbours, timeouts, the scheduler
# callback, frames from Python, timers, counters and listings). Nothing here runs per packet
# except the batch entry run_frames and its scheduler callback.

cdef _addr_words(value, uint32_t *out):
    # v4 as ::a.b.c.d in the four words, v6 in all four (so ::/96 cannot be a v6 address)
    ip = _ipaddress.ip_address(value)
    v = int(ip)
    if ip.version == 6 and v >> 32 == 0:
        raise ValueError(f"IPv6 address in ::/96 (unspecified or IPv4-compatible) "
                         f"cannot be used: {value!r}")
    out[0] = <uint32_t>(v >> 96)
    out[1] = <uint32_t>((v >> 64) & 0xFFFFFFFF)
    out[2] = <uint32_t>((v >> 32) & 0xFFFFFFFF)
    out[3] = <uint32_t>(v & 0xFFFFFFFF)


cdef inline bint _words_v6(const uint32_t *a):
    return a[0] != 0 or a[1] != 0 or a[2] != 0


cdef object _words_int(const uint32_t *a):
    return (<object>a[0] << 96) | (<object>a[1] << 64) | (<object>a[2] << 32) | a[3]


cdef object _addr_text(const uint32_t *a):
    if not _words_v6(a):
        return _ip_text(a[3])
    return str(_ipaddress.IPv6Address(_words_int(a)))


def _mac_bytes(mac):
    if mac is None or mac == "" or mac == b"":
        return b"\0" * 6
    if isinstance(mac, str):
        b = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    else:
        b = bytes(mac)
    if len(b) != 6:
        raise ValueError(f"MAC address must be 6 bytes: {mac!r}")
    return b


cdef _set_mac(uint8_t *dst, mac):
    cdef bytes b = _mac_bytes(mac)
    memcpy(dst, <const uint8_t *>b, 6)


def _proto_num(proto):
    if isinstance(proto, str):
        proto = PROTOCOLS.get(proto.lower(), proto)
    if proto not in _PROTO_NUMS:
        raise ValueError(f"protocol must be 6 (tcp) or 17 (udp), got {proto!r}")
    return proto


def _prefix6(netmask):
    # -M of a v6 service is a prefix length (None: 128), as the kernel keeps it
    if netmask is None:
        return 128
    try:
        mask = int(netmask)
    except (TypeError, ValueError):
        raise ValueError(f"an IPv6 service's netmask is a prefix length 1..128, "
                         f"got {netmask!r}") from None
    if not 1 <= mask <= 128:
        raise ValueError(f"prefix length must be 1..128, got {netmask}")
    return mask


def _ip_text(uint32_t v):
    # dotted quad from the integer: the connection listing makes three per entry, and
    # going through ipaddress cost more than everything else in it
    return f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}"


cdef _sync_addr(uint32_t *w, bint v6):
    if v6:
        return str(_ipaddress.IPv6Address((<object>w[0] << 96) | (<object>w[1] << 64)
                                          | (<object>w[2] << 32) | w[3]))
    return _ip_text(w[3])


cdef class Engine:
    """One data-plane instance: conn table, services, dests, counters.

    Engine(capacity=1<<20, batch=64, local_ip="", local_mac="", mtu=1500,
    frag_mem=4 MiB). `capacity` entries (conns + persistence templates) are allocated once;
    the table never grows. `frag_mem` bytes of fragment payload (1 KiB blocks, one queue per
    4 KiB) are allocated for reassembling fragmented datagrams to the virtual services.
    All configuration methods are control-plane calls, never made per packet. Its C
    attributes are declared in _core.pxd (for the test tools in _testing.pyx).
    """

    def __cinit__(self, capacity=CAPACITY_DEFAULT, batch=BATCH_DEFAULT, local_ip="", local_mac="",
                  mtu=MTU_DEFAULT, frag_mem=FRAG_MEM_DEFAULT):
        cdef uint32_t cap = capacity
        cdef uint32_t i
        cdef uint32_t bits = 4
        if capacity < 1 or capacity > 0xFFFFFFF0:
            raise ValueError(f"capacity must be 1..{0xFFFFFFF0}, got {capacity}")
        if batch < 1 or batch > MAX_BATCH:
            raise ValueError(f"batch must be 1..{MAX_BATCH}, got {batch}")
        if mtu < MTU_MIN or mtu > MTU_MAX:
            raise ValueError(f"mtu must be {MTU_MIN}..{MTU_MAX}, got {mtu}")
        if frag_mem < FRAG_MEM_MIN or frag_mem > FRAG_MEM_MAX:
            raise ValueError(f"frag_mem must be {FRAG_MEM_MIN}..{FRAG_MEM_MAX}, got {frag_mem}")
        memset(&self.st, 0, sizeof(fl_engine))
        while (<uint64_t>1 << bits) < cap:
            bits += 1
        self.st.capacity = cap
        self.st.bucket_bits = bits
        self.st.bucket_mask = (1u << bits) - 1 if bits < 32 else 0xFFFFFFFF
        self.st.conns = <fl_conn *>fl_alloc_table(<size_t>cap * sizeof(fl_conn))
        self.st.buckets = <uint32_t *>fl_alloc_table((<size_t>1 << bits) * sizeof(uint32_t))
        self.st.svcs = <fl_svc *>calloc(SVC_SLOTS, sizeof(fl_svc))
        self.st.vips = <fl_vip *>calloc(MAX_VIPS, sizeof(fl_vip))
        self.st.vip_index = <uint16_t *>calloc(VIP_INDEX_SIZE, sizeof(uint16_t))
        # the client-MAC table: a slot per conn entry (a client per conn at worst), 20 bytes
        # each, up to 16M slots (320 MiB) for the largest tables
        nslots = NEIGH_MIN_SLOTS
        while nslots < cap and nslots < NEIGH_MAX_SLOTS:
            nslots *= 2
        self.st.neigh_set_mask = nslots // NEIGH_WAYS - 1
        self.st.neigh = <fl_neigh *>fl_alloc_table(<size_t>nslots * sizeof(fl_neigh))
        # v6 clients: a quarter as many slots (32 bytes each)
        nslots6 = max(NEIGH_MIN_SLOTS, nslots // 4)
        self.st.neigh6_set_mask = nslots6 // NEIGH_WAYS - 1
        self.st.neigh6 = <fl_neigh6 *>fl_alloc_table(<size_t>nslots6 * sizeof(fl_neigh6))
        self.st.ndests = 64
        self.st.dests = <fl_dest *>calloc(self.st.ndests, sizeof(fl_dest))
        self.frames = <fl_frame *>calloc(MAX_BATCH, sizeof(fl_frame))
        self.slots = <uint8_t *>malloc(<size_t>MAX_BATCH * SLOT_SIZE)
        if (self.st.conns == NULL or self.st.buckets == NULL or self.st.svcs == NULL
                or self.st.vips == NULL or self.st.vip_index == NULL or self.st.neigh == NULL
                or self.st.neigh6 == NULL
                or self.st.dests == NULL or self.frames == NULL or self.slots == NULL):
            raise MemoryError("cannot allocate the engine's tables")
        # every entry starts on the free list, lowest index first
        for i in range(cap):
            self.st.conns[i].next = i + 2 if i + 1 < cap else 0
        self.st.free_head = 1
        self.st.seed = int.from_bytes(_os.urandom(8), "little")
        self.st.rnd = int.from_bytes(_os.urandom(8), "little") | 1
        for name, value in SYSCTL_DEFAULTS.items():
            self.set_sysctl(name, value)
        self.st.neigh_k0 = int.from_bytes(_os.urandom(8), "little")
        self.st.neigh_k1 = int.from_bytes(_os.urandom(8), "little")
        self.st.sweep_budget = 64
        self.st.mtu = mtu
        self.st.nvips = 1
        for i in range(TCP_S_LAST + 1):
            self.st.tcp_timeouts[i] = TCP_DEFAULT_TIMEOUTS[i]
        self.st.udp_timeout = 300
        for i in range(SCTP_S_LAST):
            self.st.sctp_timeouts[i] = SCTP_DEFAULT_TIMEOUTS[i]
        self.batch = batch
        self.callback = None
        self.error = None
        if local_ip:
            self.set_local(local_ip=local_ip)
        _set_mac(self.st.local_mac, local_mac)
        self._frag_alloc(frag_mem)

    cdef int _frag_alloc(self, size_t mem) except -1:
        # The reassembly area, all of it now: 1 KiB blocks, a queue per 4 KiB, a source may
        # hold a quarter of either (and always one whole 64 KiB datagram when the area can),
        # plus the per-batch output arena for rebuilt datagrams and their fragments.
        cdef fl_frag *F = &self.st.frag
        cdef uint32_t i, nb = <uint32_t>min(mem >> FRAG_BLOCK_BITS, 65535)   # 16-bit 1 + index
        cdef uint32_t nq = nb // 4 if nb >= 64 else 16
        cdef uint32_t bits = 4
        while (1u << bits) < nq:
            bits += 1
        F.nblocks = nb
        F.nq = nq
        F.bmask = (1u << bits) - 1
        F.q = <fl_fragq *>calloc(nq, sizeof(fl_fragq))
        F.buckets = <uint32_t *>calloc(1u << bits, sizeof(uint32_t))
        F.blocks = <uint8_t *>malloc(<size_t>nb << FRAG_BLOCK_BITS)
        F.free_blocks = <uint16_t *>malloc(nb * sizeof(uint16_t))
        F.xsize = <uint32_t>max(mem // 2, 256 * 1024)
        F.xbuf = <uint8_t *>malloc(F.xsize)
        F.xseg_max = 4096
        F.xseg = <fl_xseg *>calloc(F.xseg_max, sizeof(fl_xseg))
        if (F.q == NULL or F.buckets == NULL or F.blocks == NULL or F.free_blocks == NULL
                or F.xbuf == NULL or F.xseg == NULL):
            raise MemoryError("cannot allocate the fragment reassembly area")
        for i in range(nq):
            F.q[i].next = i + 2 if i + 1 < nq else 0
        F.free_q = 1
        for i in range(nb):
            F.free_blocks[i] = <uint16_t>(nb - 1 - i)
        F.nfree = nb
        F.src_block_limit = max(nb // 4, min(nb, FRAG_MAX_BLOCKS))
        F.src_queue_limit = max(nq // 4, 1)
        F.timeout_ns = secs(FRAG_TIMEOUT)
        F.timeout6_ns = secs(FRAG6_TIMEOUT)
        return 0

    cdef int _frag_addrs(self) except -1:
        # Which fragments the engine takes: those to a virtual address (any port: only the
        # first fragment has one) and those from a NAT real server. Rebuilt on every service
        # or dest change, half full at most so that lookups stay short.
        cdef fl_frag *F = &self.st.frag
        cdef uint32_t i
        vaddrs = {self.st.vips[i].addr[3] for i in range(1, self.st.nvips)
                  if self.st.vips[i].used and not _words_v6(self.st.vips[i].addr)}
        raddrs = {self.st.dests[i].raddr[3] for i in range(1, self.st.ndests)
                  if (self.st.dests[i].flags & DF_AVAILABLE) and self.st.dests[i].fwd == FWD_NAT
                  and not _words_v6(self.st.dests[i].raddr)}
        vaddrs.discard(0)
        raddrs.discard(0)
        self._addr_set(&F.vset, &F.vmask, vaddrs)
        self._addr_set(&F.rset, &F.rmask, raddrs)
        # v6 VIP addresses, for the extension-header drop (parse6.pxi)
        v6 = {addr6_fold(self.st.vips[i].addr) for i in range(1, self.st.nvips)
              if self.st.vips[i].used and _words_v6(self.st.vips[i].addr)}
        self._addr_set(&self.st.vset6, &self.st.vmask6, v6)
        # v6 NAT real servers, for their reply fragments (frag6.pxi)
        r6 = {addr6_fold(self.st.dests[i].raddr) for i in range(1, self.st.ndests)
              if (self.st.dests[i].flags & DF_AVAILABLE) and self.st.dests[i].fwd == FWD_NAT
              and _words_v6(self.st.dests[i].raddr)}
        self._addr_set(&F.rset6, &F.rmask6, r6)
        return 0

    cdef int _addr_set(self, uint32_t **tab, uint32_t *mask, addrs) except -1:
        cdef uint32_t size = 16, s, a
        cdef uint32_t *t
        while size < 2 * len(addrs):
            size *= 2
        t = <uint32_t *>calloc(size, sizeof(uint32_t))
        if t == NULL:
            raise MemoryError()
        for a in addrs:
            s = <uint32_t>((<uint64_t>a * 0x9E3779B97F4A7C15ULL) >> 40) & (size - 1)
            while t[s] != 0:
                s = (s + 1) & (size - 1)
            t[s] = a
        free(tab[0])
        tab[0] = t
        mask[0] = size - 1
        return 0

    def frag_stats(self):
        """The reassembly area: queues and blocks in use and in all, the per-source shares."""
        cdef fl_frag *F = &self.st.frag
        return {"queues": F.nqueued, "queues_max": F.nq, "blocks": F.nblocks - F.nfree,
                "blocks_max": F.nblocks, "block_size": FRAG_BLOCK,
                "src_queue_limit": F.src_queue_limit, "src_block_limit": F.src_block_limit,
                "timeout": FRAG_TIMEOUT, "timeout6": FRAG6_TIMEOUT}

    cdef list _outputs(self, fl_frame *f):
        # the bytes a TX verdict sends: the frame itself, or a rebuilt datagram's fragments
        cdef fl_xrec *rec
        cdef uint32_t k
        cdef fl_xseg *sg
        if f.xrec == 0:
            return [(f.data + f.out_adj)[:f.out_len]]
        rec = &self.st.frag.xrec[f.xrec - 1]
        out = []
        for k in range(rec.nseg):
            sg = &self.st.frag.xseg[rec.seg0 + k]
            out.append(sg.data[:sg.len])
        return out

    def __dealloc__(self):
        cdef int i
        if self.st.svcs != NULL:
            for i in range(SVC_SLOTS):
                free(self.st.svcs[i].table)
        free(self.st.conns)
        free(self.st.buckets)
        free(self.st.svcs)
        free(self.st.vips)
        free(self.st.vip_index)
        free(self.st.neigh)
        free(self.st.neigh6)
        free(self.st.vset6)
        free(self.st.embryo)
        free(self.st.dests)
        free(self.frames)
        free(self.slots)
        free(self.st.frag.q)
        free(self.st.frag.buckets)
        free(self.st.frag.blocks)
        free(self.st.frag.free_blocks)
        free(self.st.marks)
        free(self.st.frag.xbuf)
        free(self.st.frag.xseg)
        free(self.st.frag.vset)
        free(self.st.frag.rset)
        free(self.st.frag.rset6)
        sync_free_all(&self.st)
        if self.st.off_on:
            _os.close(self.st.off_fd)
            _os.close(self.st.off_rw_fd)
            _os.close(self.st.off_cnt_fd)
        offload_free(&self.st)

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def entry_size(self):
        """Bytes per connection entry (the bucket array adds 4 bytes per power-of-two slot)."""
        return sizeof(fl_conn)

    @property
    def capacity(self):
        return self.st.capacity

    @property
    def hash_size(self):
        """Buckets of the connection hash table: the `size=` of ipvsadm's -L banner, which
        is the kernel's conn_tab_size."""
        return <uint64_t>1 << self.st.bucket_bits

    def memory_bytes(self):
        """Bytes allocated for the conn table, its buckets and, once drop_entry has been
        set, its ring of embryonic entries (8 bytes a bucket), and once sync has been
        started, its state per entry (16 bytes an entry)."""
        return (<uint64_t>self.st.capacity * sizeof(fl_conn)
                + (<uint64_t>1 << self.st.bucket_bits) * (12 if self.st.embryo != NULL else 4)
                + (<uint64_t>self.st.capacity * sizeof(fl_syncmeta)
                   if self.st.sync.meta != NULL else 0))

    def conn_count(self):
        """Entries in use (conns and persistence templates), expired-but-unswept included."""
        return self.st.conn_count

    # -- local addresses, neighbours, timeouts --------------------------------------------------
    def set_local(self, local_ip=None, local_mac=None, mtu=None, local_ip6=None):
        """Change the director's own IP (TUN outer source), MAC (source of every frame we
        send) or the MTU towards the real servers (TUN's frag-needed threshold). An IPv6
        local_ip sets the v6 one (as local_ip6 does): each family keeps its own; "" clears."""
        cdef uint32_t a[4]
        if local_ip is not None and local_ip and _ipaddress.ip_address(local_ip).version == 6:
            local_ip6, local_ip = local_ip, None
        if local_ip6 is not None:
            if local_ip6:
                if _ipaddress.ip_address(local_ip6).version != 6:
                    raise ValueError(f"local_ip6 must be an IPv6 address: {local_ip6!r}")
                _addr_words(local_ip6, a)
                memcpy(self.st.local_ip6, a, 16)
            else:
                memset(self.st.local_ip6, 0, 16)
        if local_ip is not None:
            self.st.local_ip = int(_ipaddress.IPv4Address(local_ip)) if local_ip else 0
        if local_mac is not None:
            _set_mac(self.st.local_mac, local_mac)
        if mtu is not None:
            if mtu < MTU_MIN or mtu > MTU_MAX:
                raise ValueError(f"mtu must be {MTU_MIN}..{MTU_MAX}, got {mtu}")
            self.st.mtu = mtu
        if self.st.off_on:
            offload_drop_where(&self.st, 0, 0, 0, 0)     # sources and MTU as installed

    def set_neighbor(self, ip, mac, ifindex=0):
        """Next-hop MAC (and interface) for NAT replies to client `ip`, from the kernel's
        neighbour table: it replaces what was learned from the client's frames and never
        ages out. Setting it again replaces it; mac=None removes it. When the client's set
        of the table is full, its oldest entry makes room. Clients without an entry go to
        the gateway MAC. IPv6 clients have their own table."""
        cdef uint32_t a
        cdef uint32_t tick = neigh_tick(self.st.now)
        cdef fl_neigh *nb
        cdef bytes m
        if _ipaddress.ip_address(ip).version == 6:
            self._set_neighbor6(ip, mac, ifindex)
            return
        a = int(_ipaddress.IPv4Address(ip))
        if mac is None:
            nb = neigh_find(&self.st, a, tick)
            if nb != NULL:
                nb.flags = 0
            return
        m = _mac_bytes(mac)
        nb = neigh_slot(&self.st, a, tick, True)
        neigh_put(nb, a, <const uint8_t *>m, ifindex, tick, NF_USED | NF_KERNEL)
        if self.st.off_on:
            # the client's NAT replies were installed with its old next hop
            offload_drop_where(&self.st, 0, 0, a, FWD_NAT)

    def _set_neighbor6(self, ip, mac, ifindex):
        cdef uint32_t a[4]
        cdef uint32_t tick = neigh_tick(self.st.now)
        cdef fl_neigh6 *nb
        cdef bytes m
        _addr_words(ip, a)
        if mac is None:
            nb = neigh6_find(&self.st, a, tick)
            if nb != NULL:
                nb.flags = 0
            return
        m = _mac_bytes(mac)
        nb = neigh6_slot(&self.st, a, tick, True)
        neigh6_put(nb, a, <const uint8_t *>m, ifindex, tick, NF_USED | NF_KERNEL)

    def set_gateway6_mac(self, mac, ifindex=0):
        """Next-hop MAC for NAT66 replies to v6 clients without a neighbour entry (the v6
        default router's; None: none, such replies are dropped and counted no_route)."""
        cdef bytes new
        if mac is None:
            self.st.has_gw6 = 0
            return
        new = _mac_bytes(mac)
        memcpy(self.st.gw6_mac, <const uint8_t *>new, 6)
        self.st.gw6_ifindex = ifindex
        self.st.has_gw6 = 1

    @property
    def neighbor_slots(self):
        """Entries of the client-MAC table (follows the capacity: one per conn entry)."""
        return (self.st.neigh_set_mask + 1) * NEIGH_WAYS

    def set_gateway_mac(self, mac, ifindex=0):
        """Next-hop MAC for NAT replies to off-link clients and to clients without a
        neighbour entry (None: none; such replies are then dropped and counted as
        no_route). A new MAC is followed at once, also by entries learned from frames that
        came through the old gateway."""
        cdef bytes old = bytes(self.st.gw_mac[:6]) if self.st.has_gw else None
        cdef bytes new
        cdef uint32_t i, n = (self.st.neigh_set_mask + 1) * NEIGH_WAYS
        cdef fl_neigh *nb
        if self.st.off_on:
            offload_drop_where(&self.st, 0, 0, 0, FWD_NAT)
        if mac is None:
            self.st.has_gw = 0
            return
        new = _mac_bytes(mac)
        if old is not None and old != new:
            for i in range(n):
                nb = &self.st.neigh[i]
                if ((nb.flags & (NF_USED | NF_KERNEL)) == NF_USED
                        and memcmp(nb.mac, <const uint8_t *>old, 6) == 0):
                    memcpy(nb.mac, <const uint8_t *>new, 6)
                    nb.ifindex = ifindex
        memcpy(self.st.gw_mac, <const uint8_t *>new, 6)
        self.st.gw_ifindex = ifindex
        self.st.has_gw = 1

    def set_learn_ifindex(self, int ifindex):
        """NAT: when a new connection opens, remember its client's source MAC (the client,
        or its router) as the next hop of the replies, sent out of `ifindex`, unless the
        client already has a live entry (one from set_neighbor, or one learned earlier
        and used within about 900 s). 0 (the default) turns learning off."""
        self.st.learn_ifindex = ifindex

    def set_client_subnets(self, subnets):
        """The subnets on-link on the learning interface (its addresses' prefixes, e.g.
        ["192.0.2.0/24"]), at most 16. Replies to clients outside them go to the gateway
        MAC and their frames are not learned from; [] (the default) treats every client as
        possibly on-link."""
        nets = [_ipaddress.IPv4Network(n, strict=False) for n in subnets]
        if len(nets) > NEIGH_MAX_SUBNETS:
            raise ValueError(f"at most {NEIGH_MAX_SUBNETS} client subnets, got {len(nets)}")
        for i, n in enumerate(nets):
            self.st.subnet_addr[i] = int(n.network_address)
            self.st.subnet_mask[i] = int(n.netmask)
        self.st.nsubnets = len(nets)

    def set_timeouts(self, tcp=0, tcpfin=0, udp=0):
        """ipvsadm --set: tcp ESTABLISHED, tcp FIN_WAIT and udp timeouts in seconds; 0 keeps
        the current value. Like IPVS, an existing conn keeps its timeout until its next
        state change (TCP) or packet (UDP)."""
        for v in (tcp, tcpfin, udp):
            if v < 0 or v > 0xFFFFFFFF // NS_PER_S * NS_PER_S:
                raise ValueError(f"timeout out of range: {v}")
        if tcp:
            self.st.tcp_timeouts[TCP_S_ESTABLISHED] = tcp
        if tcpfin:
            self.st.tcp_timeouts[TCP_S_FIN_WAIT] = tcpfin
        if udp:
            self.st.udp_timeout = udp

    def get_timeouts(self):
        """(tcp, tcpfin, udp) as ipvsadm -L --timeout shows them."""
        return (self.st.tcp_timeouts[TCP_S_ESTABLISHED], self.st.tcp_timeouts[TCP_S_FIN_WAIT],
                self.st.udp_timeout)

    def set_sysctl(self, name, value):
        """Set one of SYSCTL_DEFAULTS by its kernel name (ValueError for another name or a
        value out of its range). The flood defences are re-evaluated at once, as writing
        the kernel's sysctl does; the booleans take any int, stored as 0/1."""
        if name not in _SYSCTL_RANGE:
            raise ValueError(f"unknown sysctl {name!r}")
        lo, hi = _SYSCTL_RANGE[name]
        v = int(value)
        if name in ("expire_nodest_conn", "expire_quiescent_template", "sloppy_tcp",
                    "nat_icmp_send", "pmtu_disc"):
            v = 1 if v else 0
        if not lo <= v <= hi:
            raise ValueError(f"{name} must be {lo}..{hi}, got {value!r}")
        if name == "expire_nodest_conn":
            self.st.expire_nodest_conn = v
        elif name == "expire_quiescent_template":
            self.st.expire_quiescent_template = v
        elif name == "conn_reuse_mode":
            self.st.conn_reuse_mode = v
        elif name == "sloppy_tcp":
            self.st.sloppy_tcp = v
        elif name == "nat_icmp_send":
            self.st.nat_icmp_send = v
        elif name == "pmtu_disc":
            self.st.pmtu_disc = v
            if self.st.off_on:
                offload_drop_where(&self.st, 0, 0, 0, FWD_TUN)
        elif name == "drop_entry":
            if v and self.st.embryo == NULL:
                # the ring of SYN_RECV entries drop_entry takes from; an engine that never
                # uses the defence neither holds nor fills it
                self.st.embryo = <uint64_t *>fl_alloc_table(
                    (<size_t>self.st.bucket_mask + 1) * sizeof(uint64_t))
                if self.st.embryo == NULL:
                    raise MemoryError("cannot allocate drop_entry's ring")
            self.st.drop_entry = v
        elif name == "drop_packet":
            self.st.drop_packet = v
        elif name == "secure_tcp":
            self.st.secure_tcp = v
        elif name == "amemthresh":
            self.st.amemthresh = v
        elif name == "am_droprate":
            self.st.am_droprate = v
        elif name.startswith("sync_"):
            self._set_sync_sysctl(name, v)
        defense_update(&self.st)

    def sysctls(self):
        """{name: value} of the sysctls the engine applies, as they read now (an automatic
        defence reads 2 while in force, 1 while not)."""
        st = &self.st
        return {"expire_nodest_conn": st.expire_nodest_conn,
                "expire_quiescent_template": st.expire_quiescent_template,
                "conn_reuse_mode": st.conn_reuse_mode, "sloppy_tcp": st.sloppy_tcp,
                "drop_entry": st.drop_entry, "drop_packet": st.drop_packet,
                "secure_tcp": st.secure_tcp, "amemthresh": st.amemthresh,
                "am_droprate": st.am_droprate, "nat_icmp_send": st.nat_icmp_send,
                "pmtu_disc": st.pmtu_disc, **self._sync_sysctls()}

    def defense_state(self):
        """The flood defences in force now: drop_entry (bool), drop_rate (drop_packet drops
        1 of every drop_rate new conns, 0 = none), secure_tcp (bool)."""
        return {"drop_entry": bool(self.st.dropentry_on), "drop_rate": self.st.drop_rate,
                "secure_tcp": bool(self.st.secure_tcp_on)}

    def set_sweep_budget(self, uint32_t entries):
        """Most entries the incremental expiry inspects after one batch (default 64); it
        paces itself to walk the used part of the table once per second of frame time."""
        self.st.sweep_budget = entries

    # -- services -------------------------------------------------------------------------------
    cdef uint16_t _vip_intern(self, uint8_t proto, uint32_t *addr, uint16_t port) except 0:
        cdef uint16_t v = vip_find(&self.st, addr, port, proto)
        cdef uint32_t s
        if v != 0:
            return v
        if self.st.nvips >= MAX_VIPS:
            raise ValueError("too many distinct virtual addresses")
        v = <uint16_t>self.st.nvips
        self.st.nvips += 1
        memcpy(self.st.vips[v].addr, addr, 16)
        self.st.vips[v].port = port
        self.st.vips[v].proto = proto
        self.st.vips[v].used = 1
        s = vip_slot(addr, port, proto)
        while self.st.vip_index[s] != 0:
            s = (s + 1) & (VIP_INDEX_SIZE - 1)
        self.st.vip_index[s] = v
        return v

    def set_service(self, int svc_id, proto, vaddr, int vport, persist_timeout=0,
                    netmask=None, sched=0, sched_flags=0, ops=False):
        """Add or edit service `svc_id` (1..65535) = proto (6|17|"tcp"|"udp") vaddr:vport.

        persist_timeout > 0 makes it persistent (-p) with client netmask `netmask` (-M:
        dotted mask or prefix length; default /32). sched: 0 = Python callback, 1 sh, 2 dh,
        3 mh (the table comes with set_hash_table); sched_flags bit0 fallback, bit1 port.
        Editing may move the service to another address: conns of the old one live on.
        ops (-o, UDP only as ipvsadm allows): every datagram is scheduled on its own and
        leaves no conn entry (a persistence template is still made and followed).
        """
        cdef uint32_t a[4]
        cdef fl_svc *s
        cdef uint16_t v
        if svc_id < 1 or svc_id > MAX_SERVICES:
            raise ValueError(f"svc_id must be 1..{MAX_SERVICES}, got {svc_id}")
        if vport < 0 or vport > 65535:
            raise ValueError(f"vport out of range: {vport}")
        if persist_timeout < 0 or persist_timeout > 0xFFFFFFFF:
            raise ValueError(f"persist_timeout out of range: {persist_timeout}")
        p = _proto_num(proto)
        if isinstance(sched, str):
            sched = HASH_KINDS[sched]
        if sched != SCHED_CALLBACK and sched not in _HASH_IDS:
            raise ValueError(f"sched must be 0..3, got {sched}")
        v6 = _ipaddress.ip_address(vaddr).version == 6
        if v6:
            # -M of a v6 service is a prefix length, as the kernel keeps it
            if netmask is None:
                mask = 128
            else:
                try:
                    mask = int(netmask)
                except (TypeError, ValueError):
                    raise ValueError(f"an IPv6 service's netmask is a prefix length 1..128, "
                                     f"got {netmask!r}") from None
                if not 1 <= mask <= 128:
                    raise ValueError(f"prefix length must be 1..128, got {netmask}")
        elif netmask is None:
            mask = 0xFFFFFFFF
        elif isinstance(netmask, int):
            if not 0 <= netmask <= 32:
                raise ValueError(f"prefix length must be 0..32, got {netmask}")
            mask = (0xFFFFFFFF << (32 - netmask)) & 0xFFFFFFFF
        else:
            mask = int(_ipaddress.IPv4Address(netmask))
        _addr_words(vaddr, a)
        v = self._vip_intern(p, a, vport)
        if self.st.vips[v].svc != 0 and self.st.vips[v].svc != svc_id:
            raise ValueError(f"{vaddr}:{vport}/{p} already belongs to service "
                             f"{self.st.vips[v].svc}")
        s = &self.st.svcs[svc_id]
        if s.in_use and s.vip != v:
            self.st.vips[s.vip].svc = 0
        if not s.in_use:
            memset(s, 0, sizeof(fl_svc))
        s.in_use = 1
        s.proto = p
        memcpy(s.vaddr, a, 16)
        s.vport = vport
        s.vip = v
        s.persist_timeout = persist_timeout
        s.netmask = mask
        s.sched = sched
        s.sched_flags = sched_flags
        s.flags = SVC_F_ONEPACKET if ops and p == 17 else 0
        if sched == SCHED_CALLBACK:
            # back to the Python scheduler (ipvsadm -E -s rr on an sh service): a table
            # left from before would go on choosing new flows' dests in C
            free(s.table)
            s.table = NULL
            s.table_len = 0
        self.st.vips[v].svc = svc_id
        self._count_port0()
        self._frag_addrs()

    cdef void _count_port0(self):
        # the fast path looks for a port-0 service only while one exists
        cdef uint32_t i, n = 0
        for i in range(1, MAX_SERVICES + 1):
            if (self.st.svcs[i].in_use and self.st.svcs[i].vport == 0
                    and not (self.st.svcs[i].flags & SVC_F_FWMARK)):
                n += 1
        self.st.n_port0 = n

    def set_vip_served(self, proto, vaddr, int vport, served):
        """Whether frames to (proto, vaddr, vport) are served while vaddr is absent from the
        host: not `served`, every frame to it passes to the kernel (new flows and known conns
        alike, counted as no_service) and its conns stay in the table. A VIP is served
        from its first set_service until told otherwise."""
        cdef uint32_t a[4]
        if vport < 0 or vport > 65535:
            raise ValueError(f"vport out of range: {vport}")
        _addr_words(vaddr, a)
        v = self._vip_intern(_proto_num(proto), a, vport)
        self.st.vips[v].off = 0 if served else 1
        if self.st.off_on and not served:
            offload_drop_where(&self.st, 0, v, 0, 0)     # the kernel's now, conns and all

    def del_service(self, int svc_id):
        """Remove a service and (like IPVS) all its dests; their conns continue until they
        expire. Removing an absent service is a no-op."""
        cdef fl_svc *s
        cdef uint32_t d
        if svc_id < 1 or svc_id > MAX_SERVICES or not self.st.svcs[svc_id].in_use:
            return
        s = &self.st.svcs[svc_id]
        for d in range(1, self.st.ndests):
            if (self.st.dests[d].flags & DF_AVAILABLE) and self.st.dests[d].svc == svc_id:
                self.del_dest(d)
        self.st.vips[s.vip].svc = 0
        free(s.table)
        s.table = NULL
        s.table_len = 0
        s.in_use = 0
        self._count_port0()
        self._frag_addrs()

    # -- firewall-mark services (dataplane/fwmark.pxi) --------------------------------------
    def set_fwm_service(self, int svc_id, mark, persist_timeout=0, netmask=None, sched=0,
                        sched_flags=0, af=4):
        """Add or edit service `svc_id` as the firewall-mark service of `mark` (1..2**32-1)
        for frames of address family `af` (4 or 6; a mark may have one service of each):
        new flows whose frames the match rules (set_marks) give this mark are scheduled
        here before any (proto, addr, port) service, as ip_vs_service_find does. The other
        arguments are set_service's (a v6 service's netmask is a prefix length, default
        128); persistence templates are keyed by the mark."""
        cdef uint32_t a[4]
        cdef fl_svc *s
        cdef uint16_t v
        if svc_id < 1 or svc_id > MAX_SERVICES:
            raise ValueError(f"svc_id must be 1..{MAX_SERVICES}, got {svc_id}")
        if not 1 <= mark <= 0xFFFFFFFF:
            raise ValueError(f"mark must be 1..{0xFFFFFFFF}, got {mark}")
        if persist_timeout < 0 or persist_timeout > 0xFFFFFFFF:
            raise ValueError(f"persist_timeout out of range: {persist_timeout}")
        if isinstance(sched, str):
            sched = HASH_KINDS[sched]
        if sched != SCHED_CALLBACK and sched not in _HASH_IDS:
            raise ValueError(f"sched must be 0..3, got {sched}")
        if af not in (4, 6):
            raise ValueError(f"af must be 4 or 6, got {af!r}")
        if af == 6:
            mask = _prefix6(netmask)
        elif netmask is None:
            mask = 0xFFFFFFFF
        elif isinstance(netmask, int):
            if not 0 <= netmask <= 32:
                raise ValueError(f"prefix length must be 0..32, got {netmask}")
            mask = (0xFFFFFFFF << (32 - netmask)) & 0xFFFFFFFF
        else:
            mask = int(_ipaddress.IPv4Address(netmask))
        mark_key(mark, af == 6, a)
        v = self._vip_intern(0, a, 0)
        if self.st.vips[v].svc != 0 and self.st.vips[v].svc != svc_id:
            raise ValueError(f"mark {mark} already belongs to service {self.st.vips[v].svc}")
        s = &self.st.svcs[svc_id]
        if s.in_use and s.vip != v:
            self.st.vips[s.vip].svc = 0
        if not s.in_use:
            memset(s, 0, sizeof(fl_svc))
        s.in_use = 1
        s.proto = 0
        memcpy(s.vaddr, a, 16)
        s.vport = 0
        s.vip = v
        s.persist_timeout = persist_timeout
        s.netmask = mask
        s.sched = sched
        s.sched_flags = sched_flags
        s.flags = SVC_F_FWMARK
        if sched == SCHED_CALLBACK:
            free(s.table)
            s.table = NULL
            s.table_len = 0
        self.st.vips[v].svc = svc_id
        self._count_port0()

    def set_marks(self, rules):
        """Replace the firewall-mark match rules: a sequence of (mark, proto, prefix,
        port_lo, port_hi), tried in order, the first that matches a frame gives its mark.
        proto: 0/None (any), 6/17/132 or a name; prefix: "10.0.0.0/24", an address, or
        None (any); ports inclusive, 0..65535. An empty sequence removes them all."""
        cdef fl_markrule *t
        cdef uint32_t i, n
        rows = []
        for rule in rules:
            mark, proto, prefix, lo, hi = rule
            if not 1 <= mark <= 0xFFFFFFFF:
                raise ValueError(f"mark must be 1..{0xFFFFFFFF}, got {mark}")
            pnum = 0 if proto in (None, 0, "any") else _proto_num(proto)
            if prefix is None:
                net = _ipaddress.IPv4Network("0.0.0.0/0")
            else:
                net = _ipaddress.ip_network(prefix, strict=False)
            if not 0 <= lo <= hi <= 65535:
                raise ValueError(f"port range must be 0 <= lo <= hi <= 65535, got {lo}-{hi}")
            rows.append((mark, pnum, int(net.network_address), int(net.netmask), lo, hi,
                         net.version == 6))
        n = len(rows)
        t = NULL
        if n != 0:
            t = <fl_markrule *>calloc(n, sizeof(fl_markrule))
            if t == NULL:
                raise MemoryError("cannot allocate the mark rules")
        for i in range(n):
            mark, pnum, addr, mask, lo, hi, v6 = rows[i]
            t[i].mark, t[i].proto, t[i].port_lo, t[i].port_hi = mark, pnum, lo, hi
            t[i].v6 = v6
            if v6:
                for k in range(4):
                    t[i].addr6[k] = (addr >> (96 - 32 * k)) & 0xFFFFFFFF
                    t[i].mask6[k] = (mask >> (96 - 32 * k)) & 0xFFFFFFFF
            else:
                t[i].addr, t[i].mask = addr, mask
        # swapped whole between batches (control-plane calls never run during one)
        free(self.st.marks)
        self.st.marks = t
        self.st.nmarks = n

    def marks(self):
        """The match rules as set_marks took them: [(mark, proto, prefix, lo, hi)]."""
        cdef uint32_t i
        out = []
        for i in range(self.st.nmarks):
            r = &self.st.marks[i]
            if r.v6:
                a6 = m6 = 0
                for k in range(4):
                    a6 = (a6 << 32) | r.addr6[k]
                    m6 = (m6 << 32) | r.mask6[k]
                net = _ipaddress.IPv6Network((a6, bin(m6).count("1")))
            else:
                net = _ipaddress.IPv4Network((r.addr, bin(r.mask).count("1")))
            out.append((r.mark, r.proto, str(net), r.port_lo, r.port_hi))
        return out

    def set_hash_table(self, int svc_id, table, kind, int flags=0):
        """Hand the service a sh/dh/mh bucket table of dest ids (0 = empty bucket) so new
        flows are scheduled in C. kind: "sh"|"dh"|"mh" or 1|2|3; flags bit0 fallback,
        bit1 port. table=None returns the service to the Python callback."""
        cdef fl_svc *s
        cdef uint32_t *t
        cdef uint32_t i, n
        if svc_id < 1 or svc_id > MAX_SERVICES or not self.st.svcs[svc_id].in_use:
            raise ValueError(f"no service {svc_id}")
        s = &self.st.svcs[svc_id]
        if table is None:
            free(s.table)
            s.table = NULL
            s.table_len = 0
            s.sched = SCHED_CALLBACK
            return
        if isinstance(kind, str):
            kind = HASH_KINDS[kind]
        if kind not in _HASH_IDS:
            raise ValueError(f"kind must be sh, dh or mh, got {kind!r}")
        vals = [int(x) for x in table]
        n = len(vals)
        if n == 0:
            raise ValueError("empty hash table")
        t = <uint32_t *>malloc(n * sizeof(uint32_t))
        if t == NULL:
            raise MemoryError()
        for i in range(n):
            t[i] = vals[i]
        free(s.table)
        s.table = t
        s.table_len = n
        s.sched = kind
        s.sched_flags = flags

    # -- dests ----------------------------------------------------------------------------------
    cdef int _dest_grow(self, uint32_t dest_id) except -1:
        cdef uint32_t n = self.st.ndests
        cdef fl_dest *nd
        if dest_id < n:
            return 0
        while n <= dest_id:
            n *= 2
        nd = <fl_dest *>realloc(self.st.dests, n * sizeof(fl_dest))
        if nd == NULL:
            raise MemoryError()
        memset(nd + self.st.ndests, 0, (n - self.st.ndests) * sizeof(fl_dest))
        self.st.dests = nd
        self.st.ndests = n
        return 0

    def set_dest(self, int dest_id, int svc_id, raddr, int rport, fwd="dr", mac=None,
                 int ifindex=0, weight=1, u_threshold=0, l_threshold=0, src_mac=None,
                 tun_type="ipip", tun_port=0, tun_flags=0):
        """Add or edit dest `dest_id` (1..2**24) of service `svc_id`.

        A TUN dest's encapsulation is tun_type ipip, gue (UDP to tun_port) or gre, with
        tun_flags csum/remcsum (contract.tun_args checks them; ignored for dr and nat).

        Editing a live dest changes fwd/mac/ifindex/weight/thresholds in place (existing
        conns keep the forwarding method they were made with); setting u_threshold to 0
        or raising it clears the overload flag (__ip_vs_update_dest). A deleted dest still
        referenced by conns comes back when re-added with the same service and address
        (IPVS's trash); re-using its id for anything else raises ValueError until its
        conns have expired.
        """
        cdef fl_dest *d
        cdef uint32_t a[4]
        old_how = None
        if dest_id < 1 or dest_id > (1 << 24):
            raise ValueError(f"dest_id must be 1..{1 << 24}, got {dest_id}")
        if svc_id < 1 or svc_id > MAX_SERVICES or not self.st.svcs[svc_id].in_use:
            raise ValueError(f"no service {svc_id}")
        if rport < 0 or rport > 65535:
            raise ValueError(f"rport out of range: {rport}")
        if isinstance(fwd, str):
            if fwd.lower() not in _FWD_IDS:
                raise ValueError(f"fwd must be dr, nat or tun, got {fwd!r}")
            fwd = _FWD_IDS[fwd.lower()]
        if fwd not in (FWD_DR, FWD_NAT, FWD_TUN):
            raise ValueError(f"fwd must be 1 (dr), 2 (nat) or 3 (tun), got {fwd!r}")
        if weight < 0 or weight > 0x7FFFFFFF:
            raise ValueError(f"weight out of range: {weight}")
        if not (0 <= u_threshold <= 0xFFFFFFFF and 0 <= l_threshold <= 0xFFFFFFFF):
            raise ValueError("thresholds must be 0..2**32-1")
        _mac_bytes(mac)
        tun = tun_args(tun_type, tun_port, tun_flags)
        _addr_words(raddr, a)
        self._dest_grow(dest_id)
        d = &self.st.dests[dest_id]
        same = (d.svc == svc_id and d.rport == rport and addr_eq(d.raddr, a))
        if self.st.off_on and d.flags & DF_IN_USE:
            # how its conns are sent may change: a new method or tunnel takes them out (the
            # next packet the engine sees installs them again), new MACs or interface are
            # written into their rewrite entries; weights stay
            old_how = (bytes(d.mac[:6]), bytes(d.smac[:6]), d.ifindex, d.fwd, d.tun_type)
        if d.flags & DF_IN_USE:
            if not same and (d.flags & DF_AVAILABLE or d.refcnt != 0):
                raise ValueError(
                    f"dest id {dest_id} is in use by {_addr_text(d.raddr)}:{d.rport} of "
                    f"service {d.svc} ({d.refcnt} conns); delete it and wait for them")
            if not same:
                memset(d, 0, sizeof(fl_dest))
        else:
            memset(d, 0, sizeof(fl_dest))
        d.flags |= DF_IN_USE | DF_AVAILABLE
        memcpy(d.raddr, a, 16)
        d.rport = rport
        d.svc = svc_id
        d.fwd = fwd
        _set_mac(d.mac, mac)
        # Frames to this dest leave by `ifindex`: their source is our MAC there (default:
        # the engine's local MAC, right when the director has one interface).
        if src_mac is None:
            memcpy(d.smac, self.st.local_mac, 6)
        else:
            _set_mac(d.smac, src_mac)
        d.ifindex = ifindex
        d.weight = weight
        d.tun_type, d.tun_port, d.tun_flags = tun
        if self.st.off_on and old_how is not None:
            new_how = (bytes(d.mac[:6]), bytes(d.smac[:6]), d.ifindex, d.fwd, d.tun_type)
            if old_how[3:] != new_how[3:]:
                offload_drop_where(&self.st, dest_id, 0, 0, 0)
            elif old_how != new_how:
                offload_dest_moved(&self.st, dest_id)       # MACs, interface: in place
        if u_threshold == 0 or u_threshold > d.u_threshold:
            d.flags &= ~DF_OVERLOAD
        d.u_threshold = u_threshold
        d.l_threshold = l_threshold
        self._frag_addrs()

    def del_dest(self, int dest_id):
        """Unlink a dest: never chosen again; as in IPVS its conns' packets are dropped
        (counted dest_unavailable) and the entries left to time out, or, with
        expire_nodest_conn, ended at once. NAT replies of its remaining conns are still
        translated. Its id stays reserved while entries reference it (re-adding the same
        service + address brings them back). Removing an absent dest is a no-op."""
        cdef fl_dest *d
        if dest_id < 1 or <uint32_t>dest_id >= self.st.ndests:
            return
        d = &self.st.dests[dest_id]
        if not (d.flags & DF_IN_USE):
            return
        d.flags &= ~DF_AVAILABLE
        if self.st.off_on:
            # its packets are the engine's to drop (or to end with expire_nodest_conn)
            offload_drop_where(&self.st, dest_id, 0, 0, 0)
        if self.st.expire_nodest_conn and d.refcnt != 0:
            conn_flush_nodest(&self.st, dest_id)
        if d.refcnt == 0:
            memset(d, 0, sizeof(fl_dest))
        self._frag_addrs()

    # -- scheduler callback ---------------------------------------------------------------------
    def set_scheduler_callback(self, fn):
        """fn(svc_ids, flows) -> dest ids, called once per batch (GIL held) with the new flows
        of Python-scheduled services: svc_ids[i] is an int, flows[i] the tuple (af, saddr_int,
        sport, daddr_int, dport, protocol) that Flow.from_ints(*flows[i]) takes. Return one
        dest id per flow, 0 = none (the packet is dropped, counted no_dest). If fn raises,
        the batch's parked frames are dropped (callback_error) and the error is re-raised
        once the batch is finished."""
        self.callback = fn

    cdef int _schedule_parked(self, fl_frame *frames) except -1:
        cdef int k, n = self.st.nparked
        cdef fl_parked *pk
        cdef fl_pkt *p
        idx = []
        svc_ids = []
        flows = []
        for k in range(n):
            pk = &self.st.parked[k]
            if pk.leader >= 0:
                continue
            p = &self.st.pkts[pk.frame]
            idx.append(k)
            svc_ids.append(pk.svc)
            pname = ("tcp" if p.proto == 6 else ("sctp" if p.proto == IPPROTO_SCTP
                                                 else "udp"))
            if p.v6:
                flows.append((6, _words_int(p.saddr), p.sport, _words_int(p.daddr), p.dport,
                              pname))
            else:
                flows.append((4, p.saddr[3], p.sport, p.daddr[3], p.dport, pname))
        try:
            if self.callback is None:
                raise RuntimeError("new flow for a service scheduled in Python, "
                                   "but no scheduler callback is set")
            res = self.callback(svc_ids, flows)
            if len(res) != len(idx):
                raise ValueError(f"scheduler callback returned {len(res)} dest ids "
                                 f"for {len(idx)} flows")
            for j in range(len(idx)):
                r = res[j]
                self.st.parked[idx[j]].dest = 0 if r is None else <uint32_t>r
        except BaseException as exc:
            if self.error is None:
                self.error = exc
            for k in range(n):
                if frames[self.st.parked[k].frame].verdict == VERDICT_PENDING:
                    frame_drop(&self.st, &frames[self.st.parked[k].frame], C_CALLBACK_ERROR)
        return 0

    cdef int run_frames(self, fl_frame *frames, int n) except -1:
        """The entry for ring code: process frames[0:n] (n <= MAX_BATCH) in place, with the
        GIL released except for the one scheduler callback. Afterwards every frame has its
        verdict (TX: send data + out_adj, out_len bytes on out_ifindex; 0 = the interface
        it came from, e.g. ICMP replies). A callback error is kept for raise_pending()."""
        cdef int parked
        if n > MAX_BATCH:
            n = MAX_BATCH
        with nogil:
            parked = engine_rx_batch(&self.st, frames, n)
        if parked:
            self._schedule_parked(frames)
            with nogil:
                engine_bind_parked(&self.st, frames)
        return 0

    cdef int _run(self, int n) except -1:
        return self.run_frames(self.frames, n)

    def _raise_pending(self):
        err = self.error
        if err is not None:
            self.error = None
            raise err

    # -- frames from Python ----------------------------------------------------------------------
    def process(self, frames, timestamps=None):
        """Run `frames` (bytes-likes) through the engine in batches of `batch`.

        timestamps: one int (ns) for all, a sequence of ns per frame, or None (monotonic
        clock). Returns [(index, out_ifindex, bytes)] for the frames to transmit, in input
        order. Frames not transmitted were dropped or passed (see stats())."""
        cdef int n, j, total = len(frames)
        cdef int start = 0
        cdef fl_frame *f
        cdef const uint8_t[::1] view
        cdef uint64_t ts
        out = []
        if timestamps is None:
            timestamps = _time.monotonic_ns()
        single = isinstance(timestamps, int)
        while start < total:
            n = min(self.batch, total - start)
            for j in range(n):
                fr = frames[start + j]
                view = fr
                f = &self.frames[j]
                f.data = self.slots + <size_t>j * SLOT_SIZE + SLOT_HEADROOM
                f.headroom = SLOT_HEADROOM
                f.csum = FRAME_CSUM_UNKNOWN
                f.ts_ns = timestamps if single else timestamps[start + j]
                if view.shape[0] > SLOT_SIZE - SLOT_HEADROOM:
                    f.len = 0           # too big for a slot: parsed as malformed
                else:
                    f.len = view.shape[0]
                    if f.len:
                        memcpy(f.data, &view[0], f.len)
            self._run(n)
            for j in range(n):
                f = &self.frames[j]
                if f.verdict == VERDICT_TX:
                    for data in self._outputs(f):
                        out.append((start + j, f.out_ifindex, data))
            start += n
            if self.error is not None:
                break
        self._raise_pending()
        return out

    def process_verdicts(self, frames, timestamps=None):
        """Like process() but returns one (verdict, reason, out_ifindex, bytes|None) per frame:
        verdict "tx" | "drop" | "pass", reason the counter name that decided a drop/pass.
        The fragment completing a datagram carries what the datagram became: a list of
        bytes (its fragments) instead of bytes."""
        res = [None] * len(frames)
        cdef int start = 0, n, j, total = len(frames)
        cdef fl_frame *f
        if timestamps is None:
            timestamps = _time.monotonic_ns()
        single = isinstance(timestamps, int)
        names = {VERDICT_DROP: "drop", VERDICT_TX: "tx", VERDICT_PASS: "pass",
                 VERDICT_PENDING: "drop"}
        while start < total:
            n = min(self.batch, total - start)
            chunk = frames[start:start + n]
            ts = timestamps if single else timestamps[start:start + n]
            self._load(chunk, ts)
            self._run(n)
            for j in range(n):
                f = &self.frames[j]
                data = None
                if f.verdict == VERDICT_TX:
                    data = self._outputs(f)
                    data = data if f.xrec else data[0]
                res[start + j] = (names[f.verdict],
                                  COUNTER_NAMES[f.reason] if f.verdict != VERDICT_TX else "",
                                  f.out_ifindex, data)
            start += n
            if self.error is not None:
                break
        self._raise_pending()
        return res

    cdef int _load(self, chunk, ts) except -1:
        cdef int j
        cdef fl_frame *f
        cdef const uint8_t[::1] view
        single = isinstance(ts, int)
        for j in range(len(chunk)):
            view = chunk[j]
            f = &self.frames[j]
            f.data = self.slots + <size_t>j * SLOT_SIZE + SLOT_HEADROOM
            f.headroom = SLOT_HEADROOM
            f.csum = FRAME_CSUM_UNKNOWN
            f.ts_ns = ts if single else ts[j]
            f.len = view.shape[0] if view.shape[0] <= SLOT_SIZE - SLOT_HEADROOM else 0
            if f.len:
                memcpy(f.data, &view[0], f.len)
        return 0

    # -- timers ---------------------------------------------------------------------------------
    def run_timers(self, now_ns=None, budget=None):
        """Expire entries whose timeout passed by `now_ns` (default: the latest frame time),
        inspecting `budget` entries from the sweep cursor (default: the whole table), and
        every reassembly queue past ipfrag_time. Returns the number of entries freed."""
        cdef uint64_t now = self.st.now if now_ns is None else now_ns
        cdef uint32_t b = self.st.capacity if budget is None else budget
        cdef uint32_t freed
        if now > self.st.now:
            self.st.now = now
        # no read-back of the offload map here: an offloaded entry whose timer ran out is
        # read alone before it goes (offload_refresh), and a whole read costs ~1 µs an entry
        with nogil:
            freed = conn_sweep(&self.st, now, b)
            frag_expire(&self.st, now, 0xFFFFFFFF)
        return freed

    # -- counters and listings --------------------------------------------------------------------
    def stats(self):
        """Global counters by name (drops by reason, passes, tx, conns created/expired)."""
        self._off_fresh()
        return {COUNTER_NAMES[i]: self.st.counters[i] for i in range(C_LAST)}

    def service_stats(self, int svc_id):
        """conns, inpkts, outpkts, inbytes, outbytes of a service (bytes = IP lengths)."""
        cdef fl_svc *s
        if svc_id < 1 or svc_id > MAX_SERVICES or not self.st.svcs[svc_id].in_use:
            raise KeyError(svc_id)
        self._off_fresh()
        s = &self.st.svcs[svc_id]
        return {"conns": s.conns, "inpkts": s.inpkts, "outpkts": s.outpkts,
                "inbytes": s.inbytes, "outbytes": s.outbytes}

    def dest_stats(self, int dest_id):
        """Counters of a dest (also of a deleted one its conns still reference)."""
        cdef fl_dest *d
        if dest_id < 1 or <uint32_t>dest_id >= self.st.ndests:
            raise KeyError(dest_id)
        d = &self.st.dests[dest_id]
        if not (d.flags & DF_IN_USE):
            raise KeyError(dest_id)
        self._off_fresh()
        return {"conns": d.conns, "inpkts": d.inpkts, "outpkts": d.outpkts,
                "inbytes": d.inbytes, "outbytes": d.outbytes,
                "activeconns": d.activeconns, "inactconns": d.inactconns,
                "persistconns": d.persistconns, "overloaded": bool(d.flags & DF_OVERLOAD),
                "weight": d.weight, "available": bool(d.flags & DF_AVAILABLE),
                "refcnt": d.refcnt}

    def dest_counters(self, int dest_id):
        """(activeconns, inactconns, persistconns, overloaded): what lc/wlc/... read."""
        cdef fl_dest *d
        if dest_id < 1 or <uint32_t>dest_id >= self.st.ndests:
            raise KeyError(dest_id)
        d = &self.st.dests[dest_id]
        return (d.activeconns, d.inactconns, d.persistconns, bool(d.flags & DF_OVERLOAD))

    def conns(self, now_ns=None):
        """Entries for ipvsadm -Lnc: dicts with proto, state, expires (s), caddr, cport,
        vaddr, vport, raddr, rport, template. Entries already expired are left out.
        All of them at once: conns_slice() walks the table a bounded part at a time."""
        return self.conns_slice(0, None, now_ns)[0]

    def conns_slice(self, start=0, limit=None, now_ns=None):
        """One slice of the connection listing: (entries, next_start).

        Inspects the entry slots start .. start+limit-1 of the part of the table ever
        handed out (limit=None: to its end) and returns the live entries among them, as
        conns() describes them, with the slot to start the next slice at, or None once the
        walk has reached the end. So the C work and the Python objects made per call are
        bounded by `limit` (a slice of a sparse table may hold few or no entries).

        Entries keep their slot for their whole life: a walk in slices lists each entry
        that lives through the walk exactly once, and one made or freed meanwhile may or
        may not appear, as with a read of the kernel's /proc/net/ip_vs_conn. The order is
        slot order, not sorted (the kernel's is its hash-chain order, not sorted either).
        """
        cdef uint64_t now = self.st.now if now_ns is None else now_ns
        cdef uint32_t i, first, end
        cdef fl_conn *c
        cdef fl_vip *v
        cdef fl_dest *d
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if start == 0 and self.st.off_on:
            with nogil:
                offload_read_seen(&self.st)     # the timers as the offloaded packets moved them
        end = self.st.used_end
        if start >= end:
            return [], None
        first = start
        if limit is not None and limit < end - first:
            end = first + limit
        out = []
        for i in range(first, end):
            c = &self.st.conns[i]
            if c.vip == 0 or c.expires <= now and not (c.flags & CF_TEMPLATE and c.ctl):
                continue
            v = &self.st.vips[c.vip]
            d = &self.st.dests[c.dest]
            tmpl = bool(c.flags & CF_TEMPLATE)
            if tmpl:
                state = "ASSURED" if c.state & 1 else "NONE"    # IP_VS_CTPL_S_*
            elif c.proto == 17:
                state = "UDP"
            elif c.proto == IPPROTO_SCTP:
                state = SCTP_STATE_NAMES[c.state] if c.state < SCTP_S_LAST else "ERR!"
            else:
                state = TCP_STATE_NAMES[c.state]
            exp = (c.expires - now) // NS_PER_S if c.expires > now else 0
            out.append({"proto": _PROTO_TEXT.get(c.proto, "IP"), "state": state, "expires": exp,
                        "caddr": _addr_text(c.caddr), "cport": c.cport,
                        "vaddr": _addr_text(v.addr), "vport": c.vport,
                        "raddr": _addr_text(d.raddr),
                        # a port-0 template is <caddr, 0, vaddr, 0, raddr, 0> as in IPVS
                        "rport": (d.rport if c.vport != 0 else 0) if tmpl
                                 else conn_rport(&self.st, c),
                        "template": tmpl, "fwd": _FWD_TEXT.get(c.fwd, "")})
        return out, (end if end < self.st.used_end else None)

    # -- connection sync (dataplane/sync.pxi) ------------------------------------------------------
    def _set_sync_sysctl(self, name, uint64_t v):
        cdef fl_sync *sy = &self.st.sync
        if name == "sync_threshold":
            # the kernel's sync_threshold pair: threshold below period, unless period is 0
            if sy.period != 0 and v >= sy.period:
                raise ValueError(f"sync_threshold must be below sync_period ({sy.period}), "
                                 f"got {v}")
            sy.threshold = <uint32_t>v
        elif name == "sync_period":
            if v != 0 and sy.threshold >= v:
                raise ValueError(f"sync_period must be above sync_threshold "
                                 f"({sy.threshold}) or 0, got {v}")
            sy.period = <uint32_t>v
        elif name == "sync_refresh_period":
            sy.refresh_ms = v * 1000
        elif name == "sync_retries":
            sy.retries = <uint32_t>v
        elif name == "sync_persist_mode":
            sy.persist_mode = <uint32_t>v
        elif name == "sync_qlen_max":
            sy.qlen_max = <uint32_t>v

    def _sync_sysctls(self):
        cdef fl_sync *sy = &self.st.sync
        return {"sync_threshold": sy.threshold, "sync_period": sy.period,
                "sync_refresh_period": sy.refresh_ms // 1000, "sync_retries": sy.retries,
                "sync_persist_mode": sy.persist_mode, "sync_qlen_max": sy.qlen_max}

    def _sync_meta(self):
        # the per-entry sync state, made when sync first starts (its conns start counting)
        cdef uint32_t i
        if self.st.sync.meta == NULL:
            self.st.sync.meta = <fl_syncmeta *>calloc(self.st.capacity, sizeof(fl_syncmeta))
            if self.st.sync.meta == NULL:
                raise MemoryError("cannot allocate the sync state of the conn table")
            for i in range(self.st.capacity):
                self.st.sync.meta[i].endtime = (self.st.now // 1000000) & ~(<uint64_t>3)

    def sync_start_master(self, int syncid, int maxlen):
        """Start sending: from now on the packets of conns decide (sync_threshold, ...)
        which conns and templates go into messages of syncid `syncid` (0-255) of at most
        `maxlen` bytes (1..65507; an entry never fits in less than 44, a v6 one in less
        than 80, and then has a message of its own). Restarting a running master changes both and drops what
        was not taken yet."""
        if not 0 <= syncid <= 255:
            raise ValueError(f"syncid must be 0..255, got {syncid}")
        if not 1 <= maxlen <= 65507:
            raise ValueError(f"sync maxlen must be 1..65507, got {maxlen}")
        self._sync_meta()
        sync_drop_queue(&self.st)
        cap = max(maxlen, SYNC_HDR + SYNC_ENT6)
        if cap != self.st.sync.bufcap:
            sync_free_pool(&self.st)
            self.st.sync.bufcap = cap
        self.st.sync.maxlen = maxlen
        self.st.sync.master_syncid = syncid
        self.st.sync.master = 1

    def sync_stop_master(self):
        """Stop sending; messages not taken yet are dropped (as the kernel's are). A no-op
        when not running."""
        self.st.sync.master = 0
        sync_drop_queue(&self.st)

    def sync_start_backup(self, int syncid):
        """Accept messages of syncid `syncid` (0: of any) in sync_receive."""
        if not 0 <= syncid <= 255:
            raise ValueError(f"syncid must be 0..255, got {syncid}")
        self._sync_meta()
        self.st.sync.backup_syncid = syncid
        self.st.sync.backup = 1

    def sync_stop_backup(self):
        """Stop accepting messages; the conns installed stay until they expire."""
        self.st.sync.backup = 0

    def sync_take(self, now_ns):
        """The whole messages ready to send at `now_ns` (frame-clock ns), oldest first: the
        full ones, and the one being filled once it is 2 s old (IPVS_SYNC_FLUSH_TIME).
        [] when not a master."""
        cdef fl_sync *sy = &self.st.sync
        cdef fl_syncbuf *b
        cdef uint64_t now = now_ns
        out = []
        if not sy.master:
            return out
        sync_flush_due(&self.st, now, False)
        while sy.qhead != NULL:
            b = sy.qhead
            sy.qhead = b.next
            if sy.qhead == NULL:
                sy.qtail = NULL
            sy.qlen -= 1
            out.append(b.data[:b.len])
            sy.counters[SC_SENT] += 1
            sy.counters[SC_SENT_CONNS] += b.nconns
            sy.counters[SC_SENT_BYTES] += b.len
            sync_buf_put(&self.st, b)
        return out

    def sync_queue_all(self, vaddr=None, int start=0, limit=None, now_ns=None):
        """Handover (fastlvs's own, not the kernel's): queue every live conn and template
        of VIP address `vaddr` (None: of every VIP) among slots start .. start+limit-1 of
        the table (limit None: to its end) for sending, whatever their state and packet
        count, SYN_RECV ones included. Returns (queued, next_start); next_start is None
        once the walk reached the end, and then the message being filled is closed, so
        sync_take hands everything out at once. RuntimeError when not a master."""
        cdef uint32_t a[4]
        cdef uint32_t first, end, n
        cdef bint anyvip = vaddr is None
        cdef uint64_t now = self.st.now if now_ns is None else now_ns
        if not self.st.sync.master:
            raise RuntimeError("the sync master is not running")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        a[0] = a[1] = a[2] = a[3] = 0
        if not anyvip:
            _addr_words(vaddr, a)
        end = self.st.used_end
        first = start if <uint32_t>start < end else end
        if limit is not None and limit < end - first:
            end = first + limit
        with nogil:
            n = sync_queue_range(&self.st, a, anyvip, first, end, now)
        if end < self.st.used_end:
            return n, end
        sync_flush_due(&self.st, now, True)
        return n, None

    def sync_receive(self, datagram, now_ns):
        """Install or refresh the conns of one sync datagram (the UDP payload) at `now_ns`,
        as a kernel backup does; a bad datagram or entry is counted by reason in
        sync_stats(), never raised. RuntimeError when the backup is not running."""
        cdef const uint8_t[::1] view = datagram
        cdef uint32_t nout, nskip, k
        cdef uint8_t skips[256]
        cdef int r
        cdef uint64_t now = now_ns
        cdef fl_sync *sy = &self.st.sync
        if not sy.backup:
            raise RuntimeError("the sync backup is not running")
        if now > self.st.now:
            self.st.now = now
        sy.counters[SC_RECEIVED] += 1
        sy.counters[SC_RECEIVED_BYTES] += view.shape[0]
        with nogil:
            r = sync_read(&self.st, &view[0] if view.shape[0] else NULL,
                          <uint32_t>view.shape[0], sy.backup_syncid, NULL, skips, &nout,
                          &nskip, True, now)
        sy.counters[SC_RECEIVED_CONNS] += nout
        for k in range(nskip):
            sy.counters[skips[k]] += 1
        if r != 0:
            sy.counters[r] += 1
            sy.counters[SC_DROPPED] += 1

    def sync_decode(self, datagram, int syncid=0):
        """What sync_receive would install from `datagram`, installing nothing (a tool for
        the tests that hold this decoder against fastlvs.sync.protocol.decode): (entries,
        skipped, error) with entries as dicts of the wire's fields, skipped the reasons of
        skipped entries and error the reason the rest was dropped (None), in
        protocol.DROP_*/SKIP_* words."""
        cdef const uint8_t[::1] view = datagram
        cdef fl_syncent ents[256]
        cdef uint8_t skips[256]
        cdef uint32_t nout, nskip, k
        cdef int r
        cdef fl_syncent *s
        cdef const uint8_t *buf = &view[0] if view.shape[0] else NULL
        r = sync_read(&self.st, buf, <uint32_t>view.shape[0], syncid, ents, skips, &nout,
                      &nskip, False, 0)
        out = []
        for k in range(nout):
            s = &ents[k]
            out.append({"protocol": s.proto, "caddr": _sync_addr(s.caddr, s.v6),
                        "cport": s.cport, "vaddr": _sync_addr(s.vaddr, s.v6),
                        "vport": s.vport, "daddr": _sync_addr(s.daddr, s.v6),
                        "dport": s.dport, "flags": s.flags, "state": s.state,
                        "timeout": s.timeout, "fwmark": s.fwmark,
                        "in_seq": (s.seq[0], s.seq[1], s.seq[2]) if s.has_seq else None,
                        "out_seq": (s.seq[3], s.seq[4], s.seq[5]) if s.has_seq else None,
                        "pe_data": bytes(view[s.pe_off:s.pe_off + s.pe_len])
                                   if s.has_pe else None,
                        "pe_name": bytes(view[s.name_off:s.name_off + s.name_len])
                                   .decode("latin-1") if s.has_pe and s.has_name else None})
        skipped = [SYNC_COUNTER_NAMES[skips[k]][5:] for k in range(nskip)]
        return out, skipped, (SYNC_COUNTER_NAMES[r][5:] if r else None)

    def sync_stats(self):
        """Sync counters by name: sent/sent_conns/sent_bytes/queue_overflow (messages
        dropped at sync_qlen_max) of a master; received/received_conns/installed/updated,
        refused_* (no service, no dest, table full, pe, protocol) and dropped with one
        drop_*/skip_* counter per reason of a backup; queued and master/backup now."""
        cdef fl_sync *sy = &self.st.sync
        out = {SYNC_COUNTER_NAMES[i]: sy.counters[i] for i in range(SYNC_C_LAST)}
        out["queued"] = sy.qlen + (1 if sy.cur != NULL else 0)
        out["master"] = sy.master
        out["backup"] = sy.backup
        return out
    # -- the XDP offload (dataplane/offload.pxi) -------------------------------------------------
    def offload_enable(self):
        """Create the offload's flow table (fl_offload: buckets of 2 slots, 2 slots per
        connection entry for NAT's two directions and twice that many so that the load stays
        at most 50%, allocated at once: see offload_memory), its rewrite entries and counters,
        and start installing established connections. Returns the table's fd, which every
        XdpPort's program must reuse (XdpPort(offload_fd=...): it finds the other two maps
        from it). Enabling twice returns the same fd. OSError when the kernel refuses a map."""
        cdef int fds[3]
        cdef int r
        cdef uint64_t nb = 64
        cdef uint32_t nrw = 256, i
        cdef fl_off_cfg *cfg
        if self.st.off_on:
            return self.st.off_fd
        if not FL_XDP_BUILT:
            raise OSError(95, XDP_MISSING)
        while nb < 2 * <uint64_t>self.st.capacity:
            nb <<= 1
        while nrw < OFF_RW_MAX and nrw < self.st.capacity:
            nrw <<= 1
        if nb + FL_OFF_PROBE > 0xFFFFFFFF // 64:
            raise OSError(22, f"the offload table for capacity {self.st.capacity} is too big")
        r = fl_off_maps_create(<unsigned>(nb + FL_OFF_PROBE), nrw, fds)
        if r < 0:
            raise OSError(-r, f"cannot create the offload maps: {_os.strerror(-r)}")
        page = _os.sysconf("SC_PAGE_SIZE")
        self.st.off_tab_len = (<size_t>(nb + FL_OFF_PROBE) * 64 + page - 1) // page * page
        self.st.off_rw_len = (<size_t>nrw * 64 + page - 1) // page * page
        self.st.off_tab = <uint8_t *>fl_off_mmap(fds[0], self.st.off_tab_len)
        self.st.off_rwtab = <uint8_t *>fl_off_mmap(fds[1], self.st.off_rw_len)
        self.st.off_slot = <uint32_t *>calloc(<size_t>self.st.capacity * 2, sizeof(uint32_t))
        self.st.off_rwk = calloc(nrw, sizeof(fl_off_rwent))
        self.st.off_rw_head = <uint32_t *>calloc(nrw, sizeof(uint32_t))
        self.st.off_rw_free = <uint32_t *>malloc(nrw * sizeof(uint32_t))
        if (self.st.off_tab == NULL or self.st.off_rwtab == NULL or self.st.off_slot == NULL
                or self.st.off_rwk == NULL or self.st.off_rw_head == NULL
                or self.st.off_rw_free == NULL):
            offload_free(&self.st)
            for i in range(3):
                _os.close(fds[i])
            raise MemoryError("cannot map or allocate the offload's tables")
        # free rewrite indexes 1..nrw-1, popped from the top: 1 first
        for i in range(nrw - 1):
            self.st.off_rw_free[i] = nrw - 1 - i
        self.st.off_rw_nfree = nrw - 1
        self.st.off_rw_hi = 1
        self.st.off_nrw = nrw
        seed = _os.urandom(16)
        self.st.off_seed[0] = int.from_bytes(seed[:8], "little")
        self.st.off_seed[1] = int.from_bytes(seed[8:], "little")
        self.st.off_mask = <uint32_t>(nb - 1)
        # no program uses the table yet: plain stores
        cfg = <fl_off_cfg *>self.st.off_tab
        cfg.mask = self.st.off_mask
        cfg.seed[0] = self.st.off_seed[0]
        cfg.seed[1] = self.st.off_seed[1]
        cfg.rw_id = fl_off_map_id(fds[1])
        cfg.cnt_id = fl_off_map_id(fds[2])
        cfg.magic = FL_OFF_MAGIC
        self.st.off_fd = fds[0]
        self.st.off_rw_fd = fds[1]
        self.st.off_cnt_fd = fds[2]
        self.st.off_max = <uint32_t>(2 * nb)
        self.st.off_on = 1
        self._off_read_at = 0
        return fds[0]

    def offload_disable(self):
        """Take every connection out of the table (their counts folded in) and close the
        maps; the programs that reused them forward nothing more. Disabling twice is a
        no-op."""
        cdef uint32_t i
        if not self.st.off_on:
            return
        with nogil:
            for i in range(self.st.used_end):
                if self.st.conns[i].vip != 0 and (self.st.conns[i].flags & CF_OFFLOADED):
                    offload_remove(&self.st, i)
        self.st.off_on = 0
        self.st.off_nq = 0
        offload_free(&self.st)
        _os.close(self.st.off_fd)
        _os.close(self.st.off_rw_fd)
        _os.close(self.st.off_cnt_fd)
        self.st.off_fd = self.st.off_rw_fd = self.st.off_cnt_fd = -1

    @property
    def offload_memory(self):
        """Bytes the offload's mmapped table and rewrite entries take (0 while off)."""
        return self.st.off_tab_len + self.st.off_rw_len if self.st.off_on else 0

    @property
    def offload_fd(self):
        """The fl_offload table's fd, or -1 while the offload is off."""
        return self.st.off_fd if self.st.off_on else -1

    @property
    def offload_max_entries(self):
        """Slots of the table (each direction of a conn takes one; 0 while off)."""
        return self.st.off_max if self.st.off_on else 0

    def offload_sync(self):
        """Read the program's counters back now (one per dest and direction in use) into
        the dests, services and engine, and every offloaded conn's last-seen times (from
        the mmapped table) into its timer. Listings and counters call it themselves (at
        most every OFFLOAD_READ_EVERY s); expiry reads an entry alone when its timer runs
        out. Returns the conns read (0 while off)."""
        cdef uint64_t n = 0
        if not self.st.off_on:
            return 0
        with nogil:
            offload_read_counters(&self.st)
            n = offload_read_seen(&self.st)
        self._off_read_at = _time.monotonic()
        return n

    cdef int _off_fresh(self) except -1:
        # counters only (rates read them every 2 s); the listing reads the timers itself
        if self.st.off_on and _time.monotonic() - self._off_read_at >= OFFLOAD_READ_EVERY:
            with nogil:
                offload_read_counters(&self.st)
            self._off_read_at = _time.monotonic()
        return 0

    def offload_stats(self):
        """{"enabled", "installed", "removed", "refused", "errors", "frames", "max_entries",
        "memory"}: conns put in and taken out of the table, installs refused (no free slot
        within the probe window or no free rewrite entry: the conn stays the engine's),
        failed counter reads, frames the program forwarded (as read), the table's slots and
        its bytes."""
        return {"enabled": bool(self.st.off_on), "installed": self.st.off_installed,
                "removed": self.st.off_removed, "refused": self.st.off_full,
                "errors": self.st.off_errors, "frames": self.st.off_frames,
                "max_entries": self.offload_max_entries, "memory": self.offload_memory}

    def offload_conns(self):
        """(caddr, cport, vport) of the entries in the map now, for tests and diagnostics."""
        cdef uint32_t i
        cdef fl_conn *c
        out = []
        for i in range(self.st.used_end):
            c = &self.st.conns[i]
            if c.vip != 0 and (c.flags & CF_OFFLOADED):
                out.append((_ip_text(c.caddr[3]), c.cport, c.vport))
        return out

    def offload_test_run(self, frame, svc_key, rs_key=None, prog_path=None,
                         int ingress_ifindex=1, int repeat=1, timing=False):
        """Run the XDP program (BPF_PROG_TEST_RUN, nothing attached) on `frame` with this
        engine's map and the steering keys given (bytes of fl_steer_key). Returns (action,
        bytes it leaves): what the kernel would send; with `timing`, (action, bytes, ns per
        run over `repeat` runs) as the kernel measured it."""
        cdef bytes data = bytes(frame)
        cdef bytes path = (prog_path or _steer_obj_path()).encode()
        cdef bytes sk = bytes(svc_key)
        cdef bytes rk = bytes(rs_key) if rs_key is not None else None
        cdef uint32_t outlen = len(data) + 512, action = 0, duration = 0
        cdef int r
        out = bytearray(outlen)
        if not self.st.off_on:
            raise ValueError("offload is off")
        r = fl_off_test_run(path, self.st.off_fd, self.st.off_max, <const char *>sk,
                            <const char *>rk if rk is not None else NULL,
                            <const char *>data, len(data), <char *>out, &outlen, &action,
                            ingress_ifindex, repeat, &duration)
        if r:
            raise OSError(-r, f"XDP test run: {_os.strerror(-r)} "
                              f"({fl_xdp_last().decode(errors='replace').strip()})")
        if timing:
            return action, bytes(out[:outlen]), duration
        return action, bytes(out[:outlen])
