"""The reference engine's SCTP (pure Python, as dataplane/sctp.pxi in C): the event a packet
means (its first chunk; an ABORT behind a COOKIE-ECHO/COOKIE-ACK counts), IPVS's three
next-state tables and per-state timers (ip_vs_proto_sctp.c), the state names `ipvsadm -Lnc`
prints, and CRC32c. Imported by engine/reference.py only.
"""

SCTP_HDR = 12
S_ESTABLISHED = 8
S_CLOSED = 13
S_LAST = 14
EV_DATA, EV_INIT = 0, 1

# chunk type -> event (DATA 0, INIT 1, INIT-ACK 2, COOKIE-ECHO 3, COOKIE-ACK 4, SHUTDOWN 5,
# SHUTDOWN-ACK 6, SHUTDOWN-COMPLETE 7, ERROR 8, ABORT 9); types from 15 up are DATA
EVENT_OF = (0, 1, 2, 0, 0, 0, 9, 5, 6, 8, 3, 4, 0, 0, 7)

# NEXT[direction][event][state]; directions "input", "output", "input_only"; states
# NONE INIT1 INIT C-SENT C-REPLIED C-WAIT COOKIE C-ECHOED ESTABLISHED S-SENT S-RECEIVED
# S-ACK-SENT REJECTED CLOSED
NEXT = {
    "input": (
        (8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13),
        (1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 2, 2),
        (5, 5, 5, 3, 4, 6, 6, 7, 8, 9, 10, 11, 12, 13),
        (4, 2, 2, 4, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13),
        (8, 1, 2, 3, 4, 5, 6, 8, 8, 9, 10, 11, 12, 13),
        (10, 1, 2, 3, 4, 5, 6, 7, 10, 9, 10, 11, 12, 13),
        (13, 2, 2, 3, 4, 5, 6, 7, 8, 13, 10, 13, 12, 13),
        (13, 13, 13, 3, 4, 5, 6, 7, 8, 9, 10, 13, 12, 13),
        (13, 1, 2, 3, 4, 5, 6, 13, 8, 9, 10, 11, 12, 13),
        (13, 13, 13, 13, 13, 12, 13, 13, 13, 13, 13, 13, 13, 13)),
    "output": (
        (8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13),
        (5, 5, 5, 5, 5, 5, 5, 5, 8, 5, 5, 5, 5, 5),
        (3, 3, 3, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13),
        (7, 7, 7, 7, 7, 7, 7, 7, 8, 9, 10, 11, 12, 13),
        (8, 8, 8, 8, 8, 8, 8, 8, 8, 9, 10, 11, 12, 13),
        (9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 10, 11, 12, 13),
        (11, 11, 11, 11, 11, 5, 6, 7, 8, 11, 11, 11, 12, 13),
        (13, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13),
        (13, 13, 13, 13, 13, 5, 6, 7, 8, 9, 10, 11, 12, 13),
        (13, 12, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13)),
    "input_only": (
        (8, 1, 2, 3, 4, 8, 6, 7, 8, 9, 10, 11, 12, 13),
        (1, 2, 2, 2, 2, 2, 6, 7, 8, 9, 10, 11, 2, 2),
        (7, 7, 7, 7, 7, 7, 6, 7, 8, 9, 10, 11, 12, 13),
        (8, 8, 8, 8, 8, 8, 6, 7, 8, 9, 10, 11, 12, 13),
        (8, 1, 2, 8, 8, 5, 8, 8, 8, 9, 10, 11, 12, 13),
        (10, 1, 2, 3, 4, 5, 6, 7, 10, 9, 10, 11, 12, 13),
        (13, 2, 2, 3, 4, 5, 6, 7, 13, 13, 10, 13, 12, 13),
        (13, 13, 13, 13, 13, 5, 6, 7, 8, 9, 13, 13, 12, 13),
        (13, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13),
        (13, 13, 13, 13, 13, 12, 13, 13, 13, 13, 13, 13, 13, 13)),
}

TIMEOUTS = (2, 4, 61, 61, 61, 61, 61, 61, 900, 61, 61, 61, 4, 61)

STATE_NAMES = ("NONE", "INIT1", "INIT", "C-SENT", "C-REPLIED", "C-WAIT", "COOKIE",
               "C-ECHOED", "ESTABLISHED", "S-SENT", "S-RECEIVED", "S-ACK-SENT",
               "REJECTED", "CLOSED")


def _crc_table():
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        out.append(c)
    return out


_CRC_T = _crc_table()


def crc32c(data, crc=0xFFFFFFFF):
    """The running CRC32c register over `data` (start 0xFFFFFFFF; the final value is ~crc)."""
    t = _CRC_T
    for byte in data:
        crc = (crc >> 8) ^ t[(crc ^ byte) & 0xFF]
    return crc


def packet_crc(b, l4, n):
    """The SCTP packet's CRC32c (checksum field taken as zero), as the wire's 4 bytes."""
    crc = crc32c(b[l4:l4 + 8])
    crc = crc32c(b"\0\0\0\0", crc)
    crc = crc32c(b[l4 + SCTP_HDR:l4 + n], crc)
    return ((~crc) & 0xFFFFFFFF).to_bytes(4, "little")


def parse_event(b, l4, l4len):
    """The packet's event, or None when it is malformed (no whole first chunk header, or a
    first chunk shorter than 4 bytes or past the packet)."""
    if l4len < SCTP_HDR + 4:
        return None
    t = b[l4 + SCTP_HDR]
    clen = (b[l4 + SCTP_HDR + 2] << 8) | b[l4 + SCTP_HDR + 3]
    if clen < 4 or clen > l4len - SCTP_HDR:
        return None
    if t in (10, 11):
        nxt = SCTP_HDR + ((clen + 3) & ~3)
        if nxt + 4 <= l4len and b[l4 + nxt] == 6:
            t = 6
    return EVENT_OF[t] if t < 15 else EV_DATA


def next_state(c, output, event, noout_flag):
    """(new state, new flags) of conn `c` for `event` in direction `output`."""
    table = "output" if output else "input"
    flags = c.flags
    if flags & noout_flag:
        if output:
            flags &= ~noout_flag
        else:
            table = "input_only"
    return NEXT[table][event][c.state if c.state < S_LAST else S_CLOSED], flags


def nat_ports(b, l4, n, off, old, new, partial):
    """NAT's port rewrite at l4+off with the CRC checked before and set after; returns a
    drop reason or None (as sctp_nat_ports)."""
    if old == new and not partial:
        return None
    if not partial and packet_crc(b, l4, n) != bytes(b[l4 + 8:l4 + 12]):
        return "bad_checksum"
    b[l4 + off:l4 + off + 2] = new.to_bytes(2, "big")
    b[l4 + 8:l4 + 12] = packet_crc(b, l4, n)
    return None
