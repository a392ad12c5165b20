/* The bare AF_XDP forwarder: the I/O path of fastlvs's default backend with nothing else.
 * Receives on IN queue 0 (libxdp's default program redirects the queue to the socket), picks
 * OUT0 or OUT1 by a hash of the client address and port, rewrites the MACs and transmits by
 * descriptor: one UMEM shared by the three sockets, so a TX descriptor points at the received
 * frame. Tuned as on these machines: 4096-entry rings, RX batch 64, busy polling
 * (SO_PREFER_BUSY_POLL, SO_BUSY_POLL, SO_BUSY_POLL_BUDGET; peers.py sets the interface's
 * napi_defer_hard_irqs/gro_flush_timeout), XDP_MAX_TX_SKB_BUDGET where the kernel has it.
 *   fwd_xsk IN OUT0 OUT1 RSMAC0 RSMAC1 [--no-busy-poll]
 * Prints "ready" on stderr; on SIGTERM prints {"rx": N, "tx": N, "dropped": N} on stdout. */
#include <errno.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/if_ether.h>
#include <linux/if_link.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <arpa/inet.h>
#include <xdp/xsk.h>

#ifndef SO_PREFER_BUSY_POLL
#define SO_PREFER_BUSY_POLL 69
#endif
#ifndef SO_BUSY_POLL_BUDGET
#define SO_BUSY_POLL_BUDGET 70
#endif
#ifndef XDP_MAX_TX_SKB_BUDGET
#define XDP_MAX_TX_SKB_BUDGET 9
#endif

#define RING 4096
#define FRAMES (4 * RING)
#define FRAME_SIZE 2048
#define BATCH 64

struct port {
	struct xsk_socket *xsk;
	struct xsk_ring_cons rx, comp;
	struct xsk_ring_prod tx, fill;
	int fd;
	unsigned char mac[6], rs_mac[6];
	unsigned pending;       /* TX descriptors not yet completed */
};

static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

static __u64 free_stack[FRAMES];
static unsigned nfree;

static void die(const char *what, int err)
{
	fprintf(stderr, "fwd_xsk: %s: %s\n", what, strerror(err));
	exit(1);
}

static void get_mac(const char *ifname, unsigned char *mac)
{
	char path[128];
	snprintf(path, sizeof(path), "/sys/class/net/%s/address", ifname);
	FILE *f = fopen(path, "r");
	if (!f || fscanf(f, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3],
			 &mac[4], &mac[5]) != 6)
		die(path, errno ? errno : EINVAL);
	fclose(f);
}

static void parse_mac(const char *s, unsigned char *mac)
{
	if (sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3],
		   &mac[4], &mac[5]) != 6)
		die(s, EINVAL);
}

static void complete(struct port *p)
{
	__u32 idx, n = xsk_ring_cons__peek(&p->comp, RING, &idx);
	for (__u32 i = 0; i < n; i++)
		free_stack[nfree++] = *xsk_ring_cons__comp_addr(&p->comp, idx + i);
	if (n) {
		xsk_ring_cons__release(&p->comp, n);
		p->pending -= n;
	}
}

static void refill(struct port *p)
{
	__u32 idx, n = xsk_prod_nb_free(&p->fill, RING);
	if (n > nfree)
		n = nfree;
	if (!n || xsk_ring_prod__reserve(&p->fill, n, &idx) != n)
		return;
	for (__u32 i = 0; i < n; i++)
		*xsk_ring_prod__fill_addr(&p->fill, idx + i) = free_stack[--nfree];
	xsk_ring_prod__submit(&p->fill, n);
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: fwd_xsk IN OUT0 OUT1 RSMAC0 RSMAC1 [--no-busy-poll]\n");
		return 2;
	}
	int busy = !(argc > 6 && !strcmp(argv[6], "--no-busy-poll"));
	struct port in = {0}, out[2] = {{0}};
	int tx_budget = 0;
	void *area = mmap(NULL, (size_t)FRAMES * FRAME_SIZE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (area == MAP_FAILED)
		die("mmap", errno);
	struct xsk_umem *umem;
	struct xsk_umem_config ucfg = {.fill_size = RING, .comp_size = RING,
				       .frame_size = FRAME_SIZE, .frame_headroom = 0};
	int r = xsk_umem__create(&umem, area, (size_t)FRAMES * FRAME_SIZE, &in.fill, &in.comp, &ucfg);
	if (r)
		die("xsk_umem__create", -r);
	struct xsk_socket_config cfg = {.rx_size = RING, .tx_size = RING,
					.xdp_flags = XDP_FLAGS_DRV_MODE,
					.bind_flags = XDP_COPY | XDP_USE_NEED_WAKEUP};
	r = xsk_socket__create_shared(&in.xsk, argv[1], 0, umem, &in.rx, &in.tx, &in.fill,
				      &in.comp, &cfg);
	if (r)
		die("xsk_socket__create (IN)", -r);
	in.fd = xsk_socket__fd(in.xsk);
	cfg.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD;
	for (int i = 0; i < 2; i++) {
		r = xsk_socket__create_shared(&out[i].xsk, argv[2 + i], 0, umem, NULL, &out[i].tx,
					      &out[i].fill, &out[i].comp, &cfg);
		if (r)
			die("xsk_socket__create (OUT)", -r);
		out[i].fd = xsk_socket__fd(out[i].xsk);
		get_mac(argv[2 + i], out[i].mac);
		parse_mac(argv[4 + i], out[i].rs_mac);
		int budget = 256;
		tx_budget = !setsockopt(out[i].fd, SOL_XDP, XDP_MAX_TX_SKB_BUDGET, &budget,
					sizeof(budget));
	}
	if (busy) {
		int one = 1, usecs = 20, budget = BATCH;
		if (setsockopt(in.fd, SOL_SOCKET, SO_PREFER_BUSY_POLL, &one, sizeof(one)) ||
		    setsockopt(in.fd, SOL_SOCKET, SO_BUSY_POLL, &usecs, sizeof(usecs)) ||
		    setsockopt(in.fd, SOL_SOCKET, SO_BUSY_POLL_BUDGET, &budget, sizeof(budget)))
			die("busy poll options", errno);
	}
	for (__u64 a = 0; a < FRAMES; a++)
		free_stack[nfree++] = a * FRAME_SIZE;
	refill(&in);
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	fprintf(stderr, "fwd_xsk: ready (%s -> %s, %s; busy poll %s; XDP_MAX_TX_SKB_BUDGET %s)\n",
		argv[1], argv[2], argv[3], busy ? "on" : "off", tx_budget ? "256" : "not available");

	unsigned long long rx = 0, tx = 0, dropped = 0;
	while (!stop) {
		for (int i = 0; i < 2; i++)
			complete(&out[i]);
		refill(&in);
		__u32 idx, n = xsk_ring_cons__peek(&in.rx, BATCH, &idx);
		if (!n) {
			if (busy)
				recvfrom(in.fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
			else {
				struct pollfd pfd = {.fd = in.fd, .events = POLLIN};
				poll(&pfd, 1, 10);
			}
			continue;
		}
		unsigned sent[2] = {0, 0};
		for (__u32 k = 0; k < n; k++) {
			const struct xdp_desc *d = xsk_ring_cons__rx_desc(&in.rx, idx + k);
			unsigned char *f = xsk_umem__get_data(area, d->addr);
			struct iphdr *ip = (void *)(f + sizeof(struct ethhdr));
			struct udphdr *udp = (void *)(ip + 1);
			__u64 addr = xsk_umem__extract_addr(d->addr);
			rx++;
			if (d->len < sizeof(struct ethhdr) + sizeof(*ip) + sizeof(*udp) ||
			    ((struct ethhdr *)f)->h_proto != htons(ETH_P_IP)) {
				free_stack[nfree++] = addr;
				dropped++;
				continue;
			}
			__u32 h = (ntohl(ip->saddr) * 2654435761u) ^ (ntohs(udp->source) * 40503u);
			struct port *o = &out[(h >> 16) & 1];
			__u32 tidx;
			if (xsk_ring_prod__reserve(&o->tx, 1, &tidx) != 1) {
				free_stack[nfree++] = addr;
				dropped++;
				continue;
			}
			memcpy(f, o->rs_mac, 6);
			memcpy(f + 6, o->mac, 6);
			struct xdp_desc *t = xsk_ring_prod__tx_desc(&o->tx, tidx);
			t->addr = d->addr;
			t->len = d->len;
			xsk_ring_prod__submit(&o->tx, 1);
			o->pending++;
			sent[o - out]++;
			tx++;
		}
		xsk_ring_cons__release(&in.rx, n);
		for (int i = 0; i < 2; i++)
			if (out[i].pending)     /* copy mode transmits only inside sendto */
				sendto(out[i].fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
	}
	printf("{\"rx\": %llu, \"tx\": %llu, \"dropped\": %llu}\n", rx, tx, dropped);
	for (int i = 0; i < 2; i++)
		xsk_socket__delete(out[i].xsk);
	xsk_socket__delete(in.xsk);
	xsk_umem__delete(umem);
	return 0;
}
