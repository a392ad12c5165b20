/* LVS-DR in the kernel, as an XDP balancer does it: a UDP frame to VIP:VPORT gets the chosen
 * real server's MAC (a hash of the client address and port picks among cfg->n) and leaves by
 * XDP_REDIRECT through a devmap on that server's interface; anything else goes to the stack. */
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
	__type(value, struct dr_cfg);
} cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} tx_port SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} cnt SEC(".maps");

SEC("xdp")
int xdp_dr(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)(ip + 1);
	__u32 k = 0;
	struct dr_cfg *c = bpf_map_lookup_elem(&cfg, &k);

	if (!c || (void *)(udp + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    ip->ihl != 5 || ip->protocol != IPPROTO_UDP || ip->daddr != bpf_htonl(c->vip) ||
	    udp->dest != bpf_htons(c->vport))
		return XDP_PASS;
	__u32 h = (bpf_ntohl(ip->saddr) * 2654435761u) ^ (bpf_ntohs(udp->source) * 40503u);
	__u32 idx = c->n > 1 ? (h >> 16) % c->n : 0;
	if (idx > 1)
		return XDP_ABORTED;
	__builtin_memcpy(eth->h_dest, c->rs_mac[idx], 6);
	__builtin_memcpy(eth->h_source, c->src_mac[idx], 6);
	__u64 *n = bpf_map_lookup_elem(&cnt, &k);
	if (n)
		(*n)++;
	return bpf_redirect_map(&tx_port, idx, 0);
}

char LICENSE[] SEC("license") = "GPL";
