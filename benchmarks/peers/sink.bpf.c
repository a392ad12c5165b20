/* The real servers' sink: counts and drops every IPv4 frame (plain, NATed or IPIP-encapsulated)
 * at the veth's XDP hook; ARP passes so that the director can resolve the real servers. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
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
	__u64 *n = bpf_map_lookup_elem(&cnt, &k);
	if (n)
		(*n)++;
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
