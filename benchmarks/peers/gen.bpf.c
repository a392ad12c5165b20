/* The traffic generator: run by BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, one long
 * run. Each invocation either drops (the next frame is not due yet: pacing happens here, inside
 * the run, because a new run per burst builds a new page pool and caps the rate near 0.5 Mpps)
 * or writes a complete 60-byte UDP frame of the next of cfg->flows flows and returns XDP_TX,
 * which the live-frames mode turns into a transmit on the ingress veth. */
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
	__type(value, struct gen_cfg);
} cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_state);
} state SEC(".maps");

#define FRAME_LEN 60

SEC("xdp")
int gen(struct xdp_md *ctx)
{
	__u32 k = 0;
	struct gen_cfg *c = bpf_map_lookup_elem(&cfg, &k);
	struct gen_state *s = bpf_map_lookup_elem(&state, &k);
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;

	if (!c || !s || data + FRAME_LEN > end)
		return XDP_ABORTED;
	if (c->interval_ns) {
		__u64 now = bpf_ktime_get_ns();
		if (s->next_due == 0 || now > s->next_due + 1000 * c->interval_ns)
			s->next_due = now;      /* start, or far behind: no burst to catch up */
		if (now < s->next_due) {
			s->skipped++;
			return XDP_DROP;
		}
		s->next_due += c->interval_ns;
	}
	__u32 i = s->seq++ % (c->flows ? c->flows : 1);
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)(ip + 1);

	__builtin_memcpy(eth->h_dest, c->dmac, 6);
	__builtin_memcpy(eth->h_source, c->smac, 6);
	eth->h_proto = bpf_htons(ETH_P_IP);
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(FRAME_LEN - sizeof(*eth));
	ip->id = 0;
	ip->frag_off = bpf_htons(0x4000);
	ip->ttl = 64;
	ip->protocol = IPPROTO_UDP;
	ip->check = 0;
	ip->saddr = bpf_htonl(c->saddr + (i >> 10));
	ip->daddr = bpf_htonl(c->daddr);
	__u32 sum = 0;
	__u16 *w = (__u16 *)ip;
#pragma unroll
	for (int j = 0; j < 10; j++)
		sum += w[j];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	ip->check = ~sum & 0xffff;
	udp->source = bpf_htons(1024 + (i & 1023));
	udp->dest = bpf_htons(c->dport);
	udp->len = bpf_htons(FRAME_LEN - sizeof(*eth) - sizeof(*ip));
	udp->check = 0;                 /* complete frame: no checksum to offload */
	s->sent++;
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
