"""The engine's contract, written once: the numbers and names that cross the boundary between
the control plane and the data plane. Forwarding methods, hash-scheduler kinds and their flag
bits, protocols, verdicts, counter names and limits. It imports nothing, so the director, the
daemon, the config and the extension (through generated constants) all read the same facts.
"""

# -- forwarding methods: id in the engine, ipvsadm's option, `ipvsadm -L`'s Forward label ----
FWD_NONE = 0
FWD_DR = 1
FWD_NAT = 2
FWD_TUN = 3
FWD_NAT_OUT = 4            # the engine's transmit slot for NAT replies (RS -> client)

# name -> (engine id, ipvsadm option, listing label); the names are the --mode values
FWD_METHODS = {
    "dr": (FWD_DR, "-g", "Route"),     # rewrite MACs only
    "nat": (FWD_NAT, "-m", "Masq"),    # rewrite the destination address (and back)
    "tun": (FWD_TUN, "-i", "Tunnel"),  # IPIP-encapsulate to the dest
}
FWD_NAMES = tuple(FWD_METHODS)         # ("dr", "nat", "tun"): what --mode and `fwd =` take
# further names the engine's set_dest(fwd=...) accepts: ipvsadm's option letters and words
FWD_ALIASES = {"route": FWD_DR, "g": FWD_DR, "masq": FWD_NAT, "m": FWD_NAT,
               "ipip": FWD_TUN, "i": FWD_TUN}

# -- TUN's encapsulations (ipvsadm --tun-type), as the kernel numbers them ------------------
TUN_IPIP = 0
TUN_GUE = 1
TUN_GRE = 2
TUN_TYPES = {"ipip": TUN_IPIP, "gue": TUN_GUE, "gre": TUN_GRE}
GUE_PORT_MIN = 32768       # the kernel's default ip_local_port_range: GUE's source ports
GUE_PORT_MAX = 60999
TUN_F_CSUM = 1             # --tun-csum (IP_VS_TUNNEL_ENCAP_FLAG_CSUM)
TUN_F_REMCSUM = 2          # --tun-remcsum; neither flag: --tun-nocsum
TUN_FLAG_NAMES = {"nocsum": 0, "csum": TUN_F_CSUM, "remcsum": TUN_F_REMCSUM}


def tun_args(tun_type, tun_port, tun_flags):
    """(type id, port, flag bits) for a TUN dest's tunnel settings, as set_dest takes them:
    tun_type a name of TUN_TYPES or its id, tun_flags bits or a name of TUN_FLAG_NAMES.
    ValueError on what the kernel would refuse: GUE needs a port 1..65535, remcsum is GUE's
    only, csum and remcsum exclude each other, ipip takes neither port nor flags."""
    if isinstance(tun_type, str):
        if tun_type.lower() not in TUN_TYPES:
            raise ValueError(f"tun_type must be ipip, gue or gre, got {tun_type!r}")
        tun_type = TUN_TYPES[tun_type.lower()]
    if tun_type not in TUN_TYPES.values():
        raise ValueError(f"tun_type must be 0 (ipip), 1 (gue) or 2 (gre), got {tun_type!r}")
    if isinstance(tun_flags, str):
        if tun_flags.lower() not in TUN_FLAG_NAMES:
            raise ValueError(f"tun_flags must be nocsum, csum or remcsum, got {tun_flags!r}")
        tun_flags = TUN_FLAG_NAMES[tun_flags.lower()]
    if tun_flags not in (0, TUN_F_CSUM, TUN_F_REMCSUM):
        raise ValueError(f"tun_flags must be 0, 1 (csum) or 2 (remcsum), got {tun_flags!r}")
    if not isinstance(tun_port, int) or not 0 <= tun_port <= 65535:
        raise ValueError(f"tun_port out of range: {tun_port!r}")
    if tun_type == 1 and tun_port == 0:
        raise ValueError("a gue tunnel needs tun_port 1..65535")
    if tun_type != 1 and tun_port:
        raise ValueError("tun_port is for gue tunnels only")
    if tun_type == 0 and tun_flags:
        raise ValueError("ipip tunnels take no checksum flags")
    if tun_type == 2 and tun_flags == TUN_F_REMCSUM:
        raise ValueError("remcsum is for gue tunnels only")
    return tun_type, tun_port, tun_flags


# -- schedulers served in C from an exported table (0: the Python callback decides) -----------
SCHED_CALLBACK = 0
SCHED_SH = 1
SCHED_DH = 2
SCHED_MH = 3
HASH_KINDS = {"sh": SCHED_SH, "dh": SCHED_DH, "mh": SCHED_MH}

# flag bits of a hash scheduler, from ipvsadm's -b flags
SCHED_F_FALLBACK = 1       # sh-fallback / mh-fallback
SCHED_F_PORT = 2           # sh-port / mh-port
SCHED_FLAG_BITS = {"sh-fallback": SCHED_F_FALLBACK, "mh-fallback": SCHED_F_FALLBACK,
                   "sh-port": SCHED_F_PORT, "mh-port": SCHED_F_PORT}

# -- protocols the engine forwards (name -> IP protocol number) -------------------------------
PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}

# -- verdicts of a frame ------------------------------------------------------------------------
VERDICT_DROP = 0           # consumed: malformed, no dest, table full, ...
VERDICT_TX = 1             # transmit the rewritten frame on its output interface
VERDICT_PENDING = 2        # parked until the Python scheduler has decided (internal)
VERDICT_PASS = 3           # not ours (not IPv4, no virtual service): leave it to the host

# -- global counters, in the engine's index order --------------------------------------------
COUNTER_NAMES = ("rx", "tx", "passed", "malformed", "not_ip", "no_service", "table_full",
                 "tcp_not_syn", "no_dest", "fragment", "bad_checksum", "frag_needed_sent",
                 "no_headroom", "callback_error", "no_route", "oversize", "conns_created",
                 "conns_expired", "ttl_exceeded", "csum_completed", "frag_held", "frag_reasm",
                 "frag_timeout", "frag_bad", "frag_no_room", "frag_out",
                 "dest_unavailable", "drop_packet", "drop_entry",
                 # ICMP errors (dest unreachable, source quench, time exceeded) quoting a
                 # packet of a conn: forwarded or translated / quoting none (to the host) /
                 # dropped for a bad ICMP checksum
                 "icmp_related", "icmp_no_conn", "icmp_bad_checksum",
                 # nat_icmp_send: port unreachables sent to a NAT real server for a packet
                 # of no conn
                 "nat_icmp_sent",
                 # IPv6 packets to a VIP with an extension header the engine does not walk
                 "v6_exthdr",
                 # SCTP packets of no conn whose first chunk is not an INIT (or is an
                 # ABORT): not scheduled, left to the host as IPVS leaves them
                 "sctp_not_init")

# -- the IPVS sysctls the engine applies: name -> (default, lo, hi), as Linux 6.1 has them
# (amemthresh counts free conn entries here, free memory pages there). control/sysctl.py
# gives them their meanings and adds the ones the director keeps alone.
ENGINE_SYSCTLS = {
    "expire_nodest_conn": (0, 0, 1), "expire_quiescent_template": (0, 0, 1),
    "conn_reuse_mode": (1, 0, 3), "sloppy_tcp": (0, 0, 1),
    "drop_entry": (0, 0, 3), "drop_packet": (0, 0, 3), "secure_tcp": (0, 0, 3),
    "amemthresh": (1024, 0, 0xFFFFFFFF), "am_droprate": (10, 1, 0xFFFFFFFF),
    "nat_icmp_send": (0, 0, 1), "pmtu_disc": (1, 0, 1),
    # connection sync (a master's sending policy): the kernel's sync_threshold sysctl is the
    # pair "threshold period", here two names; sync_refresh_period in seconds (at most
    # INT_MAX jiffies at HZ 250); sync_qlen_max counts messages (the kernel's default is a
    # share of free memory: 15191 on the oracle's guest)
    "sync_threshold": (3, 0, 0x7FFFFFFF), "sync_period": (50, 0, 0x7FFFFFFF),
    "sync_refresh_period": (0, 0, 8589934), "sync_retries": (0, 0, 3),
    "sync_persist_mode": (0, 0, 0x7FFFFFFF), "sync_qlen_max": (4096, 0, 1 << 24),
}

# -- limits ----------------------------------------------------------------------------------
CAPACITY_DEFAULT = 1 << 20         # connection entries allocated at start
CAPACITY_MIN = 16
CAPACITY_MAX = 1 << 31
MTU_MIN = 68                       # RFC 791's minimum; --mtu's range
MTU_MAX = 65535
MTU_DEFAULT = 1500                 # the engine's MTU towards the real servers unless told
BATCH_DEFAULT = 64                 # frames per pass of the batch loop
BATCH_MAX = 256
MAX_SERVICES = 65535               # service ids 1..65535 (0 = none)
MAX_VIPS = 65536
FRAG_MEM_DEFAULT = 4 << 20         # bytes of fragment payload held for reassembly (ipfrag_high_thresh)
FRAG_MEM_MIN = 64 << 10
FRAG_MEM_MAX = 64 << 20            # the area's block indices are 16 bits
FRAG_TIMEOUT = 30                  # seconds an incomplete datagram is kept (ipfrag_time)
FRAG6_TIMEOUT = 60                 # the same for IPv6 (ip6frag_time)

# -- ring limits: the largest frame each backend carries -------------------------------------
L2_MAX = 18                        # Ethernet header + one 802.1Q tag
XDP_HEADROOM = 256                 # the kernel's XDP_PACKET_HEADROOM in front of an AF_XDP frame
UMEM_FRAME_SIZES = (2048, 4096)    # AF_XDP chunk sizes (no multi-buffer: one frame, one chunk)
RING_MAX_PORTS = 64                # ring sockets one loop polls (every queue of every interface)
BACKENDS = ("xdp", "packet")


def max_mtu(backend: str, frame_size: int = 4096) -> int:
    """The largest interface MTU whose frames the backend carries whole: AF_XDP puts a
    frame in one UMEM chunk after the kernel's 256 bytes of headroom (TUN's outer header
    goes in that headroom), so 3822 with 4096-byte chunks, 1774 with 2048; AF_PACKET sizes
    its ring slots from the MTU, so any MTU up to 65535."""
    if backend == "xdp":
        if frame_size not in UMEM_FRAME_SIZES:
            raise ValueError(f"frame_size must be one of {UMEM_FRAME_SIZES}, got {frame_size}")
        return frame_size - XDP_HEADROOM - L2_MAX
    if backend == "packet":
        return MTU_MAX
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def mtu_problem(backend: str, ifname: str, mtu: int, frame_size: int = 4096) -> str | None:
    """One line saying why interface `ifname` with `mtu` cannot be served by `backend`,
    or None when its frames fit."""
    top = max_mtu(backend, frame_size)
    if mtu <= top:
        return None
    return (f"{ifname}: MTU {mtu} is too large for the {backend} backend "
            f"({frame_size}-byte frames); the largest supported MTU is {top}")


def fwd_id(name: str) -> int:
    """The engine's id of forwarding method `name` ("dr", "nat", "tun"); KeyError otherwise."""
    return FWD_METHODS[name][0]


def sched_flag_bits(flags) -> int:
    """The engine's flag bits for a hash scheduler's ipvsadm -b flags (others are ignored)."""
    bits = 0
    for f in flags:
        bits |= SCHED_FLAG_BITS.get(f, 0)
    return bits
