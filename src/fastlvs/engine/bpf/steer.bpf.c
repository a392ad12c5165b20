/* SPDX-License-Identifier: GPL-2.0-or-later */
/* fastlvs's XDP steering program: owns the decision which frames leave the kernel for the
 * AF_XDP socket. Only frames for a configured virtual service (proto, VIP, vport) and, in NAT
 * mode, replies from a real server (proto, RIP, rport) not addressed to the director itself are
 * redirected to the XSK bound to the receiving queue, and so are the ICMP errors about either
 * (by the packet they quote; ICMPv6 errors too); everything else (ARP, other ICMP, SSH, the director's own
 * connections to a real server) is XDP_PASS.
 * Maps are filled at run time from user space (ring_xdp.pxi). One 802.1Q tag; IPv4 and IPv6.
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

/* [0] redirected, [1] passed: per-CPU, summed by user space for diagnostics */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
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

static __always_inline int steer(struct xdp_md *ctx, struct fl_steer_key *dst,
				 struct fl_steer_key *src)
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
	return steer(ctx, dst, src);
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
	return steer(ctx, dst, src);
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
		return steer(ctx, &dst, &src);
	}
	if (h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > end)
			return XDP_PASS;
		if (ip6->nexthdr == IPPROTO_ICMPV6)
			return steer_icmp6(ctx, ip6, end, &dst, &src);
		/* no extension headers: the engine walks none (to a VIP it would drop them) */
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
		return steer(ctx, &dst, &src);
	}
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
