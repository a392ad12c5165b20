/* The peers' XDP loader, two commands (run inside a namespace with `ip netns exec`):
 *   xdptool attach IFNAME OBJ [CFGHEX [IFNAME0 IFNAME1]]
 *       loads OBJ's one program in native mode on IFNAME, writes CFGHEX into map "cfg" key 0 and
 *       the given interfaces into devmap "tx_port"; prints "ready"; then answers each line on
 *       stdin with the sum over CPUs of map "cnt" key 0; detaches at EOF, "q" or SIGTERM.
 *   xdptool gen IFNAME OBJ CFGHEX SECONDS
 *       one BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES and IFNAME as ingress, ended by a
 *       timer signal after SECONDS; prints {"sent": N, "skipped": N, "seconds": S}. */
#include <errno.h>
#include <net/if.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <linux/if_link.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "peers.h"

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static int hexbytes(const char *hex, unsigned char *out, size_t cap)
{
	size_t n = strlen(hex) / 2;
	if (n > cap)
		return -1;
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		if (sscanf(hex + 2 * i, "%2x", &v) != 1)
			return -1;
		out[i] = v;
	}
	return (int)n;
}

static struct bpf_program *load(const char *path, struct bpf_object **objp)
{
	struct bpf_object *obj = bpf_object__open_file(path, NULL);
	if (!obj || libbpf_get_error(obj)) {
		fprintf(stderr, "xdptool: open %s failed\n", path);
		exit(1);
	}
	if (bpf_object__load(obj)) {
		fprintf(stderr, "xdptool: load %s: %s\n", path, strerror(errno));
		exit(1);
	}
	*objp = obj;
	return bpf_object__next_program(obj, NULL);
}

static void set_cfg(struct bpf_object *obj, const char *hex)
{
	unsigned char buf[256] = {0};
	struct bpf_map *m = bpf_object__find_map_by_name(obj, "cfg");
	__u32 k = 0;
	if (!m || hexbytes(hex, buf, sizeof(buf)) < 0 ||
	    bpf_map_update_elem(bpf_map__fd(m), &k, buf, 0)) {
		fprintf(stderr, "xdptool: cannot set cfg: %s\n", strerror(errno));
		exit(1);
	}
}

static unsigned long long count(struct bpf_object *obj)
{
	struct bpf_map *m = bpf_object__find_map_by_name(obj, "cnt");
	int ncpu = libbpf_num_possible_cpus();
	__u64 vals[ncpu > 0 ? ncpu : 1];
	__u32 k = 0;
	unsigned long long sum = 0;
	if (!m || bpf_map_lookup_elem(bpf_map__fd(m), &k, vals))
		return 0;
	for (int i = 0; i < ncpu; i++)
		sum += vals[i];
	return sum;
}

static int cmd_attach(int argc, char **argv)
{
	struct bpf_object *obj;
	int ifindex = if_nametoindex(argv[2]);
	if (!ifindex) {
		fprintf(stderr, "xdptool: no interface %s\n", argv[2]);
		return 1;
	}
	struct bpf_program *prog = load(argv[3], &obj);
	if (argc > 4)
		set_cfg(obj, argv[4]);
	for (int i = 5; i < argc && i < 7; i++) {
		struct bpf_map *m = bpf_object__find_map_by_name(obj, "tx_port");
		__u32 k = i - 5, v = if_nametoindex(argv[i]);
		if (!m || !v || bpf_map_update_elem(bpf_map__fd(m), &k, &v, 0)) {
			fprintf(stderr, "xdptool: devmap %s: %s\n", argv[i], strerror(errno));
			return 1;
		}
	}
	if (bpf_xdp_attach(ifindex, bpf_program__fd(prog), XDP_FLAGS_DRV_MODE, NULL)) {
		fprintf(stderr, "xdptool: attach %s: %s\n", argv[2], strerror(errno));
		return 1;
	}
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	printf("ready\n");
	fflush(stdout);
	char line[64];
	while (!stop && fgets(line, sizeof(line), stdin) && line[0] != 'q') {
		printf("%llu\n", count(obj));
		fflush(stdout);
	}
	bpf_xdp_detach(ifindex, XDP_FLAGS_DRV_MODE, NULL);
	return 0;
}

static int cmd_gen(int argc, char **argv)
{
	struct bpf_object *obj;
	if (argc < 6)
		return 2;
	int ifindex = if_nametoindex(argv[2]);
	struct bpf_program *prog = load(argv[3], &obj);
	set_cfg(obj, argv[4]);
	double seconds = atof(argv[5]);

	unsigned char frame[60] = {0};
	struct xdp_md ctx_in = {.data_end = sizeof(frame), .ingress_ifindex = ifindex};
	LIBBPF_OPTS(bpf_test_run_opts, opts,
		    .data_in = frame, .data_size_in = sizeof(frame),
		    .ctx_in = &ctx_in, .ctx_size_in = sizeof(ctx_in),
		    .repeat = 0xffffffffu, .flags = BPF_F_TEST_XDP_LIVE_FRAMES,
		    .batch_size = 64);
	struct sigaction sa = {.sa_handler = on_signal};   /* no SA_RESTART: the run returns */
	sigaction(SIGALRM, &sa, NULL);
	struct itimerval it = {.it_value = {.tv_sec = (long)seconds,
					     .tv_usec = (long)((seconds - (long)seconds) * 1e6)}};
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	setitimer(ITIMER_REAL, &it, NULL);
	int err = 0;
	while (!stop) {
		err = bpf_prog_test_run_opts(bpf_program__fd(prog), &opts);
		if (err && errno != EINTR) {
			fprintf(stderr, "xdptool: test run: %s\n", strerror(errno));
			break;
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	struct gen_state s = {0};
	__u32 k = 0;
	bpf_map_lookup_elem(bpf_map__fd(bpf_object__find_map_by_name(obj, "state")), &k, &s);
	printf("{\"sent\": %llu, \"skipped\": %llu, \"seconds\": %.6f}\n",
	       (unsigned long long)s.sent, (unsigned long long)s.skipped,
	       (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	return err && errno != EINTR ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc >= 4 && !strcmp(argv[1], "attach"))
		return cmd_attach(argc, argv);
	if (argc >= 6 && !strcmp(argv[1], "gen"))
		return cmd_gen(argc, argv);
	fprintf(stderr, "usage: xdptool attach IFNAME OBJ [CFGHEX [IF0 IF1]] | gen IFNAME OBJ CFGHEX SECONDS\n");
	return 2;
}
