/* The bare AF_PACKET forwarder: the I/O path of fastlvs's AF_PACKET backend with nothing else,
 * in the same geometry (TPACKET_V3 RX ring of 256 blocks of 64 KiB, 1 ms block timeout; a
 * TPACKET_V2 TX ring of 4096 frames per output on its own socket with PACKET_QDISC_BYPASS).
 * Each received IPv4 frame is copied into the TX ring of OUT0 or OUT1 (a hash of the client
 * address and port chooses), its MACs rewritten there; one send() per output per block.
 *   fwd_packet IN OUT0 OUT1 RSMAC0 RSMAC1
 * Prints "ready" on stderr; on SIGTERM prints {"rx": N, "tx": N, "dropped": N} on stdout. */
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/ip.h>
#include <linux/udp.h>

#define BLOCK_SIZE (1 << 16)
#define BLOCK_NR 256
#define RX_FRAME 2048
#define TX_FRAME 2048
#define TX_NR 4096
#define TX_DATA_OFF TPACKET_ALIGN(sizeof(struct tpacket2_hdr))

struct out {
	int fd;
	unsigned char *ring;
	unsigned head, queued;
	unsigned char mac[6], rs_mac[6];
};

static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

static void die(const char *what)
{
	fprintf(stderr, "fwd_packet: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int packet_socket(const char *ifname, int version)
{
	int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
	if (fd < 0)
		die("socket");
	if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &version, sizeof(version)))
		die("PACKET_VERSION");
	return fd;
}

static void bind_to(int fd, const char *ifname, int proto)
{
	struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(proto),
				  .sll_ifindex = if_nametoindex(ifname)};
	if (!sll.sll_ifindex || bind(fd, (struct sockaddr *)&sll, sizeof(sll)))
		die(ifname);
}

static void parse_mac(const char *s, unsigned char *mac)
{
	if (sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3],
		   &mac[4], &mac[5]) != 6) {
		errno = EINVAL;
		die(s);
	}
}

static void get_mac(const char *ifname, unsigned char *mac)
{
	char path[128], buf[32];
	snprintf(path, sizeof(path), "/sys/class/net/%s/address", ifname);
	FILE *f = fopen(path, "r");
	if (!f || !fgets(buf, sizeof(buf), f))
		die(path);
	fclose(f);
	parse_mac(buf, mac);
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: fwd_packet IN OUT0 OUT1 RSMAC0 RSMAC1\n");
		return 2;
	}
	int rx = packet_socket(argv[1], TPACKET_V3);
	struct tpacket_req3 req = {.tp_block_size = BLOCK_SIZE, .tp_block_nr = BLOCK_NR,
				   .tp_frame_size = RX_FRAME,
				   .tp_frame_nr = BLOCK_SIZE / RX_FRAME * BLOCK_NR,
				   .tp_retire_blk_tov = 1};
	if (setsockopt(rx, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)))
		die("PACKET_RX_RING");
	unsigned char *rxring = mmap(NULL, (size_t)BLOCK_SIZE * BLOCK_NR, PROT_READ | PROT_WRITE,
				     MAP_SHARED | MAP_POPULATE, rx, 0);
	if (rxring == MAP_FAILED)
		die("mmap rx");
	bind_to(rx, argv[1], ETH_P_ALL);

	struct out out[2];
	for (int i = 0; i < 2; i++) {
		struct out *o = &out[i];
		memset(o, 0, sizeof(*o));
		o->fd = packet_socket(argv[2 + i], TPACKET_V2);
		int one = 1;
		setsockopt(o->fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));
		struct tpacket_req treq = {.tp_block_size = TX_FRAME * 32, .tp_block_nr = TX_NR / 32,
					   .tp_frame_size = TX_FRAME, .tp_frame_nr = TX_NR};
		if (setsockopt(o->fd, SOL_PACKET, PACKET_TX_RING, &treq, sizeof(treq)))
			die("PACKET_TX_RING");
		o->ring = mmap(NULL, (size_t)TX_FRAME * TX_NR, PROT_READ | PROT_WRITE,
			       MAP_SHARED | MAP_POPULATE, o->fd, 0);
		if (o->ring == MAP_FAILED)
			die("mmap tx");
		bind_to(o->fd, argv[2 + i], 0);     /* protocol 0: a TX-only socket receives nothing */
		get_mac(argv[2 + i], o->mac);
		parse_mac(argv[4 + i], o->rs_mac);
	}
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	fprintf(stderr, "fwd_packet: ready (%s -> %s, %s)\n", argv[1], argv[2], argv[3]);

	unsigned long long nrx = 0, ntx = 0, dropped = 0;
	unsigned blk = 0;
	while (!stop) {
		struct tpacket_block_desc *bd = (void *)(rxring + (size_t)blk * BLOCK_SIZE);
		if (!(__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER)) {
			struct pollfd pfd = {.fd = rx, .events = POLLIN | POLLERR};
			poll(&pfd, 1, 10);
			continue;
		}
		struct tpacket3_hdr *h = (void *)((unsigned char *)bd + bd->hdr.bh1.offset_to_first_pkt);
		for (unsigned k = 0; k < bd->hdr.bh1.num_pkts; k++) {
			unsigned char *f = (unsigned char *)h + h->tp_mac;
			unsigned len = h->tp_snaplen;
			struct iphdr *ip = (void *)(f + sizeof(struct ethhdr));
			struct udphdr *udp = (void *)(ip + 1);
			nrx++;
			if (len < sizeof(struct ethhdr) + sizeof(*ip) + sizeof(*udp) ||
			    ((struct ethhdr *)f)->h_proto != htons(ETH_P_IP) || len > TX_FRAME - TX_DATA_OFF) {
				dropped++;
			} else {
				unsigned hsh = (ntohl(ip->saddr) * 2654435761u) ^ (ntohs(udp->source) * 40503u);
				struct out *o = &out[(hsh >> 16) & 1];
				struct tpacket2_hdr *t = (void *)(o->ring + (size_t)o->head * TX_FRAME);
				if (__atomic_load_n(&t->tp_status, __ATOMIC_ACQUIRE) != TP_STATUS_AVAILABLE) {
					dropped++;
				} else {
					unsigned char *d = (unsigned char *)t + TX_DATA_OFF;
					memcpy(d, o->rs_mac, 6);
					memcpy(d + 6, o->mac, 6);
					memcpy(d + 12, f + 12, len - 12);
					t->tp_len = len;
					__atomic_store_n(&t->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
					o->head = (o->head + 1) % TX_NR;
					o->queued++;
					ntx++;
				}
			}
			h = (void *)((unsigned char *)h + h->tp_next_offset);
		}
		__atomic_store_n(&bd->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
		blk = (blk + 1) % BLOCK_NR;
		for (int i = 0; i < 2; i++)
			if (out[i].queued) {
				send(out[i].fd, NULL, 0, MSG_DONTWAIT);
				out[i].queued = 0;
			}
	}
	printf("{\"rx\": %llu, \"tx\": %llu, \"dropped\": %llu}\n", nrx, ntx, dropped);
	return 0;
}
