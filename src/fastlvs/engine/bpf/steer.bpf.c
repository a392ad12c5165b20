/* SPDX-License-Identifier: GPL-2.0-or-later */
/* fastlvs's XDP steering program: owns the decision which frames leave the kernel for the
 * AF_XDP socket. Only frames for a configured virtual service (proto, VIP, vport) and, in NAT
 * mode, replies from a real server (proto, RIP, rport) not addressed to the director itself are
 * redirected to the XSK bound to the receiving queue, and so are the ICMP errors about either
 * (by the packet they quote; ICMPv6 errors too); everything else (ARP, other ICMP, SSH, the director's own
 * connections to a real server) is XDP_PASS.
 * Maps are filled at run time from user space (ring_xdp.pxi). One 802.1Q tag; IPv4 and IPv6.
 * The offload (fl_offload, filled by the engine: dataplane/offload.pxi) forwards the frames of
 * established connections here, with the engine's bytes; see offload_fwd below.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define FL_MAX_KEYS 65536
#define FL_MAX_QUEUES 256
#define FL_MAX_LOCALS 16384
#define FL_FAST_KEYS 8
#define FL_FAST_OFF 0xFFFFFFFFu
#define FL_ANY_PORT 0x10      /* in family: a port-0 service or real server (every port) */

/* Key of both address maps. IPv4 lives in addr[0], the rest zero; port in network order.
 * Kept byte-identical to struct fl_steer_key in ring_xdp.pxi. */
struct fl_steer_key {
	__u8 family;      /* 4 or 6 */
	__u8 proto;       /* IPPROTO_TCP / IPPROTO_UDP / IPPROTO_SCTP */
	__be16 port;
	__u32 addr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, FL_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} fl_xsks SEC(".maps");

/* (proto, VIP, vport) -> 1: the virtual services (matched on the destination) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FL_MAX_KEYS);
	__type(key, struct fl_steer_key);
	__type(value, __u32);
} fl_services SEC(".maps");

/* (proto, RIP, rport) -> 1: NAT real servers (matched on the source of their replies) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FL_MAX_KEYS);
	__type(key, struct fl_steer_key);
	__type(value, __u32);
} fl_rservers SEC(".maps");

/* (family, address) -> 1, proto and port zero: the director's own addresses. A frame from a
 * NAT real server addressed to one of them answers a connection the director opened itself (a
 * health check, a probe, SSH), not a client's: it goes to the kernel. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FL_MAX_LOCALS);
	__type(key, struct fl_steer_key);
	__type(value, __u32);
} fl_locals SEC(".maps");

/* The same keys as fl_services/fl_rservers/fl_locals while there are at most FL_FAST_KEYS of a kind:
 * compared in place, a handful of words, where a hash lookup costs ~40 ns per frame. n is
 * FL_FAST_OFF when there are more (then the hash maps answer). Two copies: user space writes
 * the one not in use and then switches fl_fast_sel to it (a 4-byte store), so a frame never
 * sees a half-written set. Kept byte-identical to struct fl_fast in ring_xdp.pxi. */
struct fl_fast {
	__u32 nsvc;
	__u32 nrs;
	struct fl_steer_key svc[FL_FAST_KEYS];
	struct fl_steer_key rs[FL_FAST_KEYS];
	__u32 nlocal;
	struct fl_steer_key local[FL_FAST_KEYS];
	__u32 any;        /* 1: a port-0 service key is set, 2: a port-0 real server key */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct fl_fast);
} fl_fast SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} fl_fast_sel SEC(".maps");

/* [0] redirected, [1] passed, [2] offloaded: per-CPU, summed by user space for diagnostics */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} fl_stats SEC(".maps");

struct vlan_hdr_ {
	__be16 tci;
	__be16 proto;
};

static __always_inline int count(__u32 idx, int action)
{
	__u64 *c = bpf_map_lookup_elem(&fl_stats, &idx);

	if (c)
		*c += 1;
	return action;
}

static __always_inline int key_eq(const struct fl_steer_key *a, const struct fl_steer_key *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4];
}

static __always_inline int in_set(const struct fl_steer_key *keys, __u32 n,
				  const struct fl_steer_key *k, void *map)
{
	if (n > FL_FAST_KEYS)
		return bpf_map_lookup_elem(map, k) != NULL;
	for (int i = 0; i < FL_FAST_KEYS; i++) {
		if (i >= n)
			break;
		if (key_eq(&keys[i], k))
			return 1;
	}
	return 0;
}

/* The key with every port: looked for only after the exact key missed, and only while some
 * port-0 key is set (IPVS's service lookup order: that port, then port 0). */
static __always_inline int in_set_any(const struct fl_steer_key *keys, __u32 n,
				      const struct fl_steer_key *k, void *map)
{
	struct fl_steer_key a = *k;

	a.family |= FL_ANY_PORT;
	a.port = 0;
	return in_set(keys, n, &a, map);
}


/* -- the offload -------------------------------------------------------------------------- */
/* One direction of a connection the engine (the authority) found needs it no longer: its
 * packets are rewritten and sent here. The engine writes the tables below through mmap, the
 * only writer; this program only reads them (and stamps `seen`). Kept byte-identical to the
 * structs of includes/fl_offload.h. Addresses and ports in network order.
 *
 * fl_offload: an array of 64-byte buckets (one cache line) of 2 slots; entry 0 holds the
 * hash seed and mask (struct fl_off_cfg), a flow's home bucket is 1 + (hash & mask) and it
 * lives in one of the FL_OFF_PROBE buckets from there (the array has FL_OFF_PROBE - 1 more
 * entries so that probing never wraps). A hit reads one line of it. */
#define FL_OFF_DR 1
#define FL_OFF_NAT_IN 2
#define FL_OFF_TUN 3
#define FL_OFF_NAT_OUT 4
#define FL_OFF_DF 1            /* TUN: copy the inner DF to the outer header (pmtu_disc) */
#define FL_OFF_PROBE 4         /* buckets a flow may live in from its home one */

struct fl_off_slot {
	__u32 seq;             /* seqlock: odd while the engine writes the slot */
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 kind;             /* FL_OFF_*, 0 = empty */
	__u16 rw;              /* index in fl_off_rw and fl_off_cnt */
	__u32 conn;            /* the engine's entry index (user space only) */
	__u64 seen;            /* bpf_ktime_get_ns() of the last packet: CLOCK_MONOTONIC */
};

struct fl_off_bucket {
	struct fl_off_slot slot[2];
};

struct fl_off_cfg {            /* fl_offload[0] */
	__u32 magic;
	__u32 mask;            /* buckets - 1 (a power of two) */
	__u64 seed[2];         /* set by the engine when it makes the table */
	__u32 rw_id;           /* map ids of fl_off_rw and fl_off_cnt: a program loaded */
	__u32 cnt_id;          /* later finds them from the table (user space only) */
	__u8 pad[32];
};

/* What the frames of one (dest, direction) are rewritten with: one line, seqlock as a slot. */
struct fl_off_rw {
	__u32 seq;
	__u32 ifindex;         /* out interface */
	__u8 dmac[6];
	__u8 smac[6];
	__u8 kind;
	__u8 flags;
	__u16 mtu;             /* TUN: the inner packet must fit mtu - 20 */
	__be32 addr;           /* NAT: the new address (in: RIP, out: VIP); TUN: outer daddr */
	__be32 local;          /* TUN: outer saddr */
	__be16 port;           /* NAT: the new port */
	__u16 pad;
	__u32 daddr_csum;      /* the address change, summed as csum_replace4 sums it (unfolded) */
	__u32 dport_csum;      /* the port change, as csum_replace2; 0 = the port stays */
	__u8 pad2[20];
};

struct fl_off_cnt {
	__u64 pkts;
	__u64 bytes;           /* IP total lengths, as the engine counts */
};

/* Sized by user space (from --capacity) and shared by every interface's program: the
 * engine creates the three maps and each program reuses them before it is loaded. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fl_off_bucket);
} fl_offload SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fl_off_rw);
} fl_off_rw SEC(".maps");

/* per (dest, direction) = per fl_off_rw index, per CPU: no atomics; the engine sums them */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fl_off_cnt);
} fl_off_cnt SEC(".maps");

/* TUN's outer IP id without DF: the engine counts one up per packet; here each CPU does */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} fl_off_ipid SEC(".maps");

/* The engine's checksum arithmetic (csum.pxi), step for step, so the bytes are the same:
 * values are host-order 16-bit words read big-endian. */
static __always_inline __u16 rd16(const void *p)
{
	const __u8 *b = p;

	return ((__u16)b[0] << 8) | b[1];
}

static __always_inline void wr16(void *p, __u16 v)
{
	__u8 *b = p;

	b[0] = v >> 8;
	b[1] = v;
}

static __always_inline __u16 fold(__u32 s)
{
	s = (s & 0xFFFF) + (s >> 16);
	s = (s & 0xFFFF) + (s >> 16);
	return s;
}

/* csum_replace4/2 with the change pre-summed: ~HC + (~old + new) */
static __always_inline void csum_apply(void *field, __u32 delta)
{
	wr16(field, ~fold((~rd16(field) & 0xFFFF) + delta) & 0xFFFF);
}

/* l4_csum_replace*: a UDP checksum of 0 means none and stays; a computed 0 is sent as 0xFFFF */
static __always_inline void l4_csum_apply(void *field, __u32 delta, int udp)
{
	if (udp && rd16(field) == 0)
		return;
	csum_apply(field, delta);
	if (udp && rd16(field) == 0)
		wr16(field, 0xFFFF);
}

static __always_inline __u32 sum_words(const __u8 *p, int n)
{
	__u32 s = 0;

	for (int i = 0; i < n; i += 2)
		s += ((__u32)p[i] << 8) | p[i + 1];
	return s;
}

/* ttl_dec_v4: the checksum rises by 0x0100 with the end-around carry, 0xFFFF becomes 0 */
static __always_inline void ttl_dec(struct iphdr *ip)
{
	__u32 c = rd16(&ip->check) + 0x0100;

	wr16(&ip->check, c + (c >= 0xFFFF));
	ip->ttl -= 1;
}

static __always_inline int off_out(struct xdp_md *ctx, struct fl_off_rw *v)
{
	count(2, 0);
	if (v->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(v->ifindex, 0);
}

#define FL_READ_ONCE(x) (*(volatile typeof(x) *)&(x))
/* A compiler barrier: with x86's TSO (loads are not reordered with loads, stores not with
 * stores) it is all a seqlock needs on either side. The engine writes a slot or a rewrite
 * entry as seq += 1 (odd), the fields, seq += 1 (even), each step a store; we read seq,
 * the fields, then seq again: equal and even means no write overlapped the read. A weakly
 * ordered CPU would need read barriers here that BPF does not have. */
#define fl_barrier() asm volatile("" ::: "memory")

/* Keyed multiply-xorshift: cheap, and with the engine's random seed a sender cannot aim
 * its flows at one bucket. The same integers as off_hash() in includes/fl_offload.h. */
static __always_inline __u32 off_hash(const struct fl_off_cfg *cfg, __be32 saddr,
				      __be32 daddr, __u32 ports, __u8 proto)
{
	__u64 h = ((((__u64)saddr << 32) | daddr) ^ cfg->seed[0]) * 0x9E3779B97F4A7C15ull;

	h ^= h >> 32;
	h ^= (((__u64)ports << 32) | proto) ^ cfg->seed[1];
	h *= 0xC2B2AE3D27D4EB4Full;
	h ^= h >> 29;
	return (__u32)h;
}

/* The slot of the flow, its kind and rewrite index: NULL on a miss, and on a slot the engine
 * is writing (a torn read is a miss: the frame goes to the engine). ports: sport | dport << 16
 * as they lie in the packet. */
static __always_inline struct fl_off_slot *off_find(__be32 saddr, __be32 daddr, __u32 ports,
						    __u8 proto, __u8 *kind, __u32 *rw)
{
	__u32 zero = 0, b;
	struct fl_off_cfg *cfg = bpf_map_lookup_elem(&fl_offload, &zero);

	if (!cfg)
		return NULL;
	b = 1 + (off_hash(cfg, saddr, daddr, ports, proto) & cfg->mask);
#pragma unroll
	for (int i = 0; i < FL_OFF_PROBE; i++) {
		__u32 bi = b + i;
		struct fl_off_bucket *bk = bpf_map_lookup_elem(&fl_offload, &bi);

		if (!bk)
			return NULL;
#pragma unroll
		for (int j = 0; j < 2; j++) {
			struct fl_off_slot *s = &bk->slot[j];
			__u32 seq = FL_READ_ONCE(s->seq);

			fl_barrier();
			if (s->saddr != saddr || s->daddr != daddr || s->proto != proto || !s->kind ||
			    *(__u32 *)&s->sport != ports)
				continue;
			*kind = s->kind;
			*rw = s->rw;
			fl_barrier();
			if ((seq & 1) || FL_READ_ONCE(s->seq) != seq)
				return NULL;
			return s;
		}
	}
	return NULL;
}

/* A frame of an offloaded connection is forwarded here only when the engine would forward it
 * without changing anything it keeps: plain Ethernet + IPv4 without options or fragments, a
 * valid header checksum, TTL above 1, TCP with ACK and none of SYN/FIN/RST (those move the
 * state), lengths that parse, a complete L4 checksum (a partial one the engine completes),
 * TUN within the MTU. Everything else (and every miss) returns -1: the socket, the engine. */
static __always_inline int offload_fwd(struct xdp_md *ctx, struct iphdr *ip)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct fl_off_rw rwc, *v = &rwc, *rp;
	struct fl_off_slot *slot;
	struct fl_off_cnt *cnt;
	__be32 saddr;
	__be16 sport;
	__u32 rwi, seq;
	__u8 kind;
	__u8 *l4 = (__u8 *)(ip + 1);
	__u16 tot, l4len, ck;
	__u64 ps;
	int udp;

	if ((void *)ip != data + sizeof(struct ethhdr) || (void *)(ip + 1) > end)
		return -1;
	if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3FFF)) || ip->ttl <= 1)
		return -1;
	tot = bpf_ntohs(ip->tot_len);
	if (tot < 20 || (void *)ip + tot > end)
		return -1;
	if (fold(sum_words((const __u8 *)ip, 20)) != 0xFFFF)
		return -1;
	l4len = tot - 20;
	udp = ip->protocol == IPPROTO_UDP;
	if (udp) {
		if ((void *)(l4 + 8) > end || l4len < 8)
			return -1;
		if (rd16(l4 + 4) < 8 || rd16(l4 + 4) > l4len)
			return -1;
		ck = rd16(l4 + 6);
		l4len = rd16(l4 + 4);
	} else {
		if ((void *)(l4 + 20) > end || l4len < 20)
			return -1;
		if ((l4[12] >> 4) < 5 || (l4[12] >> 4) * 4 > l4len)
			return -1;
		if ((l4[13] & 0x07) || !(l4[13] & 0x10))
			return -1;
		ck = rd16(l4 + 16);
	}
	/* l4_csum_looks_partial: a sender's checksum offload left the pseudo-header sum */
	if (!udp || ck != 0) {
		ps = (__u64)bpf_ntohl(ip->saddr) + bpf_ntohl(ip->daddr) + ip->protocol + l4len;
		ps = (ps & 0xFFFF) + (ps >> 16);
		ps = (ps & 0xFFFF) + (ps >> 16);
		ps = (ps & 0xFFFF) + (ps >> 16);
		if (ck == ps)
			return -1;
	}
	saddr = ip->saddr;
	sport = *(__be16 *)l4;
	slot = off_find(saddr, ip->daddr, sport | (__u32)*(__be16 *)(l4 + 2) << 16, ip->protocol,
			&kind, &rwi);
	if (!slot)
		return -1;
	/* the rewrite, copied under its seqlock: a MAC change in flight is a miss too */
	rp = bpf_map_lookup_elem(&fl_off_rw, &rwi);
	if (!rp)
		return -1;
	seq = FL_READ_ONCE(rp->seq);
	fl_barrier();
	__builtin_memcpy(v, rp, sizeof(*v));
	fl_barrier();
	if ((seq & 1) || FL_READ_ONCE(rp->seq) != seq || v->kind != kind)
		return -1;
	if (v->kind == FL_OFF_TUN && (__u32)tot + 20 > v->mtu)
		return -1;              /* the engine refuses or cuts it */
	cnt = bpf_map_lookup_elem(&fl_off_cnt, &rwi);
	if (cnt) {
		cnt->pkts += 1;
		cnt->bytes += tot;
	}
	/* a plain store: if the engine re-used the slot meanwhile, the new conn's timer starts
	 * from now instead of its install, a moment earlier */
	slot->seen = bpf_ktime_get_ns();

	ttl_dec(ip);
	if (v->kind == FL_OFF_DR) {
		__builtin_memcpy(data, v->dmac, 6);
		__builtin_memcpy(data + 6, v->smac, 6);
		return off_out(ctx, v);
	}
	if (v->kind == FL_OFF_NAT_IN || v->kind == FL_OFF_NAT_OUT) {
		__u8 *ckf = l4 + (udp ? 6 : 16);
		int in = v->kind == FL_OFF_NAT_IN;

		if (in)
			ip->daddr = v->addr;
		else
			ip->saddr = v->addr;
		csum_apply(&ip->check, v->daddr_csum);
		l4_csum_apply(ckf, v->daddr_csum, udp);
		if (v->dport_csum) {
			*(__be16 *)(l4 + (in ? 2 : 0)) = v->port;
			l4_csum_apply(ckf, v->dport_csum, udp);
		}
		__builtin_memcpy(data, v->dmac, 6);
		__builtin_memcpy(data + 6, v->smac, 6);
		return off_out(ctx, v);
	}
	if (v->kind == FL_OFF_TUN) {
		/* xmit_tun_v4: an outer header (local -> RIP, IPIP, TOS and TTL of the inner one,
		 * DF and id 0 with pmtu_disc when the inner has DF) before the untouched packet */
		struct iphdr *o;
		struct ethhdr *eth;
		__u8 tos = ip->tos, ttl = ip->ttl;
		int df = (ip->frag_off & bpf_htons(0x4000)) && (v->flags & FL_OFF_DF);
		__u32 zero = 0, *id;

		if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
			return XDP_ABORTED;
		data = (void *)(long)ctx->data;
		end = (void *)(long)ctx->data_end;
		eth = data;
		o = data + sizeof(struct ethhdr);
		if ((void *)(o + 1) > end)
			return XDP_ABORTED;
		__builtin_memcpy(eth->h_dest, v->dmac, 6);
		__builtin_memcpy(eth->h_source, v->smac, 6);
		eth->h_proto = bpf_htons(ETH_P_IP);
		o->version = 4;
		o->ihl = 5;
		o->tos = tos;
		o->tot_len = bpf_htons(tot + 20);
		if (df) {
			o->id = 0;
			o->frag_off = bpf_htons(0x4000);
		} else {
			id = bpf_map_lookup_elem(&fl_off_ipid, &zero);
			o->id = bpf_htons(id ? ++*id : 0);
			o->frag_off = 0;
		}
		o->ttl = ttl;
		o->protocol = IPPROTO_IPIP;
		o->check = 0;
		o->saddr = v->local;
		o->daddr = v->addr;
		wr16(&o->check, ~fold(sum_words((const __u8 *)o, 20)) & 0xFFFF);
		return off_out(ctx, v);
	}
	return -1;
}

static __always_inline int steer(struct xdp_md *ctx, struct fl_steer_key *dst,
				 struct fl_steer_key *src, struct iphdr *ip)
{
	__u32 zero = 0, *sel = bpf_map_lookup_elem(&fl_fast_sel, &zero);
	struct fl_fast *f;

	if (!sel)
		return XDP_PASS;
	f = bpf_map_lookup_elem(&fl_fast, sel);
	if (!f)
		return XDP_PASS;
	if (in_set(f->svc, f->nsvc, dst, &fl_services))
		goto redirect;
	if ((f->any & 1) && in_set_any(f->svc, f->nsvc, dst, &fl_services))
		goto redirect;
	if (in_set(f->rs, f->nrs, src, &fl_rservers) ||
	    ((f->any & 2) && in_set_any(f->rs, f->nrs, src, &fl_rservers))) {
		/* a NAT reply goes to a client; one to our own address answers our own connection.
		 * Only a NAT reply costs this second look-up. */
		dst->proto = 0;
		dst->port = 0;
		if (!in_set(f->local, f->nlocal, dst, &fl_locals))
			goto redirect;
	}
	return count(1, XDP_PASS);
redirect:
	/* only frames we would take cost the offload look-up */
	if (ip) {
		int a = offload_fwd(ctx, ip);

		if (a >= 0)
			return a;
	}
	count(0, 0);
	/* XDP_PASS in the flags: no socket on this queue -> the kernel gets the frame */
	return bpf_redirect_map(&fl_xsks, ctx->rx_queue_index, XDP_PASS);
}

/* An ICMP error (unreachable, source quench, time exceeded) goes where the packet it quotes
 * would, read backwards: one a service sent a client (VIP:vport -> client) as that service's
 * frame, a request a NAT real server got (client -> RIP:rport) as that server's reply (to a
 * client, not to us). TUN's errors about our IPIP packets come to our own address: the
 * kernel's. A fragmented error (rare: they are short) is the kernel's too. */
static __always_inline int steer_icmp(struct xdp_md *ctx, struct iphdr *ip, void *end,
				      struct fl_steer_key *dst, struct fl_steer_key *src)
{
	__u8 *ic = (__u8 *)ip + ip->ihl * 4;
	struct iphdr *q;
	__be16 *qp;

	if (ip->frag_off & bpf_htons(0x3FFF))
		return count(1, XDP_PASS);
	if ((void *)(ic + 8) > end)
		return count(1, XDP_PASS);
	if (ic[0] != 3 && ic[0] != 4 && ic[0] != 11)
		return count(1, XDP_PASS);
	q = (void *)(ic + 8);
	if ((void *)(q + 1) > end || q->version != 4 || q->ihl < 5)
		return count(1, XDP_PASS);
	if (q->protocol != IPPROTO_TCP && q->protocol != IPPROTO_UDP)
		return count(1, XDP_PASS);
	qp = (void *)q + q->ihl * 4;
	if ((void *)(qp + 2) > end)
		return count(1, XDP_PASS);
	dst->family = src->family = 4;
	dst->proto = src->proto = q->protocol;
	dst->addr[0] = q->saddr;
	dst->port = qp[0];
	src->addr[0] = q->daddr;
	src->port = qp[1];
	return steer(ctx, dst, src, NULL);
}

/* The same for ICMPv6 errors (types below 128): the quoted packet must carry TCP or UDP right
 * after its fixed header, as the engine requires. Informational messages (neighbour
 * discovery, echo) are the kernel's. */
static __always_inline int steer_icmp6(struct xdp_md *ctx, struct ipv6hdr *ip6, void *end,
				       struct fl_steer_key *dst, struct fl_steer_key *src)
{
	__u8 *ic = (__u8 *)(ip6 + 1);
	struct ipv6hdr *q;
	__be16 *qp;

	if ((void *)(ic + 8) > end || ic[0] == 0 || ic[0] >= 128)
		return count(1, XDP_PASS);
	q = (void *)(ic + 8);
	if ((void *)(q + 1) > end || q->version != 6)
		return count(1, XDP_PASS);
	if (q->nexthdr != IPPROTO_TCP && q->nexthdr != IPPROTO_UDP)
		return count(1, XDP_PASS);
	qp = (void *)(q + 1);
	if ((void *)(qp + 2) > end)
		return count(1, XDP_PASS);
	dst->family = src->family = 6;
	dst->proto = src->proto = q->nexthdr;
	__builtin_memcpy(dst->addr, &q->saddr, 16);
	dst->port = qp[0];
	__builtin_memcpy(src->addr, &q->daddr, 16);
	src->port = qp[1];
	return steer(ctx, dst, src, NULL);
}

SEC("xdp")
int fl_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct fl_steer_key dst = {}, src = {};
	__u16 h_proto;
	void *l3;
	__be16 *ports;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	h_proto = eth->h_proto;
	l3 = eth + 1;
	if (h_proto == bpf_htons(ETH_P_8021Q) || h_proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr_ *vh = l3;

		if ((void *)(vh + 1) > end)
			return XDP_PASS;
		h_proto = vh->proto;
		l3 = vh + 1;
	}

	if (h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;

		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return XDP_PASS;
		if (ip->protocol == IPPROTO_ICMP)
			return steer_icmp(ctx, ip, end, &dst, &src);
		if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP &&
		    ip->protocol != IPPROTO_SCTP)
			return count(1, XDP_PASS);
		dst.family = src.family = 4;
		dst.proto = src.proto = ip->protocol;
		dst.addr[0] = ip->daddr;
		src.addr[0] = ip->saddr;
		/* A non-first fragment has no ports: the engine reassembles the datagrams of its
		 * services' addresses and its NAT real servers' (keys with port 0, in the hash
		 * maps only: fragments are rare), the kernel gets the rest. */
		if (ip->frag_off & bpf_htons(0x1FFF)) {
			if (bpf_map_lookup_elem(&fl_services, &dst) ||
			    bpf_map_lookup_elem(&fl_rservers, &src)) {
				count(0, 0);
				return bpf_redirect_map(&fl_xsks, ctx->rx_queue_index, XDP_PASS);
			}
			return count(1, XDP_PASS);
		}
		ports = (void *)ip + ip->ihl * 4;
		if ((void *)(ports + 2) > end)
			return XDP_PASS;
		dst.port = ports[1];
		src.port = ports[0];
		return steer(ctx, &dst, &src, ip);
	}
	if (h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > end)
			return XDP_PASS;
		if (ip6->nexthdr == IPPROTO_ICMPV6)
			return steer_icmp6(ctx, ip6, end, &dst, &src);
		/* A Fragment header right after the fixed one: the engine reassembles the TCP
		 * and UDP datagrams of its services' addresses and its NAT real servers' (the
		 * port-0 keys of the hash maps, as for IPv4's later fragments). Every fragment
		 * goes by address, the first too, so a datagram is never split between the
		 * engine and the kernel. */
		if (ip6->nexthdr == IPPROTO_FRAGMENT) {
			__u8 *fh = (void *)(ip6 + 1);

			if ((void *)(fh + 8) > end)
				return XDP_PASS;
			if (fh[0] != IPPROTO_TCP && fh[0] != IPPROTO_UDP)
				return count(1, XDP_PASS);
			dst.family = src.family = 6;
			dst.proto = src.proto = fh[0];
			__builtin_memcpy(dst.addr, &ip6->daddr, 16);
			__builtin_memcpy(src.addr, &ip6->saddr, 16);
			if (bpf_map_lookup_elem(&fl_services, &dst) ||
			    bpf_map_lookup_elem(&fl_rservers, &src)) {
				count(0, 0);
				return bpf_redirect_map(&fl_xsks, ctx->rx_queue_index, XDP_PASS);
			}
			return count(1, XDP_PASS);
		}
		/* no other extension headers: the engine walks none (to a VIP it drops them) */
		if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP)
			return count(1, XDP_PASS);
		ports = (void *)(ip6 + 1);
		if ((void *)(ports + 2) > end)
			return XDP_PASS;
		dst.family = src.family = 6;
		dst.proto = src.proto = ip6->nexthdr;
		__builtin_memcpy(dst.addr, &ip6->daddr, 16);
		__builtin_memcpy(src.addr, &ip6->saddr, 16);
		dst.port = ports[1];
		src.port = ports[0];
		return steer(ctx, &dst, &src, NULL);
	}
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
