/* LVS-TUN in the kernel, stateless as an XDP balancer does it: a UDP frame to VIP:VPORT gets an
 * outer IPv4 header (local -> the chosen real server, IPIP, TOS and TTL of the inner one after
 * its TTL went down by one) in the headroom, new MACs, and leaves by XDP_REDIRECT through a
 * devmap; anything else goes to the stack. */
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

SEC("xdp")
int xdp_tun(struct xdp_md *ctx)
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
	__u32 t = bpf_ntohs(ip->check) + 0x0100;          /* TTL - 1 */
	ip->check = bpf_htons(t + (t >= 0xFFFF));
	ip->ttl--;
	__u8 tos = ip->tos, ttl = ip->ttl;
	__u16 len = bpf_ntohs(ip->tot_len);
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	struct iphdr *o = data + sizeof(*eth);
	if ((void *)(o + 1) > end)
		return XDP_ABORTED;
	__builtin_memcpy(eth->h_dest, c->rs_mac[idx], 6);
	__builtin_memcpy(eth->h_source, c->src_mac[idx], 6);
	eth->h_proto = bpf_htons(ETH_P_IP);
	o->version = 4;
	o->ihl = 5;
	o->tos = tos;
	o->tot_len = bpf_htons(len + 20);
	o->id = 0;
	o->frag_off = 0;
	o->ttl = ttl;
	o->protocol = IPPROTO_IPIP;
	o->check = 0;
	o->saddr = bpf_htonl(c->local_ip);
	o->daddr = bpf_htonl(c->rs_ip[idx]);
	__u32 s = 0;
	__u16 *w = (__u16 *)o;
	for (int i = 0; i < 10; i++)
		s += w[i];
	s = (s & 0xFFFF) + (s >> 16);
	s = (s & 0xFFFF) + (s >> 16);
	o->check = ~s;
	return bpf_redirect_map(&tx_port, idx, 0);
}

char LICENSE[] SEC("license") = "GPL";
