# TCP connection states as ip_vs_proto_tcp.c tracks them: three next-state tables (input,
# output, input-only for DR/TUN where replies bypass us), the event chosen from the flags
# with rst > syn > fin > ack priority, and activeconns/inactconns moved on every change.
# While the secure_tcp defence is in force the kernel's tcp_states_dos tables replace them.

cdef enum:
    TCP_DIR_INPUT = 0
    TCP_DIR_OUTPUT = 4
    TCP_DIR_INPUT_ONLY = 8

# Rows: (table offset + event: syn 0, fin 1, ack 2, rst 3); columns: current state
# NO ES SS SR FW TW CL CW LA LI SA.
cdef uint8_t[12][11] TCP_NEXT = [
    # input
    [3, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3],
    [6, 7, 2, 5, 5, 5, 6, 7, 8, 9, 5],
    [1, 1, 2, 1, 4, 5, 6, 7, 6, 9, 1],
    [6, 6, 6, 3, 6, 6, 6, 6, 8, 9, 3],
    # output
    [2, 1, 2, 3, 2, 2, 2, 2, 2, 9, 3],
    [5, 4, 2, 5, 4, 5, 6, 5, 8, 9, 5],
    [1, 1, 2, 1, 4, 5, 6, 7, 8, 1, 1],
    [6, 6, 2, 6, 6, 5, 6, 6, 6, 6, 6],
    # input only
    [3, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3],
    [6, 4, 2, 5, 4, 5, 6, 7, 8, 9, 5],
    [1, 1, 2, 1, 4, 5, 6, 7, 6, 9, 1],
    [6, 6, 6, 3, 6, 6, 6, 6, 8, 9, 6],
]

# tcp_states_dos, same layout: a NAT conn reaches ESTABLISHED only once the server's SYN-ACK
# was seen (SYN_RECV, then SYNACK); an input-only (DR/TUN) conn opens in SYNACK.
cdef uint8_t[12][11] TCP_NEXT_DOS = [
    # input
    [3, 1, 1, 3, 3, 3, 3, 3, 3, 3, 10],
    [6, 7, 2, 5, 5, 5, 6, 7, 8, 9, 10],
    [1, 1, 2, 3, 4, 5, 6, 7, 6, 9, 10],
    [6, 6, 6, 3, 6, 6, 6, 6, 8, 9, 6],
    # output
    [2, 1, 2, 10, 2, 2, 2, 2, 2, 9, 10],
    [5, 4, 2, 5, 4, 5, 6, 5, 8, 9, 5],
    [1, 1, 2, 1, 4, 5, 6, 7, 8, 1, 1],
    [6, 6, 2, 6, 6, 5, 6, 6, 6, 6, 6],
    # input only
    [10, 1, 1, 3, 10, 10, 10, 10, 10, 10, 10],
    [6, 4, 2, 5, 4, 5, 6, 7, 8, 9, 5],
    [1, 1, 2, 1, 4, 5, 6, 7, 6, 9, 1],
    [6, 6, 6, 3, 6, 6, 6, 6, 8, 9, 6],
]

# tcp_state_active_table: SYN_SENT, SYN_RECV, ESTABLISHED and SYNACK count as active.
cdef uint8_t[11] TCP_ACTIVE = [0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1]

cdef uint32_t[12] TCP_DEFAULT_TIMEOUTS = [2, 900, 120, 60, 120, 120, 10, 60, 30, 120, 120, 2]

TCP_STATE_NAMES = ("NONE", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT", "TIME_WAIT",
                   "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "SYNACK")


cdef inline int tcp_state_idx(uint8_t fl) noexcept nogil:
    if fl & TH_RST:
        return 3
    if fl & TH_SYN:
        return 0
    if fl & TH_FIN:
        return 1
    if fl & TH_ACK:
        return 2
    return -1


cdef inline void tcp_set_state(fl_engine *e, fl_conn *c, bint output, uint8_t fl) noexcept nogil:
    cdef int off = TCP_DIR_OUTPUT if output else TCP_DIR_INPUT
    cdef int idx
    cdef int new_state = TCP_S_CLOSE
    cdef fl_dest *d
    if c.flags & CF_NOOUTPUT:
        if output:
            c.flags &= ~CF_NOOUTPUT
        else:
            off = TCP_DIR_INPUT_ONLY
    idx = tcp_state_idx(fl)
    if idx >= 0:
        if e.secure_tcp_on:
            new_state = TCP_NEXT_DOS[off + idx][c.state]
        else:
            new_state = TCP_NEXT[off + idx][c.state]
    if new_state != c.state and c.dest != 0:
        d = &e.dests[c.dest]
        if not (c.flags & CF_INACTIVE) and not TCP_ACTIVE[new_state]:
            d.activeconns -= 1
            d.inactconns += 1
            c.flags |= CF_INACTIVE
        elif (c.flags & CF_INACTIVE) and TCP_ACTIVE[new_state]:
            d.activeconns += 1
            d.inactconns -= 1
            c.flags &= ~CF_INACTIVE
    c.state = <uint8_t>new_state
    c.timeout = e.tcp_timeouts[new_state]
