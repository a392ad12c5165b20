/* SPDX-License-Identifier: GPL-2.0-or-later */
/* New TCP connections as a director sees them, for benchmarks/failover.py's sync measurement:
 * run like gen.bpf.c (`xdptool gen IF OBJ CFGHEX SECONDS`, BPF_PROG_TEST_RUN with live frames,
 * the same struct gen_cfg and pacing), each three invocations write a client's SYN, its ACK and
 * a second ACK for the next of cfg->flows flows (client saddr + i / 1024, port 1024 + i % 1024):
 * the input-only TCP state table of a DR director goes NONE -> SYN_RECV -> ESTABLISHED, and
 * the third packet is the one a sync master sends an established connection at (the
 * kernel's default sync_threshold 3). Complete frames: IPv4 and TCP checksums computed. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
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
#define L3_LEN (sizeof(struct iphdr) + sizeof(struct tcphdr))

static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum & 0xffff;
}

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
		/* start, or more than 100 ms behind (the run lost its CPU): no burst to catch
		 * up; less than that is caught up, so that the rate holds on a busy machine */
		if (s->next_due == 0 || now > s->next_due + 100000000ull)
			s->next_due = now;
		if (now < s->next_due) {
			s->skipped++;
			return XDP_DROP;
		}
		s->next_due += c->interval_ns;
	}
	__u64 n = s->seq++;
	__u32 i = (__u32)(n / 3) % (c->flows ? c->flows : 1);
	int syn = (n % 3) == 0;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct tcphdr *tcp = (void *)(ip + 1);

	__builtin_memset(data, 0, FRAME_LEN);
	__builtin_memcpy(eth->h_dest, c->dmac, 6);
	__builtin_memcpy(eth->h_source, c->smac, 6);
	eth->h_proto = bpf_htons(ETH_P_IP);
	ip->version = 4;
	ip->ihl = 5;
	ip->tot_len = bpf_htons(L3_LEN);
	ip->frag_off = bpf_htons(0x4000);
	ip->ttl = 64;
	ip->protocol = IPPROTO_TCP;
	ip->saddr = bpf_htonl(c->saddr + (i >> 10));
	ip->daddr = bpf_htonl(c->daddr);
	__u32 sum = 0;
	__u16 *w = (__u16 *)ip;
#pragma unroll
	for (int j = 0; j < 10; j++)
		sum += w[j];
	ip->check = fold(sum);

	tcp->source = bpf_htons(1024 + (i & 1023));
	tcp->dest = bpf_htons(c->dport);
	tcp->seq = bpf_htonl(syn ? 1000 : 1001);
	tcp->ack_seq = bpf_htonl(syn ? 0 : 5001);
	tcp->doff = 5;
	tcp->syn = syn;
	tcp->ack = !syn;
	tcp->window = bpf_htons(64240);
	/* pseudo-header (addresses, protocol, TCP length) plus the header itself */
	sum = (ip->saddr & 0xffff) + (ip->saddr >> 16) + (ip->daddr & 0xffff) +
	      (ip->daddr >> 16) + bpf_htons(IPPROTO_TCP) + bpf_htons(sizeof(*tcp));
	w = (__u16 *)tcp;
#pragma unroll
	for (int j = 0; j < 10; j++)
		sum += w[j];
	tcp->check = fold(sum);
	s->sent++;
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
