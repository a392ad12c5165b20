# The batch loop, without the GIL: engine_rx_batch parses, classifies and forwards a batch of
# frames in place (known conns, hash-scheduled new flows) and parks the new flows of services
# scheduled in Python; engine_bind_parked binds and forwards them once the scheduler answered.

cdef inline void frame_drop(fl_engine *e, fl_frame *f, int reason) noexcept nogil:
    f.verdict = VERDICT_DROP
    f.reason = <uint8_t>reason
    e.counters[reason] += 1


cdef inline void frame_pass(fl_engine *e, fl_frame *f, int reason) noexcept nogil:
    f.verdict = VERDICT_PASS
    f.reason = <uint8_t>reason
    e.counters[reason] += 1
    e.counters[C_PASS] += 1


cdef bint nat_dest_has(fl_engine *e, uint32_t addr, uint16_t port, uint8_t proto) noexcept nogil:
    # ip_vs_has_real_service: a NAT dest of a service with this address, port and protocol
    # (the address set is looked at first: most packets stop there)
    cdef uint32_t i
    cdef fl_dest *d
    if not addr_set_has(e.frag.rset, e.frag.rmask, addr):
        return False
    for i in range(1, e.ndests):
        d = &e.dests[i]
        if (d.raddr[3] == addr and d.rport == port and d.fwd == FWD_NAT
                and (d.flags & DF_AVAILABLE) and e.svcs[d.svc].proto == proto):
            return True
    return False


cdef bint nat_icmp_send_v4(fl_engine *e, fl_frame *f, fl_pkt *p) noexcept nogil:
    # nat_icmp_send (ip_vs_out): a packet from a NAT dest's address and port that belongs to
    # no conn, unless it is a TCP RST, is dropped and its sender told port unreachable. It
    # is handled after the kernel's ip_forward, so one at TTL 1 is left to the host's, and
    # the quote shows the TTL decremented; one to the director's own address is not
    # forwarded (LOCAL_IN) and is answered from that address. False: not such a packet.
    cdef uint32_t saddr
    cdef int r
    if p.proto == 6 and (p.tcpflags & TH_RST):
        return False
    if not nat_dest_has(e, p.saddr[3], p.sport, p.proto):
        return False
    if e.local_ip != 0 and p.daddr[3] == e.local_ip:
        saddr = e.local_ip
    elif f.data[p.l2len + 8] <= 1:
        return False
    else:
        ttl_dec_v4(f.data + p.l2len)
        saddr = e.local_ip
    if saddr == 0:
        return False
    r = icmp_error_v4(e, f, p, 3, 3, 0, saddr, 576 - 28)
    if r >= 0:
        frame_drop(e, f, r)
    else:
        e.counters[C_NAT_ICMP_SENT] += 1
    return True


cdef inline void conn_forward_in(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c,
                                 uint64_t now) noexcept nogil:
    # ip_vs_in for a known conn: stats, state, transmit, then re-arm the timer.
    cdef fl_dest *d = &e.dests[c.dest]
    cdef fl_svc *s = &e.svcs[d.svc]
    cdef int r
    d.inpkts += 1
    d.inbytes += p.tot_len
    s.inpkts += 1
    s.inbytes += p.tot_len
    if p.proto == 6:
        tcp_set_state(e, c, False, p.tcpflags)
    elif p.proto == IPPROTO_SCTP:
        sctp_set_state(e, c, False, p.tcpflags)
    else:
        c.timeout = e.udp_timeout
    # as IPVS's decrement_ttl: a packet at TTL 1 is answered, not forwarded (its conn
    # stands, counted and stated as any other)
    if fl_unlikely(p.v6):
        r = forward_in_v6(e, f, p, c)
    elif fl_unlikely(f.data[p.l2len + 8] <= 1):
        r = icmp_time_exceeded_v4(e, f, p, p.daddr[3])
    else:
        ttl_dec_v4(f.data + p.l2len)
        r = XMIT[c.fwd](e, f, p, c)
    if r >= 0:
        frame_drop(e, f, r)
    c.expires = now + secs(c.timeout)
    if fl_unlikely(e.sync.meta != NULL):
        sync_in_packet(e, c, now)
    if fl_unlikely(e.off_on):
        offload_note(e, c)


cdef inline void conn_forward_out(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c,
                                  uint64_t now) noexcept nogil:
    # ip_vs_out/handle_response for a NAT reply.
    cdef fl_dest *d = &e.dests[c.dest]
    cdef fl_svc *s = &e.svcs[d.svc]
    cdef int r
    if fl_unlikely(p.v6):
        conn_forward_out_v6(e, f, p, c, now)
        return
    if fl_unlikely(f.data[p.l2len + 8] <= 1):
        # the kernel's ip_forward drops it before IPVS sees it: no stats, no state change;
        # the real server hears from the director's own address
        r = icmp_time_exceeded_v4(e, f, p, e.local_ip)
        if r >= 0:
            frame_drop(e, f, r)
        return
    ttl_dec_v4(f.data + p.l2len)
    d.outpkts += 1
    d.outbytes += p.tot_len
    s.outpkts += 1
    s.outbytes += p.tot_len
    if p.proto == 6:
        tcp_set_state(e, c, True, p.tcpflags)
    elif p.proto == IPPROTO_SCTP:
        sctp_set_state(e, c, True, p.tcpflags)
    else:
        c.timeout = e.udp_timeout
    r = xmit_nat_out_v4(e, f, p, c)
    if r >= 0:
        frame_drop(e, f, r)
    c.expires = now + secs(c.timeout)
    if fl_unlikely(e.sync.meta != NULL):
        sync_out_packet(e, c)
    c.flags |= CF_REPLIED
    if fl_unlikely(e.off_on):
        offload_note(e, c)


cdef inline void persist_net(fl_svc *s, fl_pkt *p, uint32_t *snet) noexcept nogil:
    if fl_unlikely(p.v6):
        persist_net_v6(s.netmask, p.saddr, snet)
        return
    snet[0] = 0
    snet[1] = 0
    snet[2] = 0
    snet[3] = p.saddr[3] & s.netmask


cdef inline bint template_usable(fl_engine *e, uint32_t ti) noexcept nogil:
    # ip_vs_check_template: the template's dest must still be linked to its service, and
    # with expire_quiescent_template also have a weight (overload does not matter). An
    # unusable template is invalidated: it stops matching and lives on only until its
    # timer fires.
    cdef fl_conn *t = &e.conns[ti - 1]
    if (t.dest != 0 and (e.dests[t.dest].flags & DF_AVAILABLE)
            and not (e.expire_quiescent_template and e.dests[t.dest].weight == 0)):
        return True
    t.flags |= CF_INVALID
    return False


cdef inline bint dest_valid_for(fl_engine *e, uint32_t d, uint16_t svc) noexcept nogil:
    return (d != 0 and d < e.ndests and (e.dests[d].flags & DF_AVAILABLE) != 0
            and e.dests[d].svc == svc)


cdef void conn_create_forward(fl_engine *e, fl_frame *f, fl_pkt *p, uint16_t svc_id,
                              uint32_t dest, uint32_t ti, uint64_t now) noexcept nogil:
    # Make the conn (and, for a persistent service without a usable template, the template),
    # count it on dest and service, and forward the packet that opened it.
    cdef fl_svc *s = &e.svcs[svc_id]
    cdef uint32_t snet[4]
    cdef uint32_t ci
    cdef fl_conn *c
    cdef fl_conn *t
    if s.persist_timeout != 0 and ti == 0:
        persist_net(s, p, snet)
        ti = conn_new(e, snet, 0, s.vip, s.proto, dest, CF_TEMPLATE, now)
        if ti == 0:
            frame_drop(e, f, C_TABLE_FULL)
            return
        e.conns[ti - 1].timeout = s.persist_timeout
    ci = conn_new(e, p.saddr, p.sport, p.vip, p.proto, dest, 0, now)
    if ti != 0:
        # ip_vs_conn_put(ct): using the template re-arms its timer
        t = &e.conns[ti - 1]
        t.expires = now + secs(t.timeout)
    if ci == 0:
        frame_drop(e, f, C_TABLE_FULL)
        return
    c = &e.conns[ci - 1]
    c.vport = p.dport
    if ti != 0:
        c.ctl = ti
        e.conns[ti - 1].ctl += 1
    e.dests[dest].conns += 1
    e.svcs[e.dests[dest].svc].conns += 1
    e.counters[C_CONNS_CREATED] += 1
    if e.learn_ifindex != 0 and e.dests[dest].fwd == FWD_NAT:
        if p.v6:
            neigh6_learn(e, p.saddr, f.data + 6, e.learn_ifindex)
        else:
            neigh_learn(e, p.saddr[3], f.data + 6, e.learn_ifindex)
    conn_forward_in(e, f, p, c, now)
    if p.proto == 6:
        if c.state == TCP_S_SYN_RECV or c.state == TCP_S_SYNACK:
            embryo_push(e, ci - 1, p.bucket)
    elif s.flags & SVC_F_ONEPACKET:
        # -o: the entry served this one datagram; the next is scheduled afresh
        conn_free(e, ci - 1)


cdef void new_flow(fl_engine *e, fl_frame *f, fl_pkt *p, int idx, uint16_t svc_id,
                   uint64_t now) noexcept nogil:
    # ip_vs_schedule: persistence template first, then the C hash table, else park the frame
    # for the Python scheduler (one callback per batch, flows of the batch deduplicated).
    cdef fl_svc *s = &e.svcs[svc_id]
    cdef uint32_t snet[4]
    cdef uint32_t ti
    cdef uint32_t dest
    cdef int k
    cdef fl_pkt *q
    if defense_todrop(e):
        # drop_packet (tcp/udp_conn_schedule): a share of new conns is refused while
        # the table runs out
        frame_drop(e, f, C_DROP_PACKET)
        return
    if s.persist_timeout != 0:
        persist_net(s, p, snet)
        ti = tmpl_lookup(e, snet, s.vip, s.proto, now)
        if ti != 0 and template_usable(e, ti):
            conn_create_forward(e, f, p, svc_id, e.conns[ti - 1].dest, ti, now)
            return
    if s.table != NULL:
        dest = sched_hash(e, s, p)
        if dest == 0 or not dest_valid_for(e, dest, svc_id):
            frame_drop(e, f, C_NO_DEST)
            return
        conn_create_forward(e, f, p, svc_id, dest, 0, now)
        return
    if not park_follower(e, f, p, idx):
        k = e.nparked
        e.nparked += 1
        f.verdict = VERDICT_PENDING
        e.parked[k].frame = <uint16_t>idx
        e.parked[k].svc = svc_id
        e.parked[k].dest = 0
        e.parked[k].leader = -1


cdef bint park_follower(fl_engine *e, fl_frame *f, fl_pkt *p, int idx) noexcept nogil:
    # A later frame of a flow already parked in this batch waits behind it (order kept,
    # the scheduler asked once).
    cdef int j, k = e.nparked
    cdef fl_pkt *q
    for j in range(k):
        if e.parked[j].leader < 0 and not (e.svcs[e.parked[j].svc].flags & SVC_F_ONEPACKET):
            q = &e.pkts[e.parked[j].frame]
            if (q.sport == p.sport and q.vip == p.vip and q.dport == p.dport
                    and q.proto == p.proto and addr_eq(q.saddr, p.saddr)):
                e.nparked += 1
                f.verdict = VERDICT_PENDING
                e.parked[k].frame = <uint16_t>idx
                e.parked[k].svc = e.parked[j].svc
                e.parked[k].dest = 0
                e.parked[k].leader = <int16_t>j
                return True
    return False


cdef inline bint conn_reuse_expected(fl_engine *e, fl_conn *c) noexcept nogil:
    # is_new_conn_expected (Linux 6.1): a SYN may open a new conn over an entry in
    # TIME_WAIT or CLOSE, and with bit 2 over one in FIN_WAIT that never saw a reply
    # (DR/TUN), unless a persistence template controls the entry.
    if c.ctl != 0 or c.proto != 6:
        return False
    return (c.state == TCP_S_TIME_WAIT or c.state == TCP_S_CLOSE
            or ((e.conn_reuse_mode & 2) and c.state == TCP_S_FIN_WAIT
                and (c.flags & CF_NOOUTPUT)))


cdef inline int conn_check_in(fl_engine *e, fl_frame *f, fl_pkt *p, uint32_t ci) noexcept nogil:
    # ip_vs_in between the lookup and the transmit (Linux 6.1, recorded). Returns 1: forward
    # on the entry; 0: the entry was ended, schedule the packet as a new one; -1: dropped.
    # Later mainline sources also end a weight-0 dest's entry for a SYN (expire_nodest_conn)
    # when conn_reuse_mode is 0; 6.1 needs conn_reuse_mode on for that, and so does this.
    cdef fl_conn *c = &e.conns[ci - 1]
    cdef fl_dest *d = &e.dests[c.dest]
    if e.conn_reuse_mode != 0 and p.proto == 6 and (p.tcpflags & TH_SYN):
        # port reuse: a SYN over an entry that is closing, or whose server was quiesced
        # while expire_nodest_conn is set, ends the entry and is scheduled afresh (only
        # templates have n_control here, so the entry always goes at once)
        if ((e.expire_nodest_conn and c.dest != 0 and d.weight == 0)
                or conn_reuse_expected(e, c)):
            conn_free(e, ci - 1)
            return 0
    if c.dest != 0 and not (d.flags & DF_AVAILABLE):
        # the real server was deleted: its conns' packets are dropped and the entry is
        # left to time out (the timer is not re-armed), or with expire_nodest_conn the
        # entry ends and the packet is handled as if there had been none
        if e.expire_nodest_conn:
            conn_free(e, ci - 1)
            return 0
        frame_drop(e, f, C_DEST_UNAVAILABLE)
        return -1
    return 1


cdef inline void handle_pkt(fl_engine *e, fl_frame *f, fl_pkt *p, int idx) noexcept nogil:
    cdef uint64_t now = f.ts_ns
    cdef uint32_t ci
    cdef int r
    cdef uint16_t svc_id
    if p.vip != 0:
        if fl_unlikely(e.vips[p.vip].off):
            # a VIP that left this host (a VRRP backup): the kernel's, conns and all; they
            # stay in the table for when it comes back
            frame_pass(e, f, C_NO_SERVICE)
            return
        ci = conn_lookup_in(e, p, now)
        if ci != 0:
            r = conn_check_in(e, f, p, ci)
            if r > 0:
                conn_forward_in(e, f, p, &e.conns[ci - 1], now)
                return
            if r < 0:
                return
        if e.nparked != 0 and park_follower(e, f, p, idx):
            return
        svc_id = svc_for_new(e, p)
        if svc_id == 0:
            frame_pass(e, f, C_NO_SERVICE)
            return
        if p.proto == 6 and ((p.tcpflags & TH_RST)
                             or not (p.tcpflags & TH_SYN or e.sloppy_tcp)):
            # tcp_conn_schedule schedules on a SYN without RST (any packet without RST
            # with sloppy_tcp); the rest is not ours
            frame_pass(e, f, C_TCP_NOT_SYN)
            return
        if p.proto == IPPROTO_SCTP and p.tcpflags != SCTP_EV_INIT:
            # sctp_conn_schedule: only an INIT opens a conn
            frame_pass(e, f, C_SCTP_NOT_INIT)
            return
        new_flow(e, f, p, idx, svc_id, now)
        return
    ci = conn_lookup_out(e, p, now)
    if ci != 0:
        conn_forward_out(e, f, p, &e.conns[ci - 1], now)
        return
    if fl_unlikely(e.nat_icmp_send) and not p.v6 and nat_icmp_send_v4(e, f, p):
        return
    frame_pass(e, f, C_NO_SERVICE)


cdef int engine_rx_batch(fl_engine *e, fl_frame *frames, int n) noexcept nogil:
    """Process up to MAX_BATCH frames in place; returns how many were parked (PENDING).

    Parked frames wait for engine_bind_parked once e.parked[k].dest holds the decision."""
    cdef int i, j, r
    cdef fl_frame *f
    cdef fl_pkt *p
    cdef fl_conn *c
    cdef uint64_t now = e.now
    if n > MAX_BATCH:
        n = MAX_BATCH
    e.nparked = 0
    frag_batch_start(e)
    # pass 0: every frame's headers at once; the kernel copied them in a while ago (on a NIC,
    # DMA never put them in this core's cache), and one miss at a time is what the parse
    # loop would otherwise wait for
    for i in range(n):
        fl_prefetch(frames[i].data)
    # pass 1: parse, classify, hash and prefetch the bucket heads of the whole batch
    for i in range(n):
        f = &frames[i]
        p = &e.pkts[i]
        f.out_adj = 0
        f.out_len = 0
        f.out_ifindex = 0
        f.reason = 0
        f.xrec = 0
        f.verdict = VERDICT_DROP
        if f.ts_ns > now:
            now = f.ts_ns
        r = parse_frame(f, p)
        if fl_unlikely(r != PARSE_OK):
            if r == PARSE_IPV6:
                r = parse_frame_v6(e, f, p, p.l2len)
            if r == C_FRAGMENT:
                # held, or the datagram it completes now stands in for the frame
                r = frag6_input(e, f, p, now) if p.v6 else frag_input(e, f, p, now)
            if r == PARSE_ICMP:
                r = icmp_parse(e, f, p)
                if r == ICMP_OK or r == ICMP_TUN_OK:
                    # handled in order with the others; its conn's bucket is prefetched
                    p.ok = PKT_ICMP if r == ICMP_OK else PKT_ICMP_TUN
                    fl_prefetch(&e.buckets[p.bucket])
                    continue
            if r == C_V6_EXTHDR and not addr_set_has(e.vset6, e.vmask6, addr6_fold(p.daddr)):
                r = C_NO_SERVICE        # not to a VIP: the host's
            if r != PARSE_OK:
                p.ok = 0
                if (r == C_NOT_IP or r == C_NO_SERVICE or r == C_FRAGMENT
                        or r == C_ICMP_NO_CONN):
                    frame_pass(e, f, r)
                else:
                    frame_drop(e, f, r)
                continue
        p.ok = 1
        if f.csum != FRAME_CSUM_FULL and p.proto != IPPROTO_SCTP and (
                f.csum == FRAME_CSUM_PARTIAL
                or fl_unlikely(l4_csum_looks_partial(f.data + p.l2len, p.ihl,
                                                     p.tot_len - p.ihl, p.proto))):
            l4_csum_complete(f.data + p.l2len, p.ihl, p.tot_len - p.ihl, p.proto)
            e.counters[C_CSUM_COMPLETED] += 1
        p.vip = vip_find_in(e, p.daddr, p.dport, p.proto)
        if fl_unlikely(e.nmarks != 0) and p.vip == 0:
            p.vip = mark_vip(e, p)
        if p.vip != 0:
            p.bucket = conn_hash(e, p.saddr, p.sport, p.proto)
        else:
            p.bucket = conn_hash(e, p.daddr, p.dport, p.proto)
        fl_prefetch(&e.buckets[p.bucket])
    e.counters[C_RX] += <uint64_t>n
    e.now = now
    # pass 2: prefetch the chain head's entry of frame i while frame i - PREFETCH_AHEAD is
    # handled, so that every entry has that many frames' work to arrive in (a separate
    # prefetch pass is over in a few ns, and then the first frames wait for theirs)
    for i in range(n + PREFETCH_AHEAD):
        if i < n:
            p = &e.pkts[i]
            if p.ok and e.buckets[p.bucket] != 0:
                # both lines: an entry is 56 bytes, so half of them straddle two cache
                # lines, and the lookup reads both ends (caddr first, cport/vip last); for
                # writing, as forwarding re-arms the timer
                c = &e.conns[e.buckets[p.bucket] - 1]
                fl_prefetch_w(c)
                fl_prefetch_w(<char *>c + sizeof(fl_conn) - 1)
                if e.sync.meta != NULL:
                    # the sync state the packet will count in (sync_in_packet)
                    fl_prefetch_w(&e.sync.meta[e.buckets[p.bucket] - 1])
        j = i - PREFETCH_AHEAD
        if j >= 0 and e.pkts[j].ok:
            if fl_likely(e.pkts[j].ok == 1):
                handle_pkt(e, &frames[j], &e.pkts[j], j)
            else:
                icmp_handle(e, &frames[j], &e.pkts[j], frames[j].ts_ns)
            if frames[j].verdict == VERDICT_TX:
                if fl_unlikely(frames[j].xrec != 0) and not frag_cut(e, &frames[j]):
                    continue
                e.counters[C_TX] += 1
    if e.off_nq != 0:
        offload_flush(e)
    conn_sweep_batch(e, now)
    if e.frag.oldest != 0 or e.frag.oldest6 != 0:
        frag_expire(e, now, FRAG_EXPIRE_BUDGET)
    return e.nparked


cdef void engine_bind_parked(fl_engine *e, fl_frame *frames) noexcept nogil:
    """Bind and forward the parked frames of the last engine_rx_batch, in frame order."""
    cdef int k
    cdef fl_parked *pk
    cdef fl_frame *f
    cdef fl_pkt *p
    cdef uint32_t ci, ti, dest
    cdef uint32_t snet[4]
    cdef fl_svc *s
    for k in range(e.nparked):
        pk = &e.parked[k]
        f = &frames[pk.frame]
        p = &e.pkts[pk.frame]
        ci = conn_lookup_in(e, p, f.ts_ns)
        if ci != 0:
            # made by an earlier parked frame of the same flow
            conn_forward_in(e, f, p, &e.conns[ci - 1], f.ts_ns)
        elif pk.leader >= 0 or f.verdict != VERDICT_PENDING:
            if f.verdict != VERDICT_PENDING:
                pass
            elif (pk.leader >= 0 and e.parked[pk.leader].dest != 0
                    and (p.proto == 17 or (p.proto == 6 and (p.tcpflags & (TH_SYN | TH_RST)) == TH_SYN)
                         or (p.proto == IPPROTO_SCTP and p.tcpflags == SCTP_EV_INIT))
                    and dest_valid_for(e, e.parked[pk.leader].dest, pk.svc)):
                # The leader's conn already expired by this frame's own time (only a
                # replayed capture spans a timeout within one batch): the frame opens a
                # new conn, to the server the scheduler just chose for this very flow.
                conn_create_forward(e, f, p, pk.svc, e.parked[pk.leader].dest, 0, f.ts_ns)
            elif p.proto == 6:
                frame_drop(e, f, C_TCP_NOT_SYN)
            else:
                frame_drop(e, f, C_NO_DEST)
        else:
            s = &e.svcs[pk.svc]
            dest = pk.dest
            ti = 0
            if s.in_use and s.persist_timeout != 0:
                # a template made earlier in this batch wins, as it would have in sequence
                persist_net(s, p, snet)
                ti = tmpl_lookup(e, snet, s.vip, s.proto, f.ts_ns)
                if ti != 0 and template_usable(e, ti):
                    dest = e.conns[ti - 1].dest
                else:
                    ti = 0
            if not s.in_use or (ti == 0 and not dest_valid_for(e, dest, pk.svc)):
                frame_drop(e, f, C_NO_DEST)
            else:
                conn_create_forward(e, f, p, pk.svc, dest, ti, f.ts_ns)
        if f.verdict == VERDICT_TX:
            if fl_unlikely(f.xrec != 0) and not frag_cut(e, f):
                continue
            e.counters[C_TX] += 1
    e.nparked = 0
    if e.off_nq != 0:
        offload_flush(e)
