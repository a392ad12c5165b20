# Firewall-mark services. Frames reach the engine before netfilter could mark them, so the
# engine marks them itself from the configured match rules (first match wins, as a chain of
# `meta mark set` rules that each end the chain). A mark service is interned as the VIP
# (proto 0, address 0.0.0.<mark>, port 0): its persistence templates hang off that VIP, as
# IPVS keys them by the mark. Its conns are keyed by what the client sent to: the VIP
# (proto, daddr, 0), interned here in C the first time a marked frame goes to that address,
# with the client's destination port in the conn (as a port-0 VIP's conns keep it).
# IPv6: a rule matches frames of its own family only, and a v6 frame's mark goes to the
# mark's v6 service, interned as (0, [mark, 0, 0, 0], 0): the address IPVS gives a v6
# mark's persistence templates (the mark in the first word), never a v4 one's [0, 0, 0, m].

cdef enum:
    SVC_F_FWMARK = 2        # fl_svc.flags: a firewall-mark service (vaddr: mark_key)


cdef inline uint32_t mark_match(fl_engine *e, fl_pkt *p) noexcept nogil:
    # The mark the rules give this frame, 0 = none.
    cdef uint32_t i
    cdef fl_markrule *r
    for i in range(e.nmarks):
        r = &e.marks[i]
        if r.v6 != p.v6 or not (r.proto == 0 or r.proto == p.proto) \
                or p.dport < r.port_lo or p.dport > r.port_hi:
            continue
        if r.v6:
            if ((p.daddr[0] & r.mask6[0]) == r.addr6[0] and (p.daddr[1] & r.mask6[1]) == r.addr6[1]
                    and (p.daddr[2] & r.mask6[2]) == r.addr6[2]
                    and (p.daddr[3] & r.mask6[3]) == r.addr6[3]):
                return r.mark
        elif (p.daddr[3] & r.mask) == r.addr:
            return r.mark
    return 0


cdef inline void mark_key(uint32_t mark, uint8_t v6, uint32_t *a) noexcept nogil:
    # the address a mark's service is interned at: [0, 0, 0, m] (v4), [m, 0, 0, 0] (v6)
    a[0] = mark if v6 else 0
    a[1] = 0
    a[2] = 0
    a[3] = 0 if v6 else mark


cdef inline uint16_t mark_svc_of(fl_engine *e, uint32_t mark, uint8_t v6) noexcept nogil:
    # The service on `mark` of family v6/v4, 0 = none (its VIP is interned when the
    # service is set).
    cdef uint32_t a[4]
    cdef uint16_t v
    mark_key(mark, v6, a)
    v = vip_find(e, a, 0, 0)
    return e.vips[v].svc if v != 0 else 0


cdef uint16_t vip_intern_c(fl_engine *e, const uint32_t *addr, uint16_t port,
                           uint8_t proto) noexcept nogil:
    # Engine._vip_intern without Python: 0 when every VIP slot is taken (VIPs are never
    # given back, so a mark over a wide prefix can use up MAX_VIPS addresses at most).
    cdef uint16_t v = vip_find(e, addr, port, proto)
    cdef uint32_t s
    if v != 0:
        return v
    if e.nvips >= MAX_VIPS:
        return 0
    v = <uint16_t>e.nvips
    e.nvips += 1
    memcpy(e.vips[v].addr, addr, 16)
    e.vips[v].port = port
    e.vips[v].proto = proto
    e.vips[v].used = 1
    e.vips[v].svc = 0
    e.vips[v].off = 0
    s = vip_slot(addr, port, proto)
    while e.vip_index[s] != 0:
        s = (s + 1) & (VIP_INDEX_SIZE - 1)
    e.vip_index[s] = v
    return v


cdef uint16_t mark_vip(fl_engine *e, fl_pkt *p) noexcept nogil:
    # A frame no (proto, addr, port) VIP took: the VIP its mark's conns are keyed by, 0 =
    # no mark. Interned only while the mark has a service; conns of a service deleted
    # since still find their VIP.
    cdef uint32_t m = mark_match(e, p)
    cdef uint16_t v
    if m == 0:
        return 0
    v = vip_find(e, p.daddr, 0, p.proto)
    if v == 0 and mark_svc_of(e, m, p.v6) != 0:
        v = vip_intern_c(e, p.daddr, 0, p.proto)
    return v


cdef inline uint16_t svc_for_new(fl_engine *e, fl_pkt *p) noexcept nogil:
    # ip_vs_service_find's order: the mark's service first, then (proto, addr, port), then
    # port 0 (those two are the VIP's).
    cdef uint32_t m
    cdef uint16_t s
    if e.nmarks != 0:
        m = mark_match(e, p)
        if m != 0:
            s = mark_svc_of(e, m, p.v6)
            if s != 0:
                return s
    return e.vips[p.vip].svc
