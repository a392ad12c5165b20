# The connection table: `capacity` 56-byte entries allocated once, chained from a power-of-two
# bucket array by 32-bit indices (stable, so conns can name their template), a free list,
# lazy expiry on lookup plus an incremental sweep of a bounded number of entries per batch.
# Also the interned virtual addresses (VIPs), the dest bind/unbind counters of IPVS, and the
# flood defences of ip_vs_ctl.c (drop_entry, drop_packet, secure_tcp) with free entries as
# the measure of memory that amemthresh is in the kernel.

cdef enum:
    NS_PER_S = 1000000000


cdef inline bint addr_eq(const uint32_t *a, const uint32_t *b) noexcept nogil:
    return a[3] == b[3] and a[2] == b[2] and a[1] == b[1] and a[0] == b[0]


cdef inline uint32_t vip_slot(const uint32_t *addr, uint16_t port, uint8_t proto) noexcept nogil:
    cdef uint64_t x = (<uint64_t>(addr[0] ^ addr[1] ^ addr[2] ^ addr[3]) << 24) \
        ^ (<uint64_t>port << 8) ^ proto
    x *= 0x9E3779B97F4A7C15ULL
    return <uint32_t>(x >> 47) & (VIP_INDEX_SIZE - 1)


cdef inline uint16_t vip_find(fl_engine *e, const uint32_t *addr, uint16_t port,
                              uint8_t proto) noexcept nogil:
    # Interned VIP index of (proto, addr, port), 0 = not a virtual address we know. The
    # index is never more than half full (MAX_VIPS of VIP_INDEX_SIZE), so an empty slot
    # ends every probe; the loop is bounded all the same.
    cdef uint32_t s = vip_slot(addr, port, proto)
    cdef uint16_t v
    cdef fl_vip *vp
    cdef int n
    for n in range(VIP_INDEX_SIZE):
        v = e.vip_index[s]
        if v == 0:
            return 0
        vp = &e.vips[v]
        if vp.port == port and vp.proto == proto and addr_eq(vp.addr, addr):
            return v
        s = (s + 1) & (VIP_INDEX_SIZE - 1)
    return 0


cdef inline uint16_t vip_find_in(fl_engine *e, const uint32_t *addr, uint16_t port,
                                 uint8_t proto) noexcept nogil:
    # ip_vs_service_find's order: the VIP of that port, else a port-0 service's VIP (all
    # ports); the second lookup only while some port-0 service exists.
    cdef uint16_t v = vip_find(e, addr, port, proto)
    if v == 0 and e.n_port0 != 0 and port != 0:
        v = vip_find(e, addr, 0, proto)
    return v


cdef inline uint16_t conn_rport(fl_engine *e, const fl_conn *c) noexcept nogil:
    # The conn's real-server port: a port-0 service's conns keep the client's destination
    # port whatever the dest's port (recorded on 6.1: tests/fixtures/kernel/port0.json), and
    # so does a dest on port 0.
    cdef uint16_t r = e.dests[c.dest].rport
    if r == 0 or (e.vips[c.vip].port == 0
                  and not (e.svcs[e.dests[c.dest].svc].flags & SVC_F_FWMARK)):
        # (a mark's conns share a port-0 VIP, but keep the dest's port when it has one)
        return c.vport
    return r


cdef inline uint64_t secs(uint32_t s) noexcept nogil:
    return <uint64_t>s * NS_PER_S


cdef inline void dest_bind(fl_engine *e, fl_conn *c) noexcept nogil:
    # ip_vs_bind_dest: count the entry on its dest, then set the overload flag at -x.
    cdef fl_dest *d = &e.dests[c.dest]
    d.refcnt += 1
    if c.flags & CF_TEMPLATE:
        d.persistconns += 1
    elif c.flags & CF_INACTIVE:
        d.inactconns += 1
    else:
        d.activeconns += 1
    if d.u_threshold != 0 and <uint32_t>(d.activeconns + d.inactconns) >= d.u_threshold:
        d.flags |= DF_OVERLOAD


cdef inline void dest_unbind(fl_engine *e, fl_conn *c) noexcept nogil:
    # ip_vs_unbind_dest: uncount, then clear the overload flag with its hysteresis.
    cdef fl_dest *d = &e.dests[c.dest]
    cdef int64_t total
    if c.flags & CF_TEMPLATE:
        d.persistconns -= 1
    elif c.flags & CF_INACTIVE:
        d.inactconns -= 1
    else:
        d.activeconns -= 1
    total = d.activeconns + d.inactconns
    if d.l_threshold != 0:
        if total < d.l_threshold:
            d.flags &= ~DF_OVERLOAD
    elif d.u_threshold != 0:
        if total * 4 < <int64_t>d.u_threshold * 3:
            d.flags &= ~DF_OVERLOAD
    else:
        d.flags &= ~DF_OVERLOAD
    d.refcnt -= 1
    c.dest = 0


cdef inline uint32_t conn_bucket_of(fl_engine *e, fl_conn *c) noexcept nogil:
    return conn_hash(e, c.caddr, c.cport, c.proto)


cdef bint conn_unlink(fl_engine *e, uint32_t idx, uint32_t b) noexcept nogil:
    # Take entry idx out of bucket b's chain; False when it is not in that chain.
    cdef uint32_t *link = &e.buckets[b]
    while link[0] != 0:
        if link[0] == idx + 1:
            link[0] = e.conns[idx].next
            return True
        link = &e.conns[link[0] - 1].next
    return False


cdef void conn_release(fl_engine *e, uint32_t idx) noexcept nogil:
    # An unhashed entry: release the template's control (ip_vs_control_del), unbind,
    # return it to the pool.
    cdef fl_conn *c = &e.conns[idx]
    cdef uint32_t t
    if fl_unlikely(c.flags & CF_OFFLOADED):
        offload_remove(e, idx)
    if not (c.flags & CF_TEMPLATE) and c.ctl != 0:
        t = c.ctl - 1
        if e.conns[t].ctl > 0:
            e.conns[t].ctl -= 1
        c.ctl = 0
    if c.dest != 0:
        dest_unbind(e, c)
    c.vip = 0
    c.flags = 0
    c.next = e.free_head
    e.free_head = idx + 1
    e.conn_count -= 1
    e.counters[C_CONNS_EXPIRED] += 1


cdef inline bint conn_embryonic(fl_conn *c) noexcept nogil:
    # what drop_entry may drop: a TCP entry (not a template) still in SYN_RECV/SYNACK
    return (c.vip != 0 and c.proto == 6 and not (c.flags & CF_TEMPLATE)
            and (c.state == TCP_S_SYN_RECV or c.state == TCP_S_SYNACK))


cdef inline uint32_t embryo_want(fl_engine *e) noexcept nogil:
    # the free entries drop_entry keeps: EMBRYO_RESERVE, an eighth of a small table
    if e.capacity < 8 * EMBRYO_RESERVE:
        return e.capacity >> 3
    return EMBRYO_RESERVE


cdef inline void conn_link(fl_engine *e, uint32_t idx, uint32_t bucket,
                           uint64_t now) noexcept nogil:
    # At the chain's end, so a chain runs oldest first: the lookup that preceded every
    # insert has just walked it (no miss). While drop_entry is in force and fewer than its
    # reserve of entries are free, the same walk drops the oldest entries of this chain
    # still in SYN_RECV/SYNACK (at most CHAIN_EVICT_MAX, never the new one): the lookup
    # has just read them, so a full table pays no cache miss for its room, where a victim
    # from anywhere else costs two or three. Flood sources hash anywhere (keyed hash), so
    # these are random embryos, as ip_vs_random_dropentry's, but only the older half of
    # them (evict_horizon): a real client's entry waiting for its ACK is young, and must
    # not go because one spoofed SYN hashed beside it. The rest is left to the oldest
    # ones, after the batch (embryo_reserve).
    cdef uint32_t *link = &e.buckets[bucket]
    cdef uint32_t j, avail, budget = 0
    cdef fl_conn *c
    if e.dropentry_on:
        avail = e.capacity - e.conn_count
        if avail < embryo_want(e):
            budget = embryo_want(e) - avail
            if budget > CHAIN_EVICT_MAX:
                budget = CHAIN_EVICT_MAX
    while link[0] != 0:
        j = link[0] - 1
        c = &e.conns[j]
        if (budget != 0 and conn_embryonic(c)
                and c.expires <= e.evict_horizon + secs(c.timeout)):
            budget -= 1
            link[0] = c.next
            if c.expires > now:
                e.counters[C_DROP_ENTRY] += 1
            conn_release(e, j)
            continue
        link = &c.next
    e.conns[idx].next = 0
    link[0] = idx + 1


cdef inline void conn_free(fl_engine *e, uint32_t idx) noexcept nogil:
    conn_unlink(e, idx, conn_bucket_of(e, &e.conns[idx]))
    conn_release(e, idx)


cdef inline bint conn_expire(fl_engine *e, uint32_t idx, uint64_t now) noexcept nogil:
    # The timer fired: a template still controlling conns is re-armed (IPVS n_control),
    # anything else is freed. Returns True when the entry was freed.
    cdef fl_conn *c = &e.conns[idx]
    if fl_unlikely(c.flags & CF_OFFLOADED) and offload_refresh(e, idx, now):
        return False            # the XDP program forwarded its packets meanwhile
    if (c.flags & CF_TEMPLATE) and c.ctl > 0:
        c.expires = now + secs(c.timeout)
        return False
    conn_free(e, idx)
    return True


cdef uint32_t conn_sweep(fl_engine *e, uint64_t now, uint32_t budget) noexcept nogil:
    # Inspect up to `budget` entries from the sweep cursor; returns how many were freed.
    # Only the part of the table ever handed out is walked (the free list gives out low
    # indices first and takes freed ones back on top): walking the never-used rest would
    # stream megabytes of idle entries through the cache the lookups and the kernel share.
    cdef uint32_t freed = 0
    cdef uint32_t i
    cdef fl_conn *c
    if budget > e.used_end:
        budget = e.used_end
    while budget > 0:
        budget -= 1
        i = e.sweep_pos
        e.sweep_pos += 1
        if e.sweep_pos >= e.used_end:
            e.sweep_pos = 0
        c = &e.conns[i]
        if c.vip != 0 and c.expires <= now:
            if conn_expire(e, i, now):
                freed += 1
    return freed


cdef inline uint64_t rnd_next(fl_engine *e) noexcept nogil:
    # xorshift64: drop_entry's random picks need no quality, only no cost
    cdef uint64_t x = e.rnd
    x ^= x << 13
    x ^= x >> 7
    x ^= x << 17
    e.rnd = x
    return x


cdef void dropentry_random(fl_engine *e, uint32_t budget) noexcept nogil:
    # ip_vs_random_dropentry, once a second while drop_entry is in force: look at random
    # entries and drop those in SYN_RECV/SYNACK. Established entries are kept: the kernel
    # drops an old one only by its packet count, which entries here do not keep.
    cdef uint32_t i
    cdef fl_conn *c
    if e.used_end == 0:
        return
    while budget > 0:
        budget -= 1
        i = <uint32_t>(rnd_next(e) % e.used_end)
        c = &e.conns[i]
        if (c.vip != 0 and c.proto == 6 and not (c.flags & CF_TEMPLATE)
                and (c.state == TCP_S_SYN_RECV or c.state == TCP_S_SYNACK)):
            conn_free(e, i)
            e.counters[C_DROP_ENTRY] += 1


cdef void defense_update(fl_engine *e) noexcept nogil:
    # update_defense_level: `nomem` is fewer free entries than amemthresh. Automatic modes
    # read 2 while in force and 1 while not, as the kernel rewrites its sysctls.
    cdef uint32_t avail = e.capacity - e.conn_count
    cdef bint nomem = avail < e.amemthresh
    if e.drop_entry == DEF_OFF:
        e.dropentry_on = 0
    elif e.drop_entry == DEF_ALWAYS:
        e.dropentry_on = 1
    else:
        e.dropentry_on = nomem
        e.drop_entry = DEF_AUTO_ON if nomem else DEF_AUTO
    if e.drop_packet == DEF_OFF:
        e.drop_rate = 0
    elif e.drop_packet == DEF_ALWAYS:
        # the rate only: the count runs on (from 0 when first set, so the first new conn
        # is dropped, as recorded on 6.1)
        e.drop_rate = e.am_droprate
    else:
        if nomem:
            # rate = amemthresh / (amemthresh - free): 1 (drop all) as the table runs out
            e.drop_rate = e.amemthresh // (e.amemthresh - avail)
            e.drop_counter = e.drop_rate
        else:
            e.drop_rate = 0
        e.drop_packet = DEF_AUTO_ON if nomem else DEF_AUTO
    if e.secure_tcp == DEF_OFF:
        e.secure_tcp_on = 0
    elif e.secure_tcp == DEF_ALWAYS:
        e.secure_tcp_on = 1
    else:
        e.secure_tcp_on = nomem
        e.secure_tcp = DEF_AUTO_ON if nomem else DEF_AUTO


cdef inline bint defense_todrop(fl_engine *e) noexcept nogil:
    # ip_vs_todrop: drop_packet lets drop_rate - 1 new conns through, then drops one.
    if e.drop_rate == 0:
        return False
    if e.drop_counter > 1:
        e.drop_counter -= 1
        return False
    e.drop_counter = e.drop_rate
    return True


cdef inline void defense_tick(fl_engine *e, uint64_t now) noexcept nogil:
    # defense_work, once a second of frame time.
    cdef uint32_t budget
    if now < e.defense_clock + NS_PER_S:
        return
    e.defense_clock = now
    defense_update(e)
    # while fewer than the reserve are free, the inserts are already dropping random
    # embryos (conn_link, their own chains') at no cache miss: the look at random entries
    # would only drop more of the same at a miss or two each, inside one batch
    if e.dropentry_on and e.capacity - e.conn_count >= embryo_want(e):
        budget = e.used_end >> 5
        dropentry_random(e, budget if budget < 1024 else 1024)


cdef inline bint embryo_evict(fl_engine *e, uint64_t r, uint64_t now) noexcept nogil:
    # Drop the entry ring reference r names (index << 32 | bucket) if it is still a TCP
    # entry in SYN_RECV/SYNACK in that bucket (else the reference is stale: the entry moved
    # on, or was freed and reused elsewhere). Counted drop_entry unless it had expired.
    cdef uint32_t i = <uint32_t>(r >> 32)
    cdef fl_conn *c = &e.conns[i]
    if not conn_embryonic(c):
        return False
    if not conn_unlink(e, i, <uint32_t>r):
        return False
    if c.expires > now:
        e.counters[C_DROP_ENTRY] += 1
    conn_release(e, i)
    return True


cdef void embryo_reserve(fl_engine *e, uint64_t now) noexcept nogil:
    # While drop_entry is in force, keep EMBRYO_RESERVE entries free (an eighth of a small
    # table) by dropping the oldest entries still in SYN_RECV/SYNACK, a batch behind: after
    # each batch the victims chosen after the previous one go (their entries and buckets
    # were prefetched then, so this costs no cache miss), and the next ones are chosen and
    # prefetched. The next batch's new conns then take entries the cache has just seen.
    # Established entries are never touched.
    cdef uint32_t want = embryo_want(e)
    cdef uint32_t j, need
    cdef uint64_t r
    cdef fl_conn *c
    if e.emb_head != e.emb_tail:
        # the age conn_link's drops start at: the ring's middle reference (one read a
        # batch), if it still names an embryo (a stale one leaves the last horizon)
        r = e.embryo[(e.emb_head + (e.emb_tail - e.emb_head) // 2) & e.bucket_mask]
        c = &e.conns[<uint32_t>(r >> 32)]
        if conn_embryonic(c) and c.expires >= secs(c.timeout):
            e.evict_horizon = c.expires - secs(c.timeout)
    for j in range(e.nvict):
        embryo_evict(e, e.vict[j], now)
    e.nvict = 0
    if e.capacity - e.conn_count >= want:
        return
    need = want - (e.capacity - e.conn_count)
    if need > MAX_BATCH:
        need = MAX_BATCH
    while e.nvict < need and e.emb_head != e.emb_tail:
        r = e.embryo[e.emb_head & e.bucket_mask]
        e.emb_head += 1
        e.vict[e.nvict] = r
        e.nvict += 1
        # both lines of the entry: half of them straddle two, and the check reads its end
        fl_prefetch_w(&e.conns[<uint32_t>(r >> 32)])
        fl_prefetch_w(<char *>&e.conns[<uint32_t>(r >> 32)] + sizeof(fl_conn) - 1)
        fl_prefetch_w(&e.buckets[<uint32_t>r])


cdef inline void conn_sweep_batch(fl_engine *e, uint64_t now) noexcept nogil:
    # The sweep after a batch, paced by frame time: the used part of the table once a second,
    # at most sweep_budget entries per batch. Pacing by batches instead would sweep the table
    # many times a second under a flood, for nothing (lookups expire what they meet), and
    # the walk costs cache lines the forwarding needs.
    cdef uint64_t dt, due
    defense_tick(e, now)
    if e.dropentry_on:
        embryo_reserve(e, now)
    if e.used_end == 0 or now <= e.sweep_clock:
        return
    dt = now - e.sweep_clock
    if dt > NS_PER_S:
        dt = NS_PER_S
        e.sweep_clock = now - NS_PER_S
    due = <uint64_t>e.used_end * dt // NS_PER_S
    if due == 0:
        return
    if due > e.sweep_budget:
        due = e.sweep_budget
    # what was not paid for (a budget cut, a fraction of an entry) is owed to the next batch
    e.sweep_clock += due * NS_PER_S // e.used_end
    conn_sweep(e, now, <uint32_t>due)


cdef inline uint32_t conn_lookup_in(fl_engine *e, fl_pkt *p, uint64_t now) noexcept nogil:
    # 1 + index of the live conn for a client->VIP packet, 0 = none (expired ones are freed).
    cdef uint32_t i = e.buckets[p.bucket]
    cdef fl_conn *c
    while i != 0:
        c = &e.conns[i - 1]
        if (c.cport == p.sport and c.vip == p.vip and c.caddr[3] == p.saddr[3]
                and c.vport == p.dport and not (c.flags & CF_TEMPLATE) and addr_eq(c.caddr, p.saddr)):
            if c.expires <= now and conn_expire(e, i - 1, now):
                return 0
            return i
        i = c.next
    return 0


cdef inline uint32_t conn_lookup_out(fl_engine *e, fl_pkt *p, uint64_t now) noexcept nogil:
    # 1 + index of the NAT conn a RS->client reply belongs to, 0 = none.
    cdef uint32_t b = conn_hash(e, p.daddr, p.dport, p.proto)
    cdef uint32_t i = e.buckets[b]
    cdef fl_conn *c
    cdef fl_dest *d
    while i != 0:
        c = &e.conns[i - 1]
        if (c.cport == p.dport and c.proto == p.proto and c.fwd == FWD_NAT
                and not (c.flags & CF_TEMPLATE) and addr_eq(c.caddr, p.daddr)):
            d = &e.dests[c.dest]
            if conn_rport(e, c) == p.sport and addr_eq(d.raddr, p.saddr):
                if c.expires <= now and conn_expire(e, i - 1, now):
                    return 0
                return i
        i = c.next
    return 0


cdef inline uint32_t tmpl_lookup(fl_engine *e, const uint32_t *snet, uint16_t vip,
                                 uint8_t proto, uint64_t now) noexcept nogil:
    # 1 + index of the persistence template <proto, client net, 0, vip>, 0 = none.
    cdef uint32_t i = e.buckets[conn_hash(e, snet, 0, proto)]
    cdef fl_conn *c
    while i != 0:
        c = &e.conns[i - 1]
        if ((c.flags & (CF_TEMPLATE | CF_INVALID)) == CF_TEMPLATE and c.vip == vip
                and c.cport == 0 and addr_eq(c.caddr, snet)):
            if c.expires <= now and conn_expire(e, i - 1, now):
                return 0
            return i
        i = c.next
    return 0


cdef inline void embryo_push(fl_engine *e, uint32_t idx, uint32_t bucket) noexcept nogil:
    # Remember a TCP entry opened in SYN_RECV/SYNACK, oldest first, with its bucket (so that
    # dropping it needs no hash); a full ring forgets its oldest. No ring until drop_entry
    # is first set: then the entries opened before it are left to the random drops.
    cdef uint32_t size = e.bucket_mask + 1
    if e.embryo == NULL:
        return
    if e.emb_tail - e.emb_head >= size:
        e.emb_head += 1
    e.embryo[e.emb_tail & e.bucket_mask] = (<uint64_t>idx << 32) | bucket
    e.emb_tail += 1


cdef inline bint conn_reclaim(fl_engine *e, uint64_t now) noexcept nogil:
    # The table is full: free the oldest entry still in SYN_RECV/SYNACK since its first
    # packet if it has expired or the drop_entry defence is on (a spoofed SYN's; a real
    # client has answered by then and moved on), else a few expired entries from the
    # sweep cursor. Bounded work, so a full table costs what one with room costs: each
    # reference is passed over once (the ring only moves on), so the skips are paid for by
    # the pushes, and `tries` only bounds one packet's share.
    cdef int tries = 32
    cdef uint64_t r
    cdef fl_conn *c
    while e.emb_head != e.emb_tail and tries > 0:
        tries -= 1
        r = e.embryo[e.emb_head & e.bucket_mask]
        c = &e.conns[<uint32_t>(r >> 32)]
        if not e.dropentry_on and c.vip != 0 and c.expires > now and (
                c.state == TCP_S_SYN_RECV or c.state == TCP_S_SYNACK):
            break               # the oldest embryo is alive and no defence: nothing to take
        e.emb_head += 1
        if embryo_evict(e, r, now):
            return True
    conn_sweep(e, now, 4)
    return e.free_head != 0


cdef inline uint32_t conn_alloc(fl_engine *e, uint64_t now) noexcept nogil:
    # 1 + index of a free entry, reclaiming one first when the table is full; 0 = none.
    cdef uint32_t i
    if e.free_head == 0:
        if (e.drop_entry == DEF_AUTO or e.drop_packet == DEF_AUTO
                or e.secure_tcp == DEF_AUTO):
            # no free entry is certainly below amemthresh: engage now, not at the next tick
            defense_update(e)
        if not conn_reclaim(e, now):
            return 0
    i = e.free_head
    e.free_head = e.conns[i - 1].next
    e.conn_count += 1
    if i > e.used_end:
        e.used_end = i
    return i


cdef void conn_flush_nodest(fl_engine *e, uint32_t dest) noexcept nogil:
    # ip_vs_expire_nodest_conn_flush (expire_nodest_conn=1, a dest deleted): free the
    # dest's conns at once; a template goes with the last conn it controls.
    cdef uint32_t i, t
    cdef fl_conn *c
    for i in range(e.used_end):
        c = &e.conns[i]
        if c.vip == 0 or c.dest != dest:
            continue
        if (c.flags & CF_TEMPLATE) and c.ctl > 0:
            continue
        t = c.ctl if not (c.flags & CF_TEMPLATE) else 0
        conn_free(e, i)
        if t != 0 and e.conns[t - 1].vip != 0 and e.conns[t - 1].ctl == 0:
            conn_free(e, t - 1)


cdef uint32_t conn_new(fl_engine *e, const uint32_t *caddr, uint16_t cport, uint16_t vip,
                       uint8_t proto, uint32_t dest, uint8_t flags,
                       uint64_t now) noexcept nogil:
    # ip_vs_conn_new + ip_vs_bind_dest: a hashed entry in state NONE bound to `dest`.
    cdef uint32_t i = conn_alloc(e, now)
    cdef fl_conn *c
    cdef fl_dest *d = &e.dests[dest]
    if i == 0:
        return 0
    c = &e.conns[i - 1]
    c.caddr[0] = caddr[0]
    c.caddr[1] = caddr[1]
    c.caddr[2] = caddr[2]
    c.caddr[3] = caddr[3]
    c.cport = cport
    c.vip = vip
    c.vport = e.vips[vip].port
    c.proto = proto
    c.state = TCP_S_NONE
    c.ctl = 0
    c.dest = dest
    c.fwd = d.fwd
    c.flags = flags
    if not (flags & CF_TEMPLATE):
        # the dest's conn_flags: new conns start inactive; DR/TUN never see output
        c.flags |= CF_INACTIVE
        if d.fwd != FWD_NAT:
            c.flags |= CF_NOOUTPUT
    c.timeout = 3
    c.expires = now + secs(3)
    if e.sync.meta != NULL:
        sync_meta_reset(e, i - 1, now)
    conn_link(e, i - 1, conn_hash(e, caddr, cport, proto), now)
    dest_bind(e, c)
    return i
