"""IPVS connection synchronisation, wire-compatible with the kernel's sync daemon.

protocol.py owns the wire format of sync protocol version 1 (net/netfilter/ipvs/ip_vs_sync.c):
the message header, the IPv4/IPv6 connection entries with their optional parameters, the
master's packing of entries into datagrams of at most sync_maxlen bytes, and a decoder that
drops bad datagrams with a reason. It imports nothing of fastlvs but the engine's contract; the
daemon side (sockets, sending policy, installing conns on a backup) is later work.
"""
