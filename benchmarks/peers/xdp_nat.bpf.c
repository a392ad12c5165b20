/* LVS-NAT's forward direction in the kernel, stateless as an XDP balancer does it: a UDP frame to
 * VIP:VPORT gets the chosen real server's address (a hash of the client address and port picks
 * among cfg->n), the IP and UDP checksums updated incrementally (RFC 1624), its MACs, the TTL
 * decremented, and leaves by XDP_REDIRECT through a devmap; anything else goes to the stack. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "peers.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fwd_cfg);
} cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} tx_port SEC(".maps");

static __always_inline __u16 fold(__u32 s)
{
	s = (s & 0xFFFF) + (s >> 16);
	return (s & 0xFFFF) + (s >> 16);
}

/* ~(~HC + ~m + m') over a 32-bit field, in network order words */
static __always_inline __u16 replace4(__u16 check, __be32 old, __be32 new)
{
	__u32 s = (__u16)~check;

	s += (__u16)~(old >> 16) + (__u16)~(old & 0xFFFF) + (new >> 16) + (new & 0xFFFF);
	return ~fold(s);
}

SEC("xdp")
int xdp_nat(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)(ip + 1);
	__u32 k = 0;
	struct fwd_cfg *c = bpf_map_lookup_elem(&cfg, &k);

	if (!c || (void *)(udp + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    ip->ihl != 5 || ip->protocol != IPPROTO_UDP || ip->daddr != bpf_htonl(c->vip) ||
	    udp->dest != bpf_htons(c->vport) || ip->ttl <= 1)
		return XDP_PASS;
	__u32 h = (bpf_ntohl(ip->saddr) * 2654435761u) ^ (bpf_ntohs(udp->source) * 40503u);
	__u32 idx = c->n > 1 ? (h >> 16) % c->n : 0;
	if (idx > 1)
		return XDP_ABORTED;
	__be32 old = ip->daddr, new = bpf_htonl(c->rs_ip[idx]);
	__u32 t = bpf_ntohs(ip->check) + 0x0100;          /* TTL - 1 */
	ip->check = bpf_htons(t + (t >= 0xFFFF));
	ip->ttl--;
	ip->daddr = new;
	ip->check = replace4(ip->check, old, new);
	if (udp->check) {
		udp->check = replace4(udp->check, old, new);
		if (!udp->check)
			udp->check = 0xFFFF;
	}
	__builtin_memcpy(eth->h_dest, c->rs_mac[idx], 6);
	__builtin_memcpy(eth->h_source, c->src_mac[idx], 6);
	return bpf_redirect_map(&tx_port, idx, 0);
}

char LICENSE[] SEC("license") = "GPL";
