# cython: language_level=3
"""The fast path (one extension): cdef class Engine, a user-space IPVS data plane.

Frames go through `engine_rx_batch` (C, no GIL) as fl_frame descriptors and are rewritten in
place; new flows of Python-scheduled services are parked and bound in `engine_bind_parked`
after one scheduler callback per batch (`Engine.run_frames` strings the three together for
ring code). This file is an index: dataplane/*.pxi hold the parsing, checksums, connection
table, TCP states, hash schedulers, transmit functions, the batch loop (batch.pxi), rings;
engine_api.pxi holds cdef class Engine; _core.pxd declares the C types and Engine's C side;
the constants come from contract.py (generated dataplane/contract.pxi). Test and benchmark
tools live in _testing.pyx, which the product never imports.

Choices worth knowing:
- Conn entries are 56 bytes, chained from a power-of-two bucket array by 32-bit indices.
  Both directions hash (client addr, client port, proto), as IPVS's conn table does, so a
  NAT reply (dst = client) finds its entry in the same chain; no second index.
- An entry names its virtual address by an interned VIP index (proto, vaddr, vport) and
  its real server by dest id, so conns outlive the deletion of their service or dest.
- A dest id deleted while conns reference it stays reserved: re-adding the same service +
  address revives it (IPVS's trash); any other use raises ValueError until they expire.
- fwd ints are the contract's (contract.py): 1 dr, 2 nat, 3 tun (their names are accepted too).
- Expiry is lazy on lookup plus a sweep after each batch that walks the used part of the
  table once per second of frame time (at most `sweep_budget` entries per batch); a full
  table takes the oldest expired SYN_RECV entry (with drop_entry, an older live one of the
  new conn's own chain, else the oldest: spoofed SYNs make room for real clients), else
  drops the new flow (table_full); bounded work either way.
- A conn whose dest was deleted is dropped until it expires, or ended at once with
  expire_nodest_conn; conn_reuse_mode and the flood defences follow Linux 6.1 (the
  sysctls are set by name: set_sysctl).
- The scheduler is asked once per new flow per batch; if two new flows of a persistent
  service from one client net arrive in the same batch, the second follows the template the
  first made (as in sequence) even if the scheduler answered otherwise for it.
- Fragments to a VIP address (and NAT replies) are reassembled in an area allocated at
  creation (dataplane/frag.pxi); the completing frame then carries the whole datagram in
  engine memory (fl_frame.xrec) and leaves as the fragments frag_cut makes of its output.
- ICMP errors quoting a conn's packet are forwarded to its real server, or translated back
  to the client for NAT (dataplane/icmp.pxi), as ip_vs_in_icmp / ip_vs_out_icmp.
- Connection sync (dataplane/sync.pxi): once started, a master decides per packet, with
  Linux 6.1's policy, which conns and templates go into IPVS sync v1 messages (queued,
  bounded by sync_qlen_max, handed out by sync_take); a backup checks and installs
  datagrams in C. Its per-entry state (16 bytes) lives beside the table, made at start.
- IPv6 (parse6.pxi, xmit6.pxi, neigh6.pxi, icmp6.pxi): DR, NAT66 and IPv6-in-IPv6 TUN; a v4
  address is held as ::a.b.c.d in the entries' 128-bit words, so ::/96 is refused as v6.
- Firewall-mark services, IPv4 and IPv6 (dataplane/fwmark.pxi: the engine marks frames by
  match rules)
  and SCTP (dataplane/sctp.pxi: IPVS's SCTP states, CRC32c on NAT port changes).
- Not yet: IPv6 extension headers and fragments (dropped, counted),
  FTP's template special case, fragmentation of TUN packets over the MTU without DF (they
  are sent as they are and counted oversize).
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t, int32_t, int64_t
from libc.stdlib cimport calloc, free, realloc, malloc
from libc.string cimport memcmp, memcpy, memmove, memset
from compat cimport fl_prefetch, fl_prefetch_w, fl_likely, fl_unlikely, fl_alloc_table
cimport if_packet as pk
from xsk cimport *
from cpython.ref cimport PyObject

import ipaddress as _ipaddress
import os as _os
import time as _time

include "dataplane/csum.pxi"
include "dataplane/hash.pxi"
include "dataplane/parse.pxi"
include "dataplane/parse6.pxi"
include "dataplane/tcpstate.pxi"
include "dataplane/sctp.pxi"
include "dataplane/conn.pxi"
include "dataplane/fwmark.pxi"
include "dataplane/neigh.pxi"
include "dataplane/neigh6.pxi"
include "dataplane/tunnel.pxi"
include "dataplane/xmit.pxi"
include "dataplane/xmit6.pxi"
include "dataplane/offload.pxi"

# The contract's names at the Python level; the C constants come from the same module through
# the generated dataplane/contract.pxi (a stale build fails the check below).
from fastlvs.engine.contract import (tun_args, COUNTER_NAMES, ENGINE_SYSCTLS, FWD_METHODS, FWD_ALIASES,
                                     HASH_KINDS, PROTOCOLS)

if len(COUNTER_NAMES) != C_LAST:
    raise ImportError("fastlvs.engine._core was built from another contract.py: rebuild it")
_FWD_IDS = {name: m[0] for name, m in FWD_METHODS.items()}
_FWD_IDS.update(FWD_ALIASES)
_FWD_TEXT = {m[0]: name for name, m in FWD_METHODS.items()}
_HASH_IDS = tuple(HASH_KINDS.values())
_PROTO_NUMS = tuple(PROTOCOLS.values())
_PROTO_TEXT = {num: name.upper() for name, num in PROTOCOLS.items()}
# The IPVS sysctls the engine applies (the contract's ENGINE_SYSCTLS)
SYSCTL_DEFAULTS = {name: v[0] for name, v in ENGINE_SYSCTLS.items()}
_SYSCTL_RANGE = {name: (v[1], v[2]) for name, v in ENGINE_SYSCTLS.items()}



include "dataplane/frag.pxi"
include "dataplane/icmp.pxi"
include "dataplane/icmp6.pxi"
include "dataplane/sync.pxi"
include "dataplane/batch.pxi"
include "engine_api.pxi"

include "dataplane/ring.pxi"
include "dataplane/ring_xdp.pxi"
include "dataplane/ring_packet.pxi"
include "dataplane/ring_loop.pxi"
