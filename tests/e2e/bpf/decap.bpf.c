/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The TUN-mode real server's decapsulator (this kernel has no ipip module): an XDP program on
 * the real server's interface that takes IPv4-in-IPv4 (protocol 4) frames (and, compiled with
 * -DFL_RS6_W0..3, IPv6-in-IPv6: next header 41, as the words of its v6 address) addressed to this
 * real server (FL_RS_ADDR, given with -DFL_RS_ADDR=0x... in network byte order at compile
 * time), removes the outer IPv4 header and passes the inner packet (client -> VIP) up the
 * stack, where the VIP on lo accepts it. Everything else passes untouched. Counts what it did
 * in fl_decap_stats (0 = decapsulated, 1 = IPIP for another address or malformed).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef FL_RS_ADDR
#error "compile with -DFL_RS_ADDR=<the real server's IPv4 address, network byte order>"
#endif

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} fl_decap_stats SEC(".maps");

static __always_inline void count(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&fl_decap_stats, &what);

	if (n)
		__sync_fetch_and_add(n, 1);
}

SEC("xdp")
int fl_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ethhdr saved;
	struct iphdr *outer, *inner;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
#ifdef FL_RS6_W0
	/* IPv6-in-IPv6 (next header 41) to this real server's v6 address (FL_RS6_W0..3) */
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *o6 = (void *)(eth + 1), *i6 = (void *)(o6 + 1);

		if ((void *)(o6 + 1) > end || o6->nexthdr != 41)
			return XDP_PASS;
		if ((void *)(i6 + 1) > end || i6->version != 6 ||
		    o6->daddr.in6_u.u6_addr32[0] != (__be32)FL_RS6_W0 ||
		    o6->daddr.in6_u.u6_addr32[1] != (__be32)FL_RS6_W1 ||
		    o6->daddr.in6_u.u6_addr32[2] != (__be32)FL_RS6_W2 ||
		    o6->daddr.in6_u.u6_addr32[3] != (__be32)FL_RS6_W3) {
			count(1);
			return XDP_PASS;
		}
		__builtin_memcpy(&saved, eth, sizeof(saved));
		if (bpf_xdp_adjust_head(ctx, (int)sizeof(struct ipv6hdr)))
			return XDP_DROP;
		data = (void *)(long)ctx->data;
		end = (void *)(long)ctx->data_end;
		eth = data;
		if ((void *)(eth + 1) > end)
			return XDP_DROP;
		__builtin_memcpy(eth, &saved, sizeof(saved));
		count(0);
		return XDP_PASS;
	}
#endif
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	outer = (void *)(eth + 1);
	if ((void *)(outer + 1) > end || outer->protocol != IPPROTO_IPIP)
		return XDP_PASS;
	/* only a plain 20-byte outer header, unfragmented, to us, carrying IPv4 */
	inner = (void *)(outer + 1);
	if (outer->daddr != (__be32)FL_RS_ADDR || outer->ihl != 5 ||
	    (outer->frag_off & bpf_htons(0x3fff)) || (void *)(inner + 1) > end ||
	    inner->version != 4) {
		count(1);
		return XDP_PASS;
	}
	/* Move the Ethernet header forward over the outer IP header, then drop the 20 bytes. */
	__builtin_memcpy(&saved, eth, sizeof(saved));
	if (bpf_xdp_adjust_head(ctx, (int)sizeof(struct iphdr)))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_DROP;
	__builtin_memcpy(eth, &saved, sizeof(saved));
	count(0);
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
