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
PROTOCOLS = {"tcp": 6, "udp": 17}

# -- verdicts of a frame ------------------------------------------------------------------------
VERDICT_DROP = 0           # consumed: malformed, no dest, table full, ...
VERDICT_TX = 1             # transmit the rewritten frame on its output interface
VERDICT_PENDING = 2        # parked until the Python scheduler has decided (internal)
VERDICT_PASS = 3           # not ours (not IPv4, no virtual service): leave it to the host

# -- global counters, in the engine's index order --------------------------------------------
COUNTER_NAMES = ("rx", "tx", "passed", "malformed", "not_ip", "no_service", "table_full",
                 "tcp_not_syn", "no_dest", "fragment", "bad_checksum", "frag_needed_sent",
                 "no_headroom", "callback_error", "no_route", "oversize", "conns_created",
                 "conns_expired", "dest_unavailable", "drop_packet", "drop_entry")

# -- limits ----------------------------------------------------------------------------------
CAPACITY_DEFAULT = 1 << 20         # connection entries allocated at start
CAPACITY_MIN = 16
CAPACITY_MAX = 1 << 31
MTU_MIN = 68                       # RFC 791's minimum; --mtu's range
MTU_MAX = 65535
BATCH_DEFAULT = 64                 # frames per pass of the batch loop
BATCH_MAX = 256
MAX_SERVICES = 65535               # service ids 1..65535 (0 = none)
MAX_VIPS = 65536


def fwd_id(name: str) -> int:
    """The engine's id of forwarding method `name` ("dr", "nat", "tun"); KeyError otherwise."""
    return FWD_METHODS[name][0]


def sched_flag_bits(flags) -> int:
    """The engine's flag bits for a hash scheduler's ipvsadm -b flags (others are ignored)."""
    bits = 0
    for f in flags:
        bits |= SCHED_FLAG_BITS.get(f, 0)
    return bits
