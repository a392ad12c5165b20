# The client-MAC table of IPv6 clients: NAT66 replies go to the MAC a client's frames came
# from (learned when its conn opened) or one the kernel's neighbour table gave
# (Engine.set_neighbor), else to the v6 default router's. The same set-associative shape as
# neigh.pxi with 128-bit keys; the set is chosen by hsiphash over all four words, chained,
# so that no choice of addresses lands a flood in one set without the key.

cdef inline fl_neigh6 *neigh6_set(fl_engine *e, const uint32_t *ip) noexcept nogil:
    cdef uint32_t h = hsiphash_1u32(ip[0], e.neigh_k0, e.neigh_k1)
    h = hsiphash_1u32(ip[1] ^ h, e.neigh_k0, e.neigh_k1)
    h = hsiphash_1u32(ip[2] ^ h, e.neigh_k0, e.neigh_k1)
    h = hsiphash_1u32(ip[3] ^ h, e.neigh_k0, e.neigh_k1)
    return &e.neigh6[<size_t>(h & e.neigh6_set_mask) * NEIGH_WAYS]


cdef inline bint neigh6_live(fl_neigh6 *nb, uint32_t tick) noexcept nogil:
    if not (nb.flags & NF_USED):
        return False
    return (nb.flags & NF_KERNEL) != 0 or tick - nb.seen < NEIGH_LEARNED_TICKS


cdef inline fl_neigh6 *neigh6_find(fl_engine *e, const uint32_t *ip, uint32_t tick) noexcept nogil:
    cdef fl_neigh6 *s
    cdef int w
    if e.neigh6 == NULL:
        return NULL
    s = neigh6_set(e, ip)
    for w in range(NEIGH_WAYS):
        if addr_eq(s[w].ip, ip) and neigh6_live(&s[w], tick):
            s[w].seen = tick
            return &s[w]
    return NULL


cdef fl_neigh6 *neigh6_slot(fl_engine *e, const uint32_t *ip, uint32_t tick,
                            bint kernel) noexcept nogil:
    # as neigh_slot: its own slot, a free or aged-out one, the oldest learned one, and for
    # a kernel entry the oldest kernel one; NULL when a learned one would push out a kernel one
    cdef fl_neigh6 *s = neigh6_set(e, ip)
    cdef fl_neigh6 *free_nb = NULL
    cdef fl_neigh6 *old = NULL
    cdef fl_neigh6 *old_k = NULL
    cdef int w
    for w in range(NEIGH_WAYS):
        if (s[w].flags & NF_USED) and addr_eq(s[w].ip, ip):
            return &s[w]
        if not neigh6_live(&s[w], tick):
            if free_nb == NULL:
                free_nb = &s[w]
        elif s[w].flags & NF_KERNEL:
            if old_k == NULL or tick - s[w].seen > tick - old_k.seen:
                old_k = &s[w]
        elif old == NULL or tick - s[w].seen > tick - old.seen:
            old = &s[w]
    if free_nb != NULL:
        return free_nb
    if old != NULL:
        return old
    return old_k if kernel else NULL


cdef inline void neigh6_put(fl_neigh6 *nb, const uint32_t *ip, const uint8_t *mac,
                            uint32_t ifindex, uint32_t tick, uint8_t flags) noexcept nogil:
    memcpy(nb.ip, ip, 16)
    nb.ifindex = ifindex
    memcpy(nb.mac, mac, 6)
    nb.seen = tick
    nb.flags = flags


cdef void neigh6_learn(fl_engine *e, const uint32_t *ip, const uint8_t *mac,
                       uint32_t ifindex) noexcept nogil:
    # neigh_learn for a v6 client: only when it has no live entry (a spoofed SYN must not
    # redirect a known client's replies). Every v6 client is learned: an off-link one's
    # frames came from its router, whose MAC is then the right next hop anyway.
    cdef uint32_t tick = neigh_tick(e.now)
    cdef fl_neigh6 *nb
    if e.neigh6 == NULL:
        return
    nb = neigh6_slot(e, ip, tick, False)
    if nb == NULL:
        return
    if (nb.flags & NF_USED) and addr_eq(nb.ip, ip) and neigh6_live(nb, tick):
        if memcmp(nb.mac, mac, 6) == 0:
            nb.seen = tick
        return
    neigh6_put(nb, ip, mac, ifindex, tick, NF_USED)
