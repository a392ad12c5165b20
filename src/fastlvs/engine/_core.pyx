# cython: language_level=3
"""The fast path (one extension): cdef class Engine, a user-space IPVS data plane.

Frames go through `engine_rx_batch` (C, no GIL) as fl_frame descriptors and are rewritten in
place; new flows of Python-scheduled services are parked and bound in `engine_bind_parked`
after one scheduler callback per batch (`Engine.run_frames` strings the three together for
ring code). The included dataplane/*.pxi fragments hold the parsing, checksums, connection
table, TCP states, hash schedulers and transmit functions.

Choices worth knowing:
- Conn entries are 48 bytes, chained from a power-of-two bucket array by 32-bit indices.
  Both directions hash (client addr, client port, proto), as IPVS's conn table does, so a
  NAT reply (dst = client) finds its entry in the same chain; no second index.
- An entry names its virtual address by an interned VIP index (proto, vaddr, vport) and
  its real server by dest id, so conns outlive the deletion of their service or dest.
- A dest id deleted while conns reference it stays reserved: re-adding the same service +
  address revives it (IPVS's trash); any other use raises ValueError until they expire.
- fwd ints are ours: 1 dr, 2 nat, 3 tun (strings "dr"/"nat"/"tun" are accepted too).
- Expiry is lazy on lookup plus a sweep after each batch that walks the used part of the
  table once per second of frame time (at most `sweep_budget` entries per batch); a full
  table first sweeps for expired entries, then drops the new flow (table_full).
- The scheduler is asked once per new flow per batch; if two new flows of a persistent
  service from one client net arrive in the same batch, the second follows the template the
  first made (as in sequence) even if the scheduler answered otherwise for it.
- Fragments to a VIP address (and NAT replies) are reassembled in an area allocated at
  creation (dataplane/frag.pxi); the completing frame then carries the whole datagram in
  engine memory (fl_frame.xrec) and leaves as the fragments frag_cut makes of its output.
- Not yet: IPv6 forwarding (entries already hold 128-bit addresses), port-zero and fwmark
  services, ICMP errors for existing conns, FTP's template special case, fragmentation of
  TUN packets over the MTU without DF (they are sent as they are and counted oversize).
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t, int32_t, int64_t
from libc.stdlib cimport calloc, free, realloc, malloc
from libc.string cimport memcpy, memmove, memset
from compat cimport fl_prefetch, fl_prefetch_w, fl_likely, fl_unlikely, fl_alloc_table
cimport if_packet as pk
from xsk cimport *
from cpython.ref cimport PyObject

import ipaddress as _ipaddress
import os as _os
import time as _time

include "dataplane/types.pxi"
include "dataplane/csum.pxi"
include "dataplane/hash.pxi"
include "dataplane/parse.pxi"
include "dataplane/tcpstate.pxi"
include "dataplane/conn.pxi"
include "dataplane/xmit.pxi"


def py_hash_32(uint32_t val, unsigned int bits):
    """hash_32(val, bits) computed in C, for differential tests against the Python version."""
    if bits < 1 or bits > 32:
        raise ValueError(f"bits must be 1..32, got {bits}")
    return hash_32(val, bits)


def py_hsiphash_u32(uint32_t val, uint64_t k0, uint64_t k1):
    """hsiphash of the native u32 `val` with key (k0, k1), computed in C (64-bit kernel)."""
    return hsiphash_1u32(val, k0, k1)


COUNTER_NAMES = ("rx", "tx", "passed", "malformed", "not_ip", "no_service", "table_full",
                 "tcp_not_syn", "no_dest", "fragment", "bad_checksum", "frag_needed_sent",
                 "no_headroom", "callback_error", "no_route", "oversize", "conns_created",
                 "conns_expired", "frag_held", "frag_reasm", "frag_timeout", "frag_bad",
                 "frag_no_room", "frag_out")

FWD_NAMES = {"dr": FWD_DR, "route": FWD_DR, "g": FWD_DR, "nat": FWD_NAT, "masq": FWD_NAT,
             "m": FWD_NAT, "tun": FWD_TUN, "ipip": FWD_TUN, "i": FWD_TUN}
SCHED_KINDS = {"sh": SCHED_SH, "dh": SCHED_DH, "mh": SCHED_MH}
_FWD_TEXT = {FWD_DR: "dr", FWD_NAT: "nat", FWD_TUN: "tun"}
_PROTO_TEXT = {6: "TCP", 17: "UDP"}

include "dataplane/frag.pxi"
include "dataplane/batch.pxi"
include "engine_api.pxi"

include "dataplane/ring.pxi"
include "dataplane/ring_xdp.pxi"
include "dataplane/ring_packet.pxi"
include "dataplane/ring_loop.pxi"
