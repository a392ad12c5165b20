# The XDP offload, engine side: which connections the XDP program (bpf/steer.bpf.c) may
# forward without us, their slots in the shared flow table fl_offload (one per direction: NAT
# has two) and the rewrite entries of fl_off_rw they point at, all written here through mmap
# (we are the only writer), and the read-back of the program's per-(dest, direction) counters
# and per-slot last-seen times into the dests', services' and entries' own, so that stats,
# rates, timers and expiry read as they would without the offload. The engine stays the
# authority: it installs a conn once it is established, takes it out when the state moves or
# the conn ends or changes.

cdef extern from "fl_offload.h" nogil:
    enum:
        FL_OFF_MAGIC
        FL_OFF_PROBE
    ctypedef struct fl_off_slot "struct fl_off_slot":
        uint32_t seq
        uint32_t saddr
        uint32_t daddr
        uint16_t sport
        uint16_t dport
        uint8_t proto
        uint8_t kind
        uint16_t rw
        uint32_t conn
        uint64_t seen
    ctypedef struct fl_off_cfg "struct fl_off_cfg":
        uint32_t magic
        uint32_t mask
        uint64_t seed[2]
        uint32_t rw_id
        uint32_t cnt_id
    ctypedef struct fl_off_rw "struct fl_off_rw":
        uint32_t seq
        uint32_t ifindex
        uint8_t dmac[6]
        uint8_t smac[6]
        uint8_t kind
        uint8_t flags
        uint16_t mtu
        uint32_t addr
        uint32_t local
        uint16_t port
        uint32_t daddr_csum
        uint32_t dport_csum
    uint32_t fl_off_hash(const uint64_t *seed, uint32_t saddr, uint32_t daddr, uint16_t sport,
                         uint16_t dport, uint8_t proto)
    void fl_off_seq_write(void *dst, const void *src, size_t n)
    uint64_t fl_off_read_seen(const fl_off_slot *s)
    int fl_off_maps_create(unsigned entries, unsigned nrw, int *fds)
    void *fl_off_mmap(int fd, size_t len)
    void fl_off_munmap(void *p, size_t len)
    uint32_t fl_off_map_id(int fd)
    int fl_off_cnt_read(int fd, uint32_t idx, uint64_t *pkts, uint64_t *bytes)
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
    OFF_RW_MAX = 65536      # rewrite entries (a slot's index is 16 bits; 0 is never used)


cdef struct fl_off_rwkey:
    # what makes two conns' direction share a rewrite entry: everything the rewrite depends
    # on except the dest's MAC, source MAC and interface (those are updated in place)
    uint32_t dest
    uint32_t ifindex        # NAT out: the next hop's interface (else 0)
    uint16_t vip
    uint16_t pfrom          # the port change (0, 0 when the port stays)
    uint16_t pto
    uint8_t dmac[6]         # NAT out: the next hop's MAC (else 0)
    uint8_t kind
    uint8_t pad


cdef struct fl_off_rwent:
    fl_off_rwkey key
    uint32_t ref            # slots pointing at it; 0 = free
    uint32_t next           # chain of off_rw_head
    uint64_t pkts           # its counters as folded so far (the baseline)
    uint64_t bytes


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


cdef inline fl_off_slot *off_slot_at(fl_engine *e, uint32_t g) noexcept nogil:
    # g = bucket * 2 + slot; bucket 0 is the configuration, so g = 0 means none
    return <fl_off_slot *>(e.off_tab + <size_t>g * 32)


cdef inline fl_off_rw *off_rw_at(fl_engine *e, uint32_t i) noexcept nogil:
    return <fl_off_rw *>(e.off_rwtab + <size_t>i * 64)


cdef inline fl_off_rwent *off_rwent(fl_engine *e, uint32_t i) noexcept nogil:
    return &(<fl_off_rwent *>e.off_rwk)[i]


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


cdef void offload_fold_seen(fl_engine *e, uint32_t ci, uint64_t seen) noexcept nogil:
    # Move the entry's timer as the program's last packet of it would have: each packet
    # re-arms it from the state's timeout (the state cannot have moved: the program passes
    # what would move it). 0: the program forwarded nothing of it yet.
    cdef fl_conn *c = &e.conns[ci]
    cdef uint64_t exp
    if seen == 0:
        return
    c.timeout = e.tcp_timeouts[c.state] if c.proto == 6 else e.udp_timeout
    exp = seen + secs(c.timeout)
    if exp > c.expires:
        c.expires = exp


cdef void offload_fold_rw(fl_engine *e, uint32_t i) noexcept nogil:
    # Add what the program forwarded through rewrite entry i since the last read (its
    # per-CPU counters summed: one syscall) to its dest, the dest's service and the engine.
    cdef fl_off_rwent *w = off_rwent(e, i)
    cdef uint64_t p, b, dp, db
    cdef fl_dest *d
    cdef fl_svc *s
    if fl_off_cnt_read(e.off_cnt_fd, i, &p, &b) != 0:
        e.off_errors += 1
        return
    dp = p - w.pkts
    db = b - w.bytes
    if dp == 0:
        return
    w.pkts = p
    w.bytes = b
    e.counters[C_RX] += dp
    e.counters[C_TX] += dp
    e.off_frames += dp
    if w.key.dest == 0 or w.key.dest >= e.ndests:
        return
    d = &e.dests[w.key.dest]
    s = &e.svcs[d.svc]
    if w.key.kind == FL_OFF_NAT_OUT:
        d.outpkts += dp
        d.outbytes += db
        s.outpkts += dp
        s.outbytes += db
    else:
        d.inpkts += dp
        d.inbytes += db
        s.inpkts += dp
        s.inbytes += db


cdef inline uint32_t off_rwkey_hash(const fl_off_rwkey *k) noexcept nogil:
    cdef uint64_t h = (<uint64_t>k.dest << 8 | k.kind) * <uint64_t>0x9E3779B97F4A7C15
    h ^= (<uint64_t>k.vip << 32 | <uint64_t>k.pfrom << 16 | k.pto) + k.ifindex
    h ^= (<uint64_t>k.dmac[0] << 40 | <uint64_t>k.dmac[1] << 32 | <uint64_t>k.dmac[2] << 24
          | <uint64_t>k.dmac[3] << 16 | <uint64_t>k.dmac[4] << 8 | k.dmac[5])
    h *= <uint64_t>0xC2B2AE3D27D4EB4F
    return <uint32_t>(h >> 32)


cdef uint32_t off_rw_get(fl_engine *e, const fl_off_rwkey *k, fl_off_rw *val) noexcept nogil:
    # The rewrite entry of key k, one more slot using it; a new one is written from val
    # with its counters' baseline taken now (an index used before, by a dest since deleted,
    # must not hand its late counts to the new one). 0: none free.
    cdef uint32_t h = off_rwkey_hash(k) & (e.off_nrw - 1)
    cdef uint32_t i = e.off_rw_head[h]
    cdef fl_off_rwent *w
    while i != 0:
        w = off_rwent(e, i)
        if memcmp(&w.key, k, sizeof(fl_off_rwkey)) == 0:
            w.ref += 1
            return i
        i = w.next
    if e.off_rw_nfree == 0:
        return 0
    e.off_rw_nfree -= 1
    i = e.off_rw_free[e.off_rw_nfree]
    if i >= e.off_rw_hi:
        e.off_rw_hi = i + 1
    w = off_rwent(e, i)
    memcpy(&w.key, k, sizeof(fl_off_rwkey))
    w.ref = 1
    w.next = e.off_rw_head[h]
    e.off_rw_head[h] = i
    if fl_off_cnt_read(e.off_cnt_fd, i, &w.pkts, &w.bytes) != 0:
        e.off_errors += 1
    fl_off_seq_write(off_rw_at(e, i), val, 64)
    return i


cdef void off_rw_put(fl_engine *e, uint32_t i) noexcept nogil:
    # One slot less uses entry i; the last one folds its counters and frees it.
    cdef fl_off_rwent *w = off_rwent(e, i)
    cdef uint32_t h, *p
    if i == 0 or w.ref == 0:
        return
    w.ref -= 1
    if w.ref != 0:
        return
    offload_fold_rw(e, i)
    h = off_rwkey_hash(&w.key) & (e.off_nrw - 1)
    p = &e.off_rw_head[h]
    while p[0] != 0 and p[0] != i:
        p = &off_rwent(e, p[0]).next
    if p[0] == i:
        p[0] = w.next
    e.off_rw_free[e.off_rw_nfree] = i
    e.off_rw_nfree += 1


cdef uint32_t off_slot_free(fl_engine *e, const fl_off_slot *k) noexcept nogil:
    # A free slot within the probe window of k's home bucket; 0 when the window is full or
    # holds the same key already (another conn's direction: the first one keeps it).
    cdef uint32_t b = 1 + (fl_off_hash(e.off_seed, k.saddr, k.daddr, k.sport, k.dport,
                                       k.proto) & e.off_mask)
    cdef uint32_t g, got = 0, i
    cdef fl_off_slot *s
    for i in range(2 * FL_OFF_PROBE):
        g = b * 2 + i
        s = off_slot_at(e, g)
        if s.kind == 0:
            if got == 0:
                got = g
        elif (s.saddr == k.saddr and s.daddr == k.daddr and s.sport == k.sport
              and s.dport == k.dport and s.proto == k.proto):
            return 0
    return got


cdef int offload_entries(fl_engine *e, uint32_t ci, fl_off_slot *k, fl_off_rwkey *rk,
                         fl_off_rw *v) noexcept nogil:
    # The slots (keys) of conn ci and their rewrites (k, rk, v [0..1]): 1 (DR, TUN), 2 (NAT:
    # in, then the reply), 0 when a NAT reply has no next hop now (the conn stays ours).
    cdef fl_conn *c = &e.conns[ci]
    cdef fl_dest *d = &e.dests[c.dest]
    cdef fl_vip *vp = &e.vips[c.vip]
    cdef fl_neigh *nb = NULL
    cdef uint16_t rport = 0
    memset(k, 0, 2 * sizeof(fl_off_slot))
    memset(rk, 0, 2 * sizeof(fl_off_rwkey))
    memset(v, 0, 2 * sizeof(fl_off_rw))
    k[0].saddr = be32(c.caddr[3])
    k[0].daddr = be32(vp.addr[3])
    k[0].sport = be16(c.cport)
    k[0].dport = be16(c.vport)
    k[0].proto = c.proto
    k[0].conn = ci
    rk[0].dest = c.dest
    rk[0].vip = c.vip
    v[0].ifindex = d.ifindex
    memcpy(v[0].dmac, d.mac, 6)
    memcpy(v[0].smac, d.smac, 6)
    if c.fwd == FWD_DR:
        k[0].kind = rk[0].kind = v[0].kind = FL_OFF_DR
        return 1
    if c.fwd == FWD_TUN:
        k[0].kind = rk[0].kind = v[0].kind = FL_OFF_TUN
        v[0].flags = FL_OFF_DF if e.pmtu_disc else 0
        v[0].mtu = <uint16_t>e.mtu
        v[0].addr = be32(d.raddr[3])
        v[0].local = be32(e.local_ip)
        return 1
    # NAT: the address change is the dest's (VIP -> RIP, and back), the port change too
    # (vport -> rport; none on a port-0 service or dest): per (dest, direction), in the key
    k[0].kind = rk[0].kind = v[0].kind = FL_OFF_NAT_IN
    rport = conn_rport(e, c)
    v[0].addr = be32(d.raddr[3])
    v[0].daddr_csum = csum_delta4(vp.addr[3], d.raddr[3])
    if rport != c.vport:
        rk[0].pfrom = c.vport
        rk[0].pto = rport
        v[0].port = be16(rport)
        v[0].dport_csum = (~c.vport & 0xFFFF) + rport
    # the reply's next hop as xmit_nat_out_v4 finds it now (in the key: one entry per dest
    # and next hop)
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
    memcpy(rk[1].dmac, v[1].dmac, 6)
    rk[1].ifindex = v[1].ifindex
    rk[1].dest = c.dest
    rk[1].vip = c.vip
    memcpy(v[1].smac, e.local_mac, 6)
    k[1].kind = rk[1].kind = v[1].kind = FL_OFF_NAT_OUT
    v[1].addr = be32(vp.addr[3])
    v[1].daddr_csum = csum_delta4(d.raddr[3], vp.addr[3])
    if rport != c.vport:
        rk[1].pfrom = rport
        rk[1].pto = c.vport
        v[1].port = be16(c.vport)
        v[1].dport_csum = (~rport & 0xFFFF) + c.vport
    k[1].saddr = be32(d.raddr[3])
    k[1].daddr = be32(c.caddr[3])
    k[1].sport = be16(rport)
    k[1].dport = be16(c.cport)
    k[1].proto = c.proto
    k[1].conn = ci
    return 2


cdef void off_slot_clear(fl_engine *e, uint32_t g) noexcept nogil:
    cdef fl_off_slot z
    memset(&z, 0, sizeof(fl_off_slot))
    fl_off_seq_write(off_slot_at(e, g), &z, sizeof(fl_off_slot))


cdef bint offload_install(fl_engine *e, uint32_t ci) noexcept nogil:
    # Write conn ci's slots (memory only, no syscall but a rewrite entry's first use). A
    # NAT conn goes in with both directions or not at all; a full probe window or no free
    # rewrite entry leaves it the engine's (counted in off_full).
    cdef fl_off_slot k[2]
    cdef fl_off_rwkey rk[2]
    cdef fl_off_rw v[2]
    cdef uint32_t g[2]
    cdef int n, j
    n = offload_entries(e, ci, k, rk, v)
    if n == 0:
        return False
    for j in range(n):
        g[j] = off_slot_free(e, &k[j])
        if g[j] != 0:
            k[j].rw = <uint16_t>off_rw_get(e, &rk[j], &v[j])
            if k[j].rw == 0:
                g[j] = 0
        if g[j] == 0:
            if j == 1:
                off_slot_clear(e, g[0])
                off_rw_put(e, k[0].rw)
                e.off_slot[<size_t>ci * 2] = 0
            e.off_full += 1
            return False
        fl_off_seq_write(off_slot_at(e, g[j]), &k[j], sizeof(fl_off_slot))
        e.off_slot[<size_t>ci * 2 + j] = g[j]
    e.conns[ci].flags |= CF_OFFLOADED
    e.off_installed += 1
    return True


cdef void offload_flush(fl_engine *e) noexcept nogil:
    # The conns of this batch that became ready. Each is looked at again (a later packet of
    # the batch may have moved it on, or freed it).
    cdef uint32_t i, ci
    cdef fl_conn *c
    for i in range(e.off_nq):
        ci = e.off_q[i]
        c = &e.conns[ci]
        if c.vip == 0 or (c.flags & CF_OFFLOADED) or not offload_ready(e, c):
            continue
        offload_install(e, ci)
    e.off_nq = 0


cdef void offload_remove(fl_engine *e, uint32_t ci) noexcept nogil:
    # Take conn ci's slots out: its timer from their last-seen times, the rewrite entries
    # released (the last user of one folds its counters).
    cdef fl_conn *c = &e.conns[ci]
    cdef uint32_t j, g
    cdef uint16_t rw
    cdef fl_off_slot *s
    if not (c.flags & CF_OFFLOADED):
        return
    c.flags &= ~CF_OFFLOADED
    for j in range(2):
        g = e.off_slot[<size_t>ci * 2 + j]
        if g == 0:
            continue
        e.off_slot[<size_t>ci * 2 + j] = 0
        s = off_slot_at(e, g)
        offload_fold_seen(e, ci, fl_off_read_seen(s))
        rw = s.rw
        off_slot_clear(e, g)
        off_rw_put(e, rw)
    e.off_removed += 1


cdef bint offload_refresh(fl_engine *e, uint32_t ci, uint64_t now) noexcept nogil:
    # The timer of an offloaded conn ran out by our clock: read its slots' last-seen times
    # first (the program may have forwarded its packets since). True: it lives on.
    cdef fl_conn *c = &e.conns[ci]
    cdef uint32_t j, g
    for j in range(2):
        g = e.off_slot[<size_t>ci * 2 + j]
        if g != 0:
            offload_fold_seen(e, ci, fl_off_read_seen(off_slot_at(e, g)))
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


cdef void offload_read_counters(fl_engine *e) noexcept nogil:
    # Fold the counters of every rewrite entry in use: a syscall each, one per dest and
    # direction, not per conn.
    cdef uint32_t i
    for i in range(1, e.off_rw_hi):
        if off_rwent(e, i).ref != 0:
            offload_fold_rw(e, i)


cdef uint64_t offload_read_seen(fl_engine *e) noexcept nogil:
    # Every offloaded conn's timer from its slots' last-seen times (the mmapped table: no
    # syscall, a walk of the conns). Returns the conns read.
    cdef uint32_t i, j, g
    cdef uint64_t n = 0
    cdef fl_conn *c
    for i in range(e.used_end):
        c = &e.conns[i]
        if c.vip == 0 or not (c.flags & CF_OFFLOADED):
            continue
        for j in range(2):
            g = e.off_slot[<size_t>i * 2 + j]
            if g != 0:
                offload_fold_seen(e, i, fl_off_read_seen(off_slot_at(e, g)))
        n += 1
    return n


cdef void offload_dest_moved(fl_engine *e, uint32_t dest) noexcept nogil:
    # Dest `dest` has a new MAC, source MAC or interface: its conns' rewrite entries (those
    # that send to it: DR, TUN, NAT in) take them in place, under their seqlock; the conns
    # stay in the table.
    cdef uint32_t i
    cdef fl_off_rwent *w
    cdef fl_off_rw v
    cdef fl_dest *d = &e.dests[dest]
    for i in range(1, e.off_rw_hi):
        w = off_rwent(e, i)
        if w.ref == 0 or w.key.dest != dest or w.key.kind == FL_OFF_NAT_OUT:
            continue
        memcpy(&v, off_rw_at(e, i), sizeof(fl_off_rw))
        memcpy(v.dmac, d.mac, 6)
        memcpy(v.smac, d.smac, 6)
        v.ifindex = d.ifindex
        fl_off_seq_write(off_rw_at(e, i), &v, sizeof(fl_off_rw))


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


cdef void offload_free(fl_engine *e) noexcept nogil:
    # The engine's side of the maps (after offload_disable took the conns out, or at
    # dealloc): unmap, close, free.
    fl_off_munmap(e.off_tab, e.off_tab_len)
    fl_off_munmap(e.off_rwtab, e.off_rw_len)
    e.off_tab = NULL
    e.off_rwtab = NULL
    free(e.off_slot)
    free(e.off_rwk)
    free(e.off_rw_head)
    free(e.off_rw_free)
    e.off_slot = NULL
    e.off_rwk = NULL
    e.off_rw_head = NULL
    e.off_rw_free = NULL


# Counters read the program's counters back themselves when the last read is older than
# this (s): what they show is then at most this stale. A read costs a syscall per rewrite
# entry in use (per dest and direction); the connection listing reads the slots' last-seen
# times each time (a walk of the conns in memory).
OFFLOAD_READ_EVERY = 1.0
