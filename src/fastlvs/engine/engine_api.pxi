# The Engine API: cdef class Engine, which owns the engine state and the frame slots, and the
# control plane's calls on it (services, dests, hash tables, neighbours, timeouts, the scheduler
# callback, frames from Python, timers, counters and listings). Nothing here runs per packet
# except the batch entry run_frames and its scheduler callback.

cdef _addr_words(value, uint32_t *out):
    ip = _ipaddress.ip_address(value)
    if ip.version != 4:
        raise ValueError(f"only IPv4 is forwarded for now: {value!r}")
    out[0] = 0
    out[1] = 0
    out[2] = 0
    out[3] = int(ip)


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
        proto = {"tcp": 6, "udp": 17}.get(proto.lower(), proto)
    if proto not in (6, 17):
        raise ValueError(f"protocol must be 6 (tcp) or 17 (udp), got {proto!r}")
    return proto


def _ip_text(uint32_t v):
    # dotted quad from the integer: the connection listing makes three per entry, and
    # going through ipaddress cost more than everything else in it
    return f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}"


cdef enum:
    SLOT_HEADROOM = 128
    SLOT_SIZE = 128 + 9216 + 64


cdef class Engine:
    """One data-plane instance: conn table, services, dests, counters.

    Engine(capacity=1<<20, batch=64, local_ip="", local_mac="", mtu=1500). `capacity`
    entries (conns + persistence templates) are allocated once; the table never grows.
    All configuration methods are control-plane calls, never made per packet.
    """
    cdef fl_engine st
    cdef fl_frame *frames
    cdef uint8_t *slots
    cdef uint8_t *saved
    cdef uint32_t *saved_len
    cdef size_t *saved_off
    cdef int nloaded
    cdef readonly int batch
    cdef object callback
    cdef object error
    cdef readonly uint32_t new_flow_src   # last source process_loaded(new_flows) wrote

    def __cinit__(self, capacity=1 << 20, batch=64, local_ip="", local_mac="", mtu=1500):
        cdef uint32_t cap = capacity
        cdef uint32_t i
        cdef uint32_t bits = 4
        if capacity < 1 or capacity > 0xFFFFFFF0:
            raise ValueError(f"capacity must be 1..{0xFFFFFFF0}, got {capacity}")
        if batch < 1 or batch > MAX_BATCH:
            raise ValueError(f"batch must be 1..{MAX_BATCH}, got {batch}")
        if mtu < 68 or mtu > 65535:
            raise ValueError(f"mtu must be 68..65535, got {mtu}")
        memset(&self.st, 0, sizeof(fl_engine))
        while (<uint64_t>1 << bits) < cap:
            bits += 1
        self.st.capacity = cap
        self.st.bucket_bits = bits
        self.st.bucket_mask = (1u << bits) - 1 if bits < 32 else 0xFFFFFFFF
        self.st.conns = <fl_conn *>fl_alloc_table(<size_t>cap * sizeof(fl_conn))
        self.st.buckets = <uint32_t *>fl_alloc_table((<size_t>1 << bits) * sizeof(uint32_t))
        self.st.svcs = <fl_svc *>calloc(MAX_SERVICES, sizeof(fl_svc))
        self.st.vips = <fl_vip *>calloc(MAX_VIPS, sizeof(fl_vip))
        self.st.vip_index = <uint16_t *>calloc(VIP_INDEX_SIZE, sizeof(uint16_t))
        self.st.neigh = <fl_neigh *>calloc(NEIGH_SIZE, sizeof(fl_neigh))
        self.st.ndests = 64
        self.st.dests = <fl_dest *>calloc(self.st.ndests, sizeof(fl_dest))
        self.frames = <fl_frame *>calloc(MAX_BATCH, sizeof(fl_frame))
        self.slots = <uint8_t *>malloc(<size_t>MAX_BATCH * SLOT_SIZE)
        if (self.st.conns == NULL or self.st.buckets == NULL or self.st.svcs == NULL
                or self.st.vips == NULL or self.st.vip_index == NULL or self.st.neigh == NULL
                or self.st.dests == NULL or self.frames == NULL or self.slots == NULL):
            raise MemoryError("cannot allocate the engine's tables")
        # every entry starts on the free list, lowest index first
        for i in range(cap):
            self.st.conns[i].next = i + 2 if i + 1 < cap else 0
        self.st.free_head = 1
        self.st.seed = int.from_bytes(_os.urandom(8), "little")
        self.st.sweep_budget = 64
        self.st.mtu = mtu
        self.st.nvips = 1
        for i in range(TCP_S_LAST + 1):
            self.st.tcp_timeouts[i] = TCP_DEFAULT_TIMEOUTS[i]
        self.st.udp_timeout = 300
        self.batch = batch
        self.callback = None
        self.error = None
        self.new_flow_src = 0x0B000001
        if local_ip:
            self.st.local_ip = int(_ipaddress.IPv4Address(local_ip))
        _set_mac(self.st.local_mac, local_mac)

    def __dealloc__(self):
        cdef int i
        if self.st.svcs != NULL:
            for i in range(MAX_SERVICES):
                free(self.st.svcs[i].table)
        free(self.st.conns)
        free(self.st.buckets)
        free(self.st.svcs)
        free(self.st.vips)
        free(self.st.vip_index)
        free(self.st.neigh)
        free(self.st.dests)
        free(self.frames)
        free(self.slots)
        free(self.saved)
        free(self.saved_len)
        free(self.saved_off)

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def entry_size(self):
        """Bytes per connection entry (the bucket array adds 4 bytes per power-of-two slot)."""
        return sizeof(fl_conn)

    @property
    def capacity(self):
        return self.st.capacity

    def memory_bytes(self):
        """Bytes allocated for the conn table and its buckets."""
        return (<uint64_t>self.st.capacity * sizeof(fl_conn)
                + (<uint64_t>1 << self.st.bucket_bits) * 4)

    def conn_count(self):
        """Entries in use (conns and persistence templates), expired-but-unswept included."""
        return self.st.conn_count

    # -- local addresses, neighbours, timeouts --------------------------------------------------
    def set_local(self, local_ip=None, local_mac=None, mtu=None):
        """Change the director's own IP (TUN outer source), MAC (source of every frame we
        send) or the MTU towards the real servers (TUN's frag-needed threshold)."""
        if local_ip is not None:
            self.st.local_ip = int(_ipaddress.IPv4Address(local_ip)) if local_ip else 0
        if local_mac is not None:
            _set_mac(self.st.local_mac, local_mac)
        if mtu is not None:
            if mtu < 68 or mtu > 65535:
                raise ValueError(f"mtu must be 68..65535, got {mtu}")
            self.st.mtu = mtu

    def set_neighbor(self, ip, mac, ifindex=0):
        """Next-hop MAC (and interface) for NAT replies to client `ip`; setting it again
        replaces it. Clients without an entry go to the gateway MAC."""
        cdef uint32_t a = int(_ipaddress.IPv4Address(ip))
        cdef uint32_t s = (a * <uint32_t>GOLDEN_RATIO_32) >> 20
        cdef int n = 0
        while self.st.neigh[s].used and self.st.neigh[s].ip != a:
            s = (s + 1) & (NEIGH_SIZE - 1)
            n += 1
            if n >= NEIGH_SIZE - 1:
                raise ValueError("neighbour table full")
        self.st.neigh[s].used = 1
        self.st.neigh[s].ip = a
        self.st.neigh[s].ifindex = ifindex
        _set_mac(self.st.neigh[s].mac, mac)

    def set_gateway_mac(self, mac, ifindex=0):
        """Next-hop MAC for NAT replies to clients without a neighbour entry (None: none;
        such replies are then dropped and counted as no_route)."""
        if mac is None:
            self.st.has_gw = 0
            return
        _set_mac(self.st.gw_mac, mac)
        self.st.gw_ifindex = ifindex
        self.st.has_gw = 1

    def set_learn_ifindex(self, int ifindex):
        """NAT: when a new connection opens, remember its client's source MAC (the client,
        or its router) as the next hop of the replies, sent out of `ifindex`, unless the
        client already has a neighbour entry. 0 (the default) turns learning off."""
        self.st.learn_ifindex = ifindex

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
                    netmask=None, sched=0, sched_flags=0):
        """Add or edit service `svc_id` (1..65535) = proto (6|17|"tcp"|"udp") vaddr:vport.

        persist_timeout > 0 makes it persistent (-p) with client netmask `netmask` (-M:
        dotted mask or prefix length; default /32). sched: 0 = Python callback, 1 sh, 2 dh,
        3 mh (the table comes with set_hash_table); sched_flags bit0 fallback, bit1 port.
        Editing may move the service to another address: conns of the old one live on.
        """
        cdef uint32_t a[4]
        cdef fl_svc *s
        cdef uint16_t v
        if svc_id < 1 or svc_id >= MAX_SERVICES:
            raise ValueError(f"svc_id must be 1..{MAX_SERVICES - 1}, got {svc_id}")
        if vport < 0 or vport > 65535:
            raise ValueError(f"vport out of range: {vport}")
        if persist_timeout < 0 or persist_timeout > 0xFFFFFFFF:
            raise ValueError(f"persist_timeout out of range: {persist_timeout}")
        p = _proto_num(proto)
        if isinstance(sched, str):
            sched = SCHED_KINDS[sched]
        if sched not in (0, 1, 2, 3):
            raise ValueError(f"sched must be 0..3, got {sched}")
        if netmask is None:
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
        self.st.vips[v].svc = svc_id

    def del_service(self, int svc_id):
        """Remove a service and (like IPVS) all its dests; their conns continue until they
        expire. Removing an absent service is a no-op."""
        cdef fl_svc *s
        cdef uint32_t d
        if svc_id < 1 or svc_id >= MAX_SERVICES or not self.st.svcs[svc_id].in_use:
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

    def set_hash_table(self, int svc_id, table, kind, int flags=0):
        """Hand the service a sh/dh/mh bucket table of dest ids (0 = empty bucket) so new
        flows are scheduled in C. kind: "sh"|"dh"|"mh" or 1|2|3; flags bit0 fallback,
        bit1 port. table=None returns the service to the Python callback."""
        cdef fl_svc *s
        cdef uint32_t *t
        cdef uint32_t i, n
        if svc_id < 1 or svc_id >= MAX_SERVICES or not self.st.svcs[svc_id].in_use:
            raise ValueError(f"no service {svc_id}")
        s = &self.st.svcs[svc_id]
        if table is None:
            free(s.table)
            s.table = NULL
            s.table_len = 0
            s.sched = SCHED_CALLBACK
            return
        if isinstance(kind, str):
            kind = SCHED_KINDS[kind]
        if kind not in (1, 2, 3):
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
                 int ifindex=0, weight=1, u_threshold=0, l_threshold=0, src_mac=None):
        """Add or edit dest `dest_id` (1..2**24) of service `svc_id`.

        Editing a live dest changes fwd/mac/ifindex/weight/thresholds in place (existing
        conns keep the forwarding method they were made with); setting u_threshold to 0
        or raising it clears the overload flag (__ip_vs_update_dest). A deleted dest still
        referenced by conns comes back when re-added with the same service and address
        (IPVS's trash); re-using its id for anything else raises ValueError until its
        conns have expired.
        """
        cdef fl_dest *d
        cdef uint32_t a[4]
        if dest_id < 1 or dest_id > (1 << 24):
            raise ValueError(f"dest_id must be 1..{1 << 24}, got {dest_id}")
        if svc_id < 1 or svc_id >= MAX_SERVICES or not self.st.svcs[svc_id].in_use:
            raise ValueError(f"no service {svc_id}")
        if rport < 0 or rport > 65535:
            raise ValueError(f"rport out of range: {rport}")
        if isinstance(fwd, str):
            if fwd.lower() not in FWD_NAMES:
                raise ValueError(f"fwd must be dr, nat or tun, got {fwd!r}")
            fwd = FWD_NAMES[fwd.lower()]
        if fwd not in (FWD_DR, FWD_NAT, FWD_TUN):
            raise ValueError(f"fwd must be 1 (dr), 2 (nat) or 3 (tun), got {fwd!r}")
        if weight < 0 or weight > 0x7FFFFFFF:
            raise ValueError(f"weight out of range: {weight}")
        if not (0 <= u_threshold <= 0xFFFFFFFF and 0 <= l_threshold <= 0xFFFFFFFF):
            raise ValueError("thresholds must be 0..2**32-1")
        _mac_bytes(mac)
        _addr_words(raddr, a)
        self._dest_grow(dest_id)
        d = &self.st.dests[dest_id]
        same = (d.svc == svc_id and d.rport == rport and addr_eq(d.raddr, a))
        if d.flags & DF_IN_USE:
            if not same and (d.flags & DF_AVAILABLE or d.refcnt != 0):
                raise ValueError(
                    f"dest id {dest_id} is in use by {_ip_text(d.raddr[3])}:{d.rport} of "
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
        if u_threshold == 0 or u_threshold > d.u_threshold:
            d.flags &= ~DF_OVERLOAD
        d.u_threshold = u_threshold
        d.l_threshold = l_threshold

    def del_dest(self, int dest_id):
        """Unlink a dest: never chosen again, its conns keep being forwarded until they
        expire, its id stays reserved while they exist. Removing an absent dest is a no-op."""
        cdef fl_dest *d
        if dest_id < 1 or <uint32_t>dest_id >= self.st.ndests:
            return
        d = &self.st.dests[dest_id]
        if not (d.flags & DF_IN_USE):
            return
        d.flags &= ~DF_AVAILABLE
        if d.refcnt == 0:
            memset(d, 0, sizeof(fl_dest))

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
            flows.append((4, p.saddr[3], p.sport, p.daddr[3], p.dport,
                          "tcp" if p.proto == 6 else "udp"))
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
                    out.append((start + j, f.out_ifindex,
                                (f.data + f.out_adj)[:f.out_len]))
            start += n
            if self.error is not None:
                break
        self._raise_pending()
        return out

    def process_verdicts(self, frames, timestamps=None):
        """Like process() but returns one (verdict, reason, out_ifindex, bytes|None) per frame:
        verdict "tx" | "drop" | "pass", reason the counter name that decided a drop/pass."""
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
                data = (f.data + f.out_adj)[:f.out_len] if f.verdict == VERDICT_TX else None
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
            f.ts_ns = ts if single else ts[j]
            f.len = view.shape[0] if view.shape[0] <= SLOT_SIZE - SLOT_HEADROOM else 0
            if f.len:
                memcpy(f.data, &view[0], f.len)
        return 0

    # -- benchmark helpers ------------------------------------------------------------------------
    def load_batch(self, frames):
        """Keep copies of `frames` (any count) in engine memory for process_loaded() and
        baseline_loaded(), which run them in batches of `batch`."""
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

    cdef void _restore(self, int start, int n, uint64_t now_ns) noexcept nogil:
        cdef int j
        cdef fl_frame *f
        for j in range(n):
            f = &self.frames[j]
            f.data = self.slots + <size_t>j * SLOT_SIZE + SLOT_HEADROOM
            f.headroom = SLOT_HEADROOM
            f.len = self.saved_len[start + j]
            f.ts_ns = now_ns
            memcpy(f.data, self.saved + self.saved_off[start + j], f.len)

    def process_loaded(self, uint64_t now_ns, bint new_flows=False):
        """Restore the loaded frames (memcpy) batch by batch and run them; returns how many
        were sent. new_flows=True gives every frame a fresh IPv4 source address first (valid
        header checksum; the next one is new_flow_src + 1), so each run opens new conns."""
        cdef int j, n, start = 0, tx = 0
        cdef uint8_t *ip
        cdef uint32_t l2
        while start < self.nloaded:
            n = min(self.batch, self.nloaded - start)
            self._restore(start, n, now_ns)
            if new_flows:
                for j in range(n):
                    l2 = 18 if rd16(self.frames[j].data + 12) == 0x8100 else 14
                    ip = self.frames[j].data + l2
                    self.new_flow_src += 1
                    wr32(ip + 12, self.new_flow_src)
                    wr16(ip + 10, 0)
                    wr16(ip + 10, csum_of(ip, (ip[0] & 0x0F) * 4))
            self._run(n)
            for j in range(n):
                if self.frames[j].verdict == VERDICT_TX:
                    tx += 1
            start += n
            if self.error is not None:
                break
        self._raise_pending()
        return tx

    def baseline_loaded(self):
        """The same restores plus a minimal header touch per frame: the benchmarks' yardstick."""
        cdef int start = 0, n
        with nogil:
            while start < self.nloaded:
                n = self.batch if self.nloaded - start > self.batch else self.nloaded - start
                self._restore(start, n, 0)
                baseline_touch(&self.st, self.frames, n)
                start += n
        return self.nloaded

    # -- timers ---------------------------------------------------------------------------------
    def run_timers(self, now_ns=None, budget=None):
        """Expire entries whose timeout passed by `now_ns` (default: the latest frame time),
        inspecting `budget` entries from the sweep cursor (default: the whole table).
        Returns the number freed."""
        cdef uint64_t now = self.st.now if now_ns is None else now_ns
        cdef uint32_t b = self.st.capacity if budget is None else budget
        cdef uint32_t freed
        if now > self.st.now:
            self.st.now = now
        with nogil:
            freed = conn_sweep(&self.st, now, b)
        return freed

    # -- counters and listings --------------------------------------------------------------------
    def stats(self):
        """Global counters by name (drops by reason, passes, tx, conns created/expired)."""
        return {COUNTER_NAMES[i]: self.st.counters[i] for i in range(C_LAST)}

    def service_stats(self, int svc_id):
        """conns, inpkts, outpkts, inbytes, outbytes of a service (bytes = IP lengths)."""
        cdef fl_svc *s
        if svc_id < 1 or svc_id >= MAX_SERVICES or not self.st.svcs[svc_id].in_use:
            raise KeyError(svc_id)
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
                state = "NONE"
            elif c.proto == 17:
                state = "UDP"
            else:
                state = TCP_STATE_NAMES[c.state]
            exp = (c.expires - now) // NS_PER_S if c.expires > now else 0
            out.append({"proto": _PROTO_TEXT[c.proto], "state": state, "expires": exp,
                        "caddr": _ip_text(c.caddr[3]), "cport": c.cport,
                        "vaddr": _ip_text(v.addr[3]), "vport": v.port,
                        "raddr": _ip_text(d.raddr[3]), "rport": d.rport,
                        "template": tmpl, "fwd": _FWD_TEXT.get(c.fwd, "")})
        return out, (end if end < self.st.used_end else None)
