"""IPVS connection synchronisation, wire-compatible with the kernel's sync daemon.

protocol.py owns the wire format of sync protocol version 1 (net/netfilter/ipvs/ip_vs_sync.c):
the message header, the IPv4/IPv6 connection entries with their optional parameters, the
master's packing of entries into datagrams of at most sync_maxlen bytes, and a decoder that
drops bad datagrams with a reason. It imports nothing of fastlvs but the engine's contract. The
sending policy and the installing of conns on a backup are the engine's (dataplane/sync.pxi,
engine/reference_sync.py), reached through the director's sync_* methods. daemon.py owns the
sync daemons' multicast sockets and their bounded work per loop turn, above those methods.
"""
