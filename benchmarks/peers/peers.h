/* Shared layouts of the peers' configuration maps (benchmarks/peers.py packs the same bytes
 * with struct: keep both in step). All addresses and ports in host byte order. */
#ifndef PEERS_H
#define PEERS_H
#include <linux/types.h>

struct gen_cfg {                /* "<QIIIH6s6s6x", 40 bytes */
	__u64 interval_ns;      /* 0 = unpaced: every invocation sends */
	__u32 saddr;            /* first client address; flow i uses saddr + i / 1024 */
	__u32 daddr;
	__u32 flows;
	__u16 dport;
	__u8 dmac[6];
	__u8 smac[6];
	__u8 pad[6];
};

struct gen_state {
	__u64 next_due;
	__u64 seq;
	__u64 sent;
	__u64 skipped;          /* invocations dropped because the next frame was not due */
};

struct dr_cfg {                 /* "<IHH6s6s6s6s", 32 bytes */
	__u32 vip;
	__u16 vport;
	__u16 n;                /* real servers (1 or 2) */
	__u8 rs_mac[2][6];
	__u8 src_mac[2][6];
};

struct fwd_cfg {                /* "<IHH6s6s6s6sIII", 44 bytes: dr_cfg + addresses */
	__u32 vip;
	__u16 vport;
	__u16 n;
	__u8 rs_mac[2][6];
	__u8 src_mac[2][6];
	__u32 rs_ip[2];         /* NAT: the new destination; TUN: the outer destination */
	__u32 local_ip;         /* TUN: the outer source */
};

#endif
