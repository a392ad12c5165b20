# The client-MAC table: where NAT replies to on-link clients go. A set-associative table
# (NEIGH_WAYS entries a set, a set chosen by hsiphash under a key drawn at Engine creation),
# as many slots as the connection table has entries: a lookup or insert reads one set and
# nothing else, and a full set evicts its oldest entry. Off-link clients (outside the
# learning interface's subnets) need no entry: their replies go to the gateway's MAC.

cdef inline uint32_t neigh_tick(uint64_t now_ns) noexcept nogil:
    return <uint32_t>(now_ns >> NEIGH_TICK_SHIFT)


cdef inline fl_neigh *neigh_set(fl_engine *e, uint32_t ip) noexcept nogil:
    cdef uint32_t h = hsiphash_1u32(ip, e.neigh_k0, e.neigh_k1)
    return &e.neigh[<size_t>(h & e.neigh_set_mask) * NEIGH_WAYS]


cdef inline bint neigh_live(fl_neigh *nb, uint32_t tick) noexcept nogil:
    # Kernel entries stay until the control plane replaces them; learned ones age out.
    if not (nb.flags & NF_USED):
        return False
    return (nb.flags & NF_KERNEL) != 0 or tick - nb.seen < NEIGH_LEARNED_TICKS


cdef inline bint neigh_on_link(fl_engine *e, uint32_t ip) noexcept nogil:
    cdef uint32_t i
    if e.nsubnets == 0:
        return True
    for i in range(e.nsubnets):
        if (ip & e.subnet_mask[i]) == e.subnet_addr[i]:
            return True
    return False


cdef inline fl_neigh *neigh_find(fl_engine *e, uint32_t ip, uint32_t tick) noexcept nogil:
    # The live entry of `ip`, marked used now, or NULL.
    cdef fl_neigh *s = neigh_set(e, ip)
    cdef int w
    for w in range(NEIGH_WAYS):
        if s[w].ip == ip and neigh_live(&s[w], tick):
            s[w].seen = tick
            return &s[w]
    return NULL


cdef fl_neigh *neigh_slot(fl_engine *e, uint32_t ip, uint32_t tick, bint kernel) noexcept nogil:
    # Where an entry for `ip` goes: its own slot, else a free or aged-out one, else the
    # oldest learned entry of the set; a kernel entry may also take the oldest kernel one.
    # NULL when a learned entry would have to push out a kernel one.
    cdef fl_neigh *s = neigh_set(e, ip)
    cdef fl_neigh *free_nb = NULL
    cdef fl_neigh *old = NULL
    cdef fl_neigh *old_k = NULL
    cdef int w
    for w in range(NEIGH_WAYS):
        if (s[w].flags & NF_USED) and s[w].ip == ip:
            return &s[w]
        if not neigh_live(&s[w], tick):
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


cdef inline void neigh_put(fl_neigh *nb, uint32_t ip, const uint8_t *mac, uint32_t ifindex,
                           uint32_t tick, uint8_t flags) noexcept nogil:
    nb.ip = ip
    nb.ifindex = ifindex
    memcpy(nb.mac, mac, 6)
    nb.seen = tick
    nb.flags = flags


cdef void neigh_learn(fl_engine *e, uint32_t ip, const uint8_t *mac,
                      uint32_t ifindex) noexcept nogil:
    # A NAT client opened a connection: remember the MAC its frame came from (the client,
    # or the router in front of it) so the replies go back there before the kernel's
    # neighbour news reaches the control plane. Only when the client has no live entry: a
    # frame's source MAC is the sender's word, so one spoofed SYN must not redirect the
    # replies of a client we already know (the kernel's entries are never touched).
    cdef uint32_t tick = neigh_tick(e.now)
    cdef fl_neigh *nb
    if not neigh_on_link(e, ip):
        return
    nb = neigh_slot(e, ip, tick, False)
    if nb == NULL:
        return
    if (nb.flags & NF_USED) and nb.ip == ip and neigh_live(nb, tick):
        if memcmp(nb.mac, mac, 6) == 0:
            nb.seen = tick
        return
    neigh_put(nb, ip, mac, ifindex, tick, NF_USED)
