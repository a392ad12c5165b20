# The XDP offload, engine side: which connections the XDP program (bpf/steer.bpf.c) may
# forward without us, their entries in the shared fl_offload map (one per direction: NAT has
# two), and the read-back of the program's per-entry counters and last-seen times into the
# dests', services' and entries' own, so that stats, rates, timers and expiry read as they
# would without the offload. The engine stays the authority: it installs an entry once the
# connection is established, takes it out when the state moves or the conn ends or changes.

cdef extern from "fl_offload.h" nogil:
    int fl_off_map_create(unsigned key_size, unsigned val_size, unsigned max_entries)
    int fl_off_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *vals,
                            uint32_t *count, int *more)
    int fl_off_lookup_delete(int fd, const void *key, void *val)
    int fl_off_lookup(int fd, const void *key, void *val)
    int fl_off_update(int fd, const void *key, const void *val)
    int fl_off_delete(int fd, const void *key)
    int fl_off_update_batch(int fd, const void *keys, const void *vals, uint32_t *count)
    int fl_off_reuse(bpf_object *obj, int fd, unsigned max_entries)
    int fl_off_test_run(const char *path, int fd, unsigned max_entries, const void *svc_key,
                        const void *rs_key, const void *data, uint32_t len, void *out,
                        uint32_t *outlen, uint32_t *action, uint32_t ingress_ifindex,
                        uint32_t repeat, uint32_t *duration)


cdef enum:
    FL_OFF_DR = 1           # == bpf/steer.bpf.c
    FL_OFF_NAT_IN = 2
    FL_OFF_TUN = 3
    FL_OFF_NAT_OUT = 4
    FL_OFF_DF = 1
    OFF_READ_BATCH = 8192   # entries per bpf_map_lookup_batch call (heap buffers)


cdef struct fl_off_key:
    # == struct fl_off_key in bpf/steer.bpf.c: addresses and ports in network order
    uint32_t saddr
    uint32_t daddr
    uint16_t sport
    uint16_t dport
    uint8_t proto
    uint8_t pad[3]


cdef struct fl_off_val:
    # == struct fl_off_val in bpf/steer.bpf.c
    uint64_t pkts
    uint64_t bytes
    uint64_t seen
    uint32_t conn
    uint32_t ifindex
    uint8_t dmac[6]
    uint8_t smac[6]
    uint8_t kind
    uint8_t flags
    uint16_t mtu
    uint32_t addr
    uint32_t local
    uint16_t port
    uint16_t pad
    uint32_t daddr_csum
    uint32_t dport_csum


cdef inline uint32_t be32(uint32_t v) noexcept nogil:
    # host-order word -> the same bytes as the packet carries them
    cdef uint32_t r
    wr32(<uint8_t *>&r, v)
    return r


cdef inline uint16_t be16(uint16_t v) noexcept nogil:
    cdef uint16_t r
    wr16(<uint8_t *>&r, v)
    return r


cdef inline uint32_t csum_delta4(uint32_t old, uint32_t new) noexcept nogil:
    # what csum_replace4 adds to ~HC, unfolded: the program adds the same integers
    return (~(old >> 16) & 0xFFFF) + (~old & 0xFFFF) + (new >> 16) + (new & 0xFFFF)


cdef inline void off_key_in(fl_engine *e, fl_conn *c, fl_off_key *k) noexcept nogil:
    memset(k, 0, sizeof(fl_off_key))
    k.saddr = be32(c.caddr[3])
    k.daddr = be32(e.vips[c.vip].addr[3])
    k.sport = be16(c.cport)
    k.dport = be16(c.vport)
    k.proto = c.proto


cdef inline void off_key_out(fl_engine *e, fl_conn *c, fl_off_key *k) noexcept nogil:
    memset(k, 0, sizeof(fl_off_key))
    k.saddr = be32(e.dests[c.dest].raddr[3])
    k.daddr = be32(c.caddr[3])
    k.sport = be16(conn_rport(e, c))
    k.dport = be16(c.cport)
    k.proto = c.proto


cdef inline bint offload_ready(fl_engine *e, fl_conn *c) noexcept nogil:
    # Forwardable without us: a live conn to an available dest of a served VIP, TCP
    # established, and for NAT once a reply came through (both directions known).
    cdef fl_dest *d
    if c.flags & CF_TEMPLATE or c.dest == 0 or c.vip == 0 or c.proto == 0:
        return False
    # the program keys IPv4 TCP/UDP by address and port: v6 conns, SCTP and firewall-mark
    # services (matched by rules, not by their VIP) stay the engine's
    if c.proto != 6 and c.proto != 17:
        return False
    if c.caddr[0] | c.caddr[1] | c.caddr[2]:
        return False
    if e.svcs[e.vips[c.vip].svc].flags & (SVC_F_ONEPACKET | SVC_F_FWMARK):
        return False
    d = &e.dests[c.dest]
    if not (d.flags & DF_AVAILABLE) or e.vips[c.vip].off:
        return False
    if c.proto == 6 and c.state != TCP_S_ESTABLISHED:
        return False
    if c.fwd == FWD_NAT:
        return (c.flags & CF_REPLIED) != 0
    if c.fwd == FWD_TUN:
        # the program makes IPIP only: GUE and GRE dests' packets stay the engine's
        return e.local_ip != 0 and d.tun_type == TUN_IPIP
    return c.fwd == FWD_DR


cdef void offload_fold(fl_engine *e, uint32_t ci, fl_off_val *v) noexcept nogil:
    # Add what the program forwarded since the last read to the dest, the service and the
    # engine's counters, and move the entry's timer as its packets would have.
    cdef fl_conn *c = &e.conns[ci]
    cdef bint out = v.kind == FL_OFF_NAT_OUT
    cdef uint64_t *seen = &e.off_seen[<uint64_t>ci * 4 + (2 if out else 0)]
    cdef uint64_t dp = v.pkts - seen[0]
    cdef uint64_t db = v.bytes - seen[1]
    cdef fl_dest *d
    cdef fl_svc *s
    cdef uint64_t exp
    if dp == 0 or v.pkts < seen[0]:
        return
    seen[0] = v.pkts
    seen[1] = v.bytes
    e.counters[C_RX] += dp
    e.counters[C_TX] += dp
    e.off_frames += dp
    if c.dest != 0:
        d = &e.dests[c.dest]
        s = &e.svcs[d.svc]
        if out:
            d.outpkts += dp
            d.outbytes += db
            s.outpkts += dp
            s.outbytes += db
        else:
            d.inpkts += dp
            d.inbytes += db
            s.inpkts += dp
            s.inbytes += db
    # each packet re-arms the timer from the state's timeout (the state cannot have moved:
    # the program passes what would move it)
    c.timeout = e.tcp_timeouts[c.state] if c.proto == 6 else e.udp_timeout
    exp = v.seen + secs(c.timeout)
    if exp > c.expires:
        c.expires = exp


cdef int offload_entries(fl_engine *e, uint32_t ci, fl_off_key *k, fl_off_val *v) noexcept nogil:
    # The map entries of conn ci (k[0..1], v[0..1]): 1 (DR, TUN), 2 (NAT: in, then the
    # reply), 0 when a NAT reply has no next hop now (the conn stays ours).
    cdef fl_conn *c = &e.conns[ci]
    cdef fl_dest *d = &e.dests[c.dest]
    cdef fl_vip *vp = &e.vips[c.vip]
    cdef fl_neigh *nb = NULL
    cdef uint16_t rport = 0
    memset(v, 0, sizeof(fl_off_val))
    v.conn = ci
    v.ifindex = d.ifindex
    memcpy(v.dmac, d.mac, 6)
    memcpy(v.smac, d.smac, 6)
    off_key_in(e, c, k)
    if c.fwd == FWD_DR:
        v.kind = FL_OFF_DR
        return 1
    if c.fwd == FWD_TUN:
        v.kind = FL_OFF_TUN
        v.flags = FL_OFF_DF if e.pmtu_disc else 0
        v.mtu = <uint16_t>e.mtu
        v.addr = be32(d.raddr[3])
        v.local = be32(e.local_ip)
        return 1
    v.kind = FL_OFF_NAT_IN
    rport = conn_rport(e, c)
    v.addr = be32(d.raddr[3])
    v.daddr_csum = csum_delta4(vp.addr[3], d.raddr[3])
    if rport != c.vport:
        v.port = be16(rport)
        v.dport_csum = (~c.vport & 0xFFFF) + rport
    # the reply's next hop as xmit_nat_out_v4 finds it now
    memset(&v[1], 0, sizeof(fl_off_val))
    v[1].conn = ci
    if neigh_on_link(e, c.caddr[3]):
        nb = neigh_find(e, c.caddr[3], neigh_tick(e.now))
    if nb != NULL:
        memcpy(v[1].dmac, nb.mac, 6)
        v[1].ifindex = nb.ifindex
    elif e.has_gw:
        memcpy(v[1].dmac, e.gw_mac, 6)
        v[1].ifindex = e.gw_ifindex
    else:
        return 0
    memcpy(v[1].smac, e.local_mac, 6)
    v[1].kind = FL_OFF_NAT_OUT
    v[1].addr = be32(vp.addr[3])
    v[1].daddr_csum = csum_delta4(d.raddr[3], vp.addr[3])
    if rport != c.vport:
        v[1].port = be16(c.vport)
        v[1].dport_csum = (~rport & 0xFFFF) + c.vport
    off_key_out(e, c, &k[1])
    return 2


cdef inline void offload_installed(fl_engine *e, uint32_t ci) noexcept nogil:
    memset(&e.off_seen[<uint64_t>ci * 4], 0, 4 * sizeof(uint64_t))
    e.conns[ci].flags |= CF_OFFLOADED
    e.off_installed += 1


cdef void offload_flush(fl_engine *e) noexcept nogil:
    # The conns of this batch that became ready, in one bpf_map_update_batch: a syscall per
    # batch instead of one per connection. Each is looked at again (a later packet of the
    # batch may have moved it on, or freed it).
    cdef fl_off_key keys[2 * MAX_BATCH]
    cdef fl_off_val vals[2 * MAX_BATCH]
    cdef uint32_t owner[2 * MAX_BATCH]
    cdef uint32_t i, j, ci, n = 0, count
    cdef int got, r
    cdef fl_conn *c
    for i in range(e.off_nq):
        ci = e.off_q[i]
        c = &e.conns[ci]
        if c.vip == 0 or (c.flags & CF_OFFLOADED) or not offload_ready(e, c):
            continue
        got = offload_entries(e, ci, &keys[n], &vals[n])
        for j in range(<uint32_t>got):
            owner[n + j] = ci + 1           # 0: its write failed
        n += <uint32_t>got
    e.off_nq = 0
    if n == 0:
        return
    count = n
    r = fl_off_update_batch(e.off_fd, keys, vals, &count)
    if r != 0:
        # what was not written goes one by one (a full map refuses each: counted)
        e.off_errors += 1
        for i in range(count, n):
            if fl_off_update(e.off_fd, &keys[i], &vals[i]) != 0:
                e.off_errors += 1
                owner[i] = 0
    # a NAT conn is offloaded only with both of its entries in
    i = 0
    while i < n:
        ci = owner[i]
        j = i + 1
        while j < n and vals[j].conn == vals[i].conn:
            if owner[j] == 0:
                ci = 0
            j += 1
        if ci != 0:
            offload_installed(e, ci - 1)
        else:
            for got in range(<int>i, <int>j):
                fl_off_delete(e.off_fd, &keys[got])
        i = j


cdef void offload_remove(fl_engine *e, uint32_t ci) noexcept nogil:
    # Take conn ci's entries out, folding what they counted since the last read.
    cdef fl_conn *c = &e.conns[ci]
    cdef fl_off_key k
    cdef fl_off_val v
    if not (c.flags & CF_OFFLOADED):
        return
    c.flags &= ~CF_OFFLOADED
    off_key_in(e, c, &k)
    if fl_off_lookup_delete(e.off_fd, &k, &v) == 0 and v.conn == ci:
        offload_fold(e, ci, &v)
    if c.fwd == FWD_NAT:
        off_key_out(e, c, &k)
        if fl_off_lookup_delete(e.off_fd, &k, &v) == 0 and v.conn == ci:
            offload_fold(e, ci, &v)
    e.off_removed += 1


cdef bint offload_refresh(fl_engine *e, uint32_t ci, uint64_t now) noexcept nogil:
    # The timer of an offloaded conn ran out by our clock: read its entries first (the
    # program may have forwarded its packets since the last read). True: it lives on.
    cdef fl_conn *c = &e.conns[ci]
    cdef fl_off_key k
    cdef fl_off_val v
    off_key_in(e, c, &k)
    if fl_off_lookup(e.off_fd, &k, &v) == 0 and v.conn == ci:
        offload_fold(e, ci, &v)
    if c.fwd == FWD_NAT:
        off_key_out(e, c, &k)
        if fl_off_lookup(e.off_fd, &k, &v) == 0 and v.conn == ci:
            offload_fold(e, ci, &v)
    return c.expires > now


cdef inline void offload_note(fl_engine *e, fl_conn *c) noexcept nogil:
    # After the engine forwarded a packet of c: install it once it is ready (at the end of
    # the batch, offload_flush), take it out at once when it no longer is (a FIN, an RST
    # moved the state: the program must not forward what follows).
    cdef bint ready = offload_ready(e, c)
    cdef uint32_t ci = <uint32_t>(c - e.conns)
    cdef uint32_t i
    if ready and not (c.flags & CF_OFFLOADED):
        for i in range(e.off_nq):
            if e.off_q[i] == ci:
                return
        if e.off_nq >= MAX_BATCH:
            offload_flush(e)
        e.off_q[e.off_nq] = ci
        e.off_nq += 1
    elif not ready and (c.flags & CF_OFFLOADED):
        offload_remove(e, ci)


cdef uint64_t offload_read(fl_engine *e) noexcept nogil:
    # Fold every entry's counters (bpf_map_lookup_batch, OFF_READ_BATCH at a time: the
    # syscalls are few, the copy and the fold are the cost). Returns the entries read.
    cdef fl_off_key *keys = <fl_off_key *>malloc(OFF_READ_BATCH * sizeof(fl_off_key))
    cdef fl_off_val *vals = <fl_off_val *>malloc(OFF_READ_BATCH * sizeof(fl_off_val))
    cdef fl_off_key token
    cdef uint32_t count, i, ci
    cdef int more = 1, first = 1, r
    cdef uint64_t n = 0
    cdef fl_conn *c
    if keys == NULL or vals == NULL:
        free(keys)
        free(vals)
        e.off_errors += 1
        return 0
    while more:
        count = OFF_READ_BATCH
        r = fl_off_lookup_batch(e.off_fd, NULL if first else &token, &token, keys, vals,
                                &count, &more)
        if r != 0:
            e.off_errors += 1
            break
        first = 0
        for i in range(count):
            ci = vals[i].conn
            if ci >= e.capacity:
                continue
            c = &e.conns[ci]
            if c.vip != 0 and (c.flags & CF_OFFLOADED):
                offload_fold(e, ci, &vals[i])
        n += count
    free(keys)
    free(vals)
    return n


cdef void offload_drop_where(fl_engine *e, uint32_t dest, uint16_t vip, uint32_t caddr,
                             uint8_t fwd) noexcept nogil:
    # Take out the offloaded conns matching every non-zero criterion (all: every one): what
    # they would be forwarded with changed; the next packet the engine sees installs them
    # again if they still qualify.
    cdef uint32_t i
    cdef fl_conn *c
    for i in range(e.used_end):
        c = &e.conns[i]
        if c.vip == 0 or not (c.flags & CF_OFFLOADED):
            continue
        if dest != 0 and c.dest != dest:
            continue
        if vip != 0 and c.vip != vip:
            continue
        if caddr != 0 and c.caddr[3] != caddr:
            continue
        if fwd != 0 and c.fwd != fwd:
            continue
        offload_remove(e, i)


# Listings and counters read the map back themselves when the last read is older than this (s):
# the counters they show are then at most this stale. A whole read costs about 0.5 µs an entry
# (40 ms for 70,000 here), in the daemon's one thread: reading more often would take that
# from forwarding.
OFFLOAD_READ_EVERY = 1.0
