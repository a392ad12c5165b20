/* The real servers' sink: counts and drops every IPv4 frame (plain, NATed or IPIP-encapsulated)
 * at the veth's XDP hook; ARP passes so that the director can resolve the real servers. Built
 * with -DSINK_PASS_TCP, TCP passes to the stack uncounted too: the health-check cost benchmark's
 * TCP_CHECKs reach real listeners while the UDP flood is counted and dropped. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} cnt SEC(".maps");

SEC("xdp")
int sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 k = 0;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
#ifdef SINK_PASS_TCP
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > end || ip->protocol == IPPROTO_TCP)
		return XDP_PASS;
#endif
	__u64 *n = bpf_map_lookup_elem(&cnt, &k);
	if (n)
		(*n)++;
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
