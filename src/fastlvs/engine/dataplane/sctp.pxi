# SCTP as ip_vs_proto_sctp.c handles it: the event is the first chunk's type (an ABORT bundled
# after a COOKIE-ECHO/COOKIE-ACK counts as the ABORT), three next-state tables (input, output,
# input-only for DR/TUN), a timeout per state, activeconns only in ESTABLISHED. Only a packet
# whose first chunk is an INIT opens a conn. NAT rewrites ports and so recomputes the CRC32c
# (SCTP's checksum covers no IP address, so an address-only rewrite leaves it); a packet that
# arrives with a bad CRC is dropped rather than given a good one.

cdef enum:
    IPPROTO_SCTP = 132
    SCTP_HDR = 12           # ports, verification tag, checksum

    # states, numbered as ip_vs.h numbers them
    SCTP_S_NONE = 0
    SCTP_S_INIT1 = 1
    SCTP_S_INIT = 2
    SCTP_S_COOKIE_SENT = 3
    SCTP_S_COOKIE_REPLIED = 4
    SCTP_S_COOKIE_WAIT = 5
    SCTP_S_COOKIE = 6
    SCTP_S_COOKIE_ECHOED = 7
    SCTP_S_ESTABLISHED = 8
    SCTP_S_SHUTDOWN_SENT = 9
    SCTP_S_SHUTDOWN_RECEIVED = 10
    SCTP_S_SHUTDOWN_ACK_SENT = 11
    SCTP_S_REJECTED = 12
    SCTP_S_CLOSED = 13
    SCTP_S_LAST = 14

    # events (what fl_pkt.tcpflags holds for an SCTP packet)
    SCTP_EV_DATA = 0        # DATA, SACK, HEARTBEAT(-ACK), ECNE, CWR and unknown chunks
    SCTP_EV_INIT = 1
    SCTP_EV_INIT_ACK = 2
    SCTP_EV_COOKIE_ECHO = 3
    SCTP_EV_COOKIE_ACK = 4
    SCTP_EV_SHUTDOWN = 5
    SCTP_EV_SHUTDOWN_ACK = 6
    SCTP_EV_SHUTDOWN_COMPLETE = 7
    SCTP_EV_ERROR = 8
    SCTP_EV_ABORT = 9

# chunk type (RFC 4960 section 3.2) -> event; types from 15 up are DATA
cdef uint8_t[15] SCTP_EVENT_OF = [
    SCTP_EV_DATA, SCTP_EV_INIT, SCTP_EV_INIT_ACK, SCTP_EV_DATA, SCTP_EV_DATA, SCTP_EV_DATA,
    SCTP_EV_ABORT, SCTP_EV_SHUTDOWN, SCTP_EV_SHUTDOWN_ACK, SCTP_EV_ERROR,
    SCTP_EV_COOKIE_ECHO, SCTP_EV_COOKIE_ACK, SCTP_EV_DATA, SCTP_EV_DATA,
    SCTP_EV_SHUTDOWN_COMPLETE]

# Next state: [direction * 10 + event][state]; directions input 0, output 1, input-only 2.
# Columns: NO I1 IN CS CR CW CO CE ES SS SR SA RJ CL (the SCTP_S_* order).
cdef uint8_t[30][14] SCTP_NEXT = [
    # input: the client's packets of a conn whose server answers through us
    [8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],        # data
    [1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 2, 2],          # init
    [5, 5, 5, 3, 4, 6, 6, 7, 8, 9, 10, 11, 12, 13],        # init-ack
    [4, 2, 2, 4, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],        # cookie-echo
    [8, 1, 2, 3, 4, 5, 6, 8, 8, 9, 10, 11, 12, 13],        # cookie-ack
    [10, 1, 2, 3, 4, 5, 6, 7, 10, 9, 10, 11, 12, 13],      # shutdown
    [13, 2, 2, 3, 4, 5, 6, 7, 8, 13, 10, 13, 12, 13],      # shutdown-ack
    [13, 13, 13, 3, 4, 5, 6, 7, 8, 9, 10, 13, 12, 13],     # shutdown-complete
    [13, 1, 2, 3, 4, 5, 6, 13, 8, 9, 10, 11, 12, 13],      # error
    [13, 13, 13, 13, 13, 12, 13, 13, 13, 13, 13, 13, 13, 13],  # abort
    # output: the server's packets
    [8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
    [5, 5, 5, 5, 5, 5, 5, 5, 8, 5, 5, 5, 5, 5],
    [3, 3, 3, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
    [7, 7, 7, 7, 7, 7, 7, 7, 8, 9, 10, 11, 12, 13],
    [8, 8, 8, 8, 8, 8, 8, 8, 8, 9, 10, 11, 12, 13],
    [9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 10, 11, 12, 13],
    [11, 11, 11, 11, 11, 5, 6, 7, 8, 11, 11, 11, 12, 13],
    [13, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
    [13, 13, 13, 13, 13, 5, 6, 7, 8, 9, 10, 11, 12, 13],
    [13, 12, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13],
    # input-only: the client's packets of a DR/TUN conn (the server is never seen)
    [8, 1, 2, 3, 4, 8, 6, 7, 8, 9, 10, 11, 12, 13],
    [1, 2, 2, 2, 2, 2, 6, 7, 8, 9, 10, 11, 2, 2],
    [7, 7, 7, 7, 7, 7, 6, 7, 8, 9, 10, 11, 12, 13],
    [8, 8, 8, 8, 8, 8, 6, 7, 8, 9, 10, 11, 12, 13],
    [8, 1, 2, 8, 8, 5, 8, 8, 8, 9, 10, 11, 12, 13],
    [10, 1, 2, 3, 4, 5, 6, 7, 10, 9, 10, 11, 12, 13],
    [13, 2, 2, 3, 4, 5, 6, 7, 13, 13, 10, 13, 12, 13],
    [13, 13, 13, 13, 13, 5, 6, 7, 8, 9, 13, 13, 12, 13],
    [13, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
    [13, 13, 13, 13, 13, 12, 13, 13, 13, 13, 13, 13, 13, 13],
]

# seconds per state: the short ones guard against INITs that are dropped or refused, the
# rest are the largest RTO (60 s) plus one, ESTABLISHED 15 minutes
cdef uint32_t[14] SCTP_DEFAULT_TIMEOUTS = [2, 4, 61, 61, 61, 61, 61, 61, 900, 61, 61, 61, 4, 61]

# the names `ipvsadm -Lnc` prints (the kernel's state name table)
SCTP_STATE_NAMES = ("NONE", "INIT1", "INIT", "C-SENT", "C-REPLIED", "C-WAIT", "COOKIE",
                    "C-ECHOED", "ESTABLISHED", "S-SENT", "S-RECEIVED", "S-ACK-SENT",
                    "REJECTED", "CLOSED")

cdef extern from "fl_crc32c.h":
    uint32_t fl_crc32c_hw(uint32_t crc, const uint8_t *p, uint32_t n) noexcept nogil
    int fl_crc32c_hw_ok() noexcept nogil

# CRC32c (Castagnoli, reflected polynomial 0x82F63B78): the CPU's crc32 instruction where it
# has one (about 8 times the tables' speed), else slice-by-8 tables filled at import
cdef uint32_t[8][256] CRC32C_T
cdef bint CRC32C_HW = fl_crc32c_hw_ok() != 0


cdef void _crc32c_init():
    cdef uint32_t i, j, c
    for i in range(256):
        c = i
        for j in range(8):
            c = (c >> 1) ^ (0x82F63B78 if (c & 1) else 0)
        CRC32C_T[0][i] = c
    for i in range(256):
        c = CRC32C_T[0][i]
        for j in range(1, 8):
            c = (c >> 8) ^ CRC32C_T[0][c & 0xFF]
            CRC32C_T[j][i] = c


_crc32c_init()


cdef inline uint32_t crc32c_update(uint32_t crc, const uint8_t *p, uint32_t n) noexcept nogil:
    cdef uint32_t lo, hi
    if CRC32C_HW:
        return fl_crc32c_hw(crc, p, n)
    while n >= 8:
        lo = crc ^ (<uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16)
                    | (<uint32_t>p[3] << 24))
        hi = <uint32_t>p[4] | (<uint32_t>p[5] << 8) | (<uint32_t>p[6] << 16) \
            | (<uint32_t>p[7] << 24)
        crc = (CRC32C_T[7][lo & 0xFF] ^ CRC32C_T[6][(lo >> 8) & 0xFF]
               ^ CRC32C_T[5][(lo >> 16) & 0xFF] ^ CRC32C_T[4][lo >> 24]
               ^ CRC32C_T[3][hi & 0xFF] ^ CRC32C_T[2][(hi >> 8) & 0xFF]
               ^ CRC32C_T[1][(hi >> 16) & 0xFF] ^ CRC32C_T[0][hi >> 24])
        p += 8
        n -= 8
    while n > 0:
        crc = (crc >> 8) ^ CRC32C_T[0][(crc ^ p[0]) & 0xFF]
        p += 1
        n -= 1
    return crc


cdef inline uint32_t sctp_crc(const uint8_t *l4, uint32_t n) noexcept nogil:
    # The packet's CRC32c with its checksum field taken as zero, as the wire carries it
    # (little-endian bytes, read back here as a host-order word of that byte order).
    cdef uint8_t zero[4]
    cdef uint32_t crc
    zero[0] = 0
    zero[1] = 0
    zero[2] = 0
    zero[3] = 0
    crc = crc32c_update(0xFFFFFFFF, l4, 8)
    crc = crc32c_update(crc, zero, 4)
    crc = crc32c_update(crc, l4 + SCTP_HDR, n - SCTP_HDR)
    return ~crc


cdef inline bint sctp_crc_ok(const uint8_t *l4, uint32_t n) noexcept nogil:
    cdef uint32_t got = (<uint32_t>l4[8] | (<uint32_t>l4[9] << 8) | (<uint32_t>l4[10] << 16)
                         | (<uint32_t>l4[11] << 24))
    return sctp_crc(l4, n) == got


cdef inline void sctp_crc_set(uint8_t *l4, uint32_t n) noexcept nogil:
    cdef uint32_t crc = sctp_crc(l4, n)
    l4[8] = <uint8_t>crc
    l4[9] = <uint8_t>(crc >> 8)
    l4[10] = <uint8_t>(crc >> 16)
    l4[11] = <uint8_t>(crc >> 24)


cdef inline int sctp_parse(const uint8_t *l4, uint32_t l4len, fl_pkt *p) noexcept nogil:
    # The common header and the first chunk's header must be there, and the first chunk
    # must fit: anything else is malformed. p.tcpflags gets the event (set_sctp_state's).
    cdef uint32_t clen, nxt
    cdef uint8_t t
    if l4len < SCTP_HDR + 4:
        return C_MALFORMED
    t = l4[SCTP_HDR]
    clen = rd16(l4 + SCTP_HDR + 2)
    if clen < 4 or clen > l4len - SCTP_HDR:
        return C_MALFORMED
    if t == 10 or t == 11:
        # an ABORT bundled behind a COOKIE-ECHO / COOKIE-ACK is what the packet means
        nxt = SCTP_HDR + ((clen + 3) & ~3u)
        if nxt + 4 <= l4len and l4[nxt] == 6:
            t = 6
    p.tcpflags = SCTP_EVENT_OF[t] if t < 15 else SCTP_EV_DATA
    return PARSE_OK


cdef inline void sctp_set_state(fl_engine *e, fl_conn *c, bint output,
                                uint8_t event) noexcept nogil:
    cdef int row = 10 if output else 0
    cdef int new_state
    cdef fl_dest *d
    if c.flags & CF_NOOUTPUT:
        if output:
            c.flags &= ~CF_NOOUTPUT
        else:
            row = 20
    new_state = SCTP_NEXT[row + event][c.state if c.state < SCTP_S_LAST else SCTP_S_CLOSED]
    if new_state != c.state and c.dest != 0:
        d = &e.dests[c.dest]
        if not (c.flags & CF_INACTIVE) and new_state != SCTP_S_ESTABLISHED:
            d.activeconns -= 1
            d.inactconns += 1
            c.flags |= CF_INACTIVE
        elif (c.flags & CF_INACTIVE) and new_state == SCTP_S_ESTABLISHED:
            d.activeconns += 1
            d.inactconns -= 1
            c.flags &= ~CF_INACTIVE
    c.state = <uint8_t>new_state
    c.timeout = e.sctp_timeouts[new_state]


cdef int sctp_nat_ports(fl_frame *f, uint8_t *l4, uint32_t l4len, uint32_t off,
                        uint16_t old, uint16_t new) noexcept nogil:
    # NAT's port rewrite (off 0: source, 2: destination) and the CRC32c over the packet:
    # checked before (a bad one is dropped, never mended) and set after. Returns a C_*
    # counter or -1. A sender that left the CRC to its NIC (CHECKSUM_PARTIAL) gets it
    # computed, as the kernel's sctp_nat_csum does.
    if old == new and f.csum != FRAME_CSUM_PARTIAL:
        return -1
    if f.csum != FRAME_CSUM_PARTIAL and not sctp_crc_ok(l4, l4len):
        return C_BAD_CHECKSUM
    wr16(l4 + off, new)
    sctp_crc_set(l4, l4len)
    return -1
