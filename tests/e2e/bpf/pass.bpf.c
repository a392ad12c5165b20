/* SPDX-License-Identifier: GPL-2.0-or-later */
/* XDP_PASS for every frame: attached to the switch side of the director's veths so that they
 * run NAPI, without which a veth drops what XDP_TX/XDP_REDIRECT sends into it. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int fl_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
