/* The XDP offload's tables and the few libbpf calls it makes (dataplane/offload.pxi): the
 * structs shared with bpf/steer.bpf.c, the hash both sides compute, the seqlock writes the
 * engine makes through mmap, creating the three maps, summing a per-CPU counter, letting a
 * program object use the maps before it is loaded, and running the program once on a frame
 * (BPF_PROG_TEST_RUN: the tests compare its bytes with the engine's). Without FL_HAVE_XDP the
 * calls fail with -EOPNOTSUPP. */
#ifndef FL_OFFLOAD_H
#define FL_OFFLOAD_H

#include "fl_xdp.h"

#include <stdint.h>
#include <string.h>

/* == bpf/steer.bpf.c, byte for byte */
#define FL_OFF_MAGIC 0x464C4F31u   /* "FLO1": fl_offload[0] is a struct fl_off_cfg */
#define FL_OFF_PROBE 4

struct fl_off_slot {
	uint32_t seq;
	uint32_t saddr;
	uint32_t daddr;
	uint16_t sport;
	uint16_t dport;
	uint8_t proto;
	uint8_t kind;
	uint16_t rw;
	uint32_t conn;
	uint64_t seen;
};

struct fl_off_cfg {
	uint32_t magic;
	uint32_t mask;
	uint64_t seed[2];
	uint32_t rw_id;
	uint32_t cnt_id;
	uint8_t pad[32];
};

struct fl_off_rw {
	uint32_t seq;
	uint32_t ifindex;
	uint8_t dmac[6];
	uint8_t smac[6];
	uint8_t kind;
	uint8_t flags;
	uint16_t mtu;
	uint32_t addr;
	uint32_t local;
	uint16_t port;
	uint16_t pad;
	uint32_t daddr_csum;
	uint32_t dport_csum;
	uint8_t pad2[20];
};

struct fl_off_cnt {
	uint64_t pkts;
	uint64_t bytes;
};

_Static_assert(sizeof(struct fl_off_slot) == 32, "a slot is half a line");
_Static_assert(sizeof(struct fl_off_cfg) == 64, "one line");
_Static_assert(sizeof(struct fl_off_rw) == 64, "one line");

/* == off_hash() in bpf/steer.bpf.c. Addresses and ports as the packet carries them. */
static inline uint32_t fl_off_hash(const uint64_t *seed, uint32_t saddr, uint32_t daddr,
				   uint16_t sport, uint16_t dport, uint8_t proto)
{
	uint32_t ports = sport | (uint32_t)dport << 16;
	uint64_t h = ((((uint64_t)saddr << 32) | daddr) ^ seed[0]) * 0x9E3779B97F4A7C15ull;

	h ^= h >> 32;
	h ^= (((uint64_t)ports << 32) | proto) ^ seed[1];
	h *= 0xC2B2AE3D27D4EB4Full;
	h ^= h >> 29;
	return (uint32_t)h;
}

/* The seqlock's writer side (the engine is the only writer). The program reads seq, the
 * fields, then seq again, and takes an odd or changed seq as a miss. What this relies on:
 * x86's TSO keeps our stores in program order for every other CPU (and the program's loads
 * in order), so the compiler barriers below are all that is needed; a weakly ordered CPU
 * would need store/load fences on both sides. */
#define fl_off_barrier() __asm__ __volatile__("" ::: "memory")

/* Copy n bytes after the seq word of `src` into `dst` under dst's seq. */
static inline void fl_off_seq_write(void *dst, const void *src, size_t n)
{
	volatile uint32_t *seq = dst;
	uint32_t q = *seq;

	*seq = q + 1;
	fl_off_barrier();
	memcpy((uint8_t *)dst + 4, (const uint8_t *)src + 4, n - 4);
	fl_off_barrier();
	*seq = q + 2;
	fl_off_barrier();
}

static inline uint64_t fl_off_read_seen(const struct fl_off_slot *s)
{
	return *(const volatile uint64_t *)&s->seen;
}

#ifdef FL_HAVE_XDP
#include <unistd.h>
#include <sys/mman.h>

/* The table (fl_offload: `entries` buckets of 64 bytes, mmapable), the rewrite entries
 * (fl_off_rw, mmapable) and their per-CPU counters (fl_off_cnt): fds[0..2], or -errno. */
static inline int fl_off_maps_create(unsigned entries, unsigned nrw, int *fds)
{
	LIBBPF_OPTS(bpf_map_create_opts, o, .map_flags = BPF_F_MMAPABLE);
	LIBBPF_OPTS(bpf_map_create_opts, p);
	int r;

	fds[0] = bpf_map_create(BPF_MAP_TYPE_ARRAY, "fl_offload", 4, 64, entries, &o);
	if (fds[0] < 0)
		return -errno;
	fds[1] = bpf_map_create(BPF_MAP_TYPE_ARRAY, "fl_off_rw", 4, 64, nrw, &o);
	if (fds[1] < 0) {
		r = -errno;
		close(fds[0]);
		return r;
	}
	fds[2] = bpf_map_create(BPF_MAP_TYPE_PERCPU_ARRAY, "fl_off_cnt", 4,
				sizeof(struct fl_off_cnt), nrw, &p);
	if (fds[2] < 0) {
		r = -errno;
		close(fds[0]);
		close(fds[1]);
		return r;
	}
	return 0;
}

/* Populated at once: an install touches a random bucket, and a first touch of each page
 * would otherwise fault (a few µs, once per page, in the forwarding loop). */
static inline void *fl_off_mmap(int fd, size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);

	return p == MAP_FAILED ? NULL : p;
}

static inline void fl_off_munmap(void *p, size_t len)
{
	if (p)
		munmap(p, len);
}

static inline uint32_t fl_off_map_id(int fd)
{
	struct bpf_map_info info = {0};
	__u32 len = sizeof(info);

	return bpf_obj_get_info_by_fd(fd, &info, &len) ? 0 : info.id;
}

#define FL_OFF_MAX_CPUS 1024

/* Counter `idx` summed over the CPUs (one syscall). */
static inline int fl_off_cnt_read(int fd, uint32_t idx, uint64_t *pkts, uint64_t *bytes)
{
	static struct fl_off_cnt buf[FL_OFF_MAX_CPUS];
	int n = libbpf_num_possible_cpus();

	if (n <= 0 || n > FL_OFF_MAX_CPUS)
		return -EINVAL;
	if (bpf_map_lookup_elem(fd, &idx, buf))
		return -errno;
	*pkts = *bytes = 0;
	for (int i = 0; i < n; i++) {
		*pkts += buf[i].pkts;
		*bytes += buf[i].bytes;
	}
	return 0;
}

/* Before the object is loaded: its fl_offload, fl_off_rw and fl_off_cnt become the engine's
 * (found from the table's fd: its entry 0 names the other two by map id). */
static inline int fl_off_reuse(struct bpf_object *obj, int fd, unsigned max_entries)
{
	static const char *names[3] = {"fl_offload", "fl_off_rw", "fl_off_cnt"};
	struct fl_off_cfg cfg;
	__u32 zero = 0;
	int fds[3] = {fd, -1, -1}, r = 0;

	(void)max_entries;      /* the maps' own sizes: bpf_map__reuse_fd takes them */
	if (bpf_map_lookup_elem(fd, &zero, &cfg))
		return -errno;
	if (cfg.magic != FL_OFF_MAGIC)
		return -EINVAL;
	fds[1] = bpf_map_get_fd_by_id(cfg.rw_id);
	fds[2] = bpf_map_get_fd_by_id(cfg.cnt_id);
	if (fds[1] < 0 || fds[2] < 0)
		r = -errno;
	for (int i = 0; i < 3 && !r; i++) {
		struct bpf_map *m = bpf_object__find_map_by_name(obj, names[i]);

		r = m ? bpf_map__reuse_fd(m, fds[i]) : -ENOENT;
	}
	/* reuse_fd keeps a duplicate of its own */
	if (fds[1] >= 0)
		close(fds[1]);
	if (fds[2] >= 0)
		close(fds[2]);
	return r;
}

/* Load `path` with its fl_offload replaced by `fd` and the steering keys svc_key (into
 * fl_services) and rs_key (fl_rservers; NULL: none), the in-place copies off so that the hash
 * maps answer; run its program once on data[0:len], copy the frame it leaves to out (*outlen
 * in: room, out: length) and its verdict to *action. */
static inline int fl_off_put_keys(struct bpf_object *obj, const void *svc_key, const void *rs_key)
{
	struct bpf_map *fast = bpf_object__find_map_by_name(obj, "fl_fast");
	__u32 one = 1, zero = 0, off = 0xFFFFFFFFu;
	char buf[1024] = {0};
	int r = 0;

	if (!fast || bpf_map__value_size(fast) > sizeof(buf))
		return -ENOENT;
	memcpy(buf, &off, 4);                    /* nsvc */
	memcpy(buf + 4, &off, 4);                /* nrs */
	memcpy(buf + 8 + 2 * 8 * 20, &off, 4);   /* nlocal */
	r |= bpf_map__update_elem(fast, &zero, 4, buf, bpf_map__value_size(fast), 0);
	if (svc_key)
		r |= bpf_map__update_elem(bpf_object__find_map_by_name(obj, "fl_services"),
					  svc_key, 20, &one, 4, 0);
	if (rs_key)
		r |= bpf_map__update_elem(bpf_object__find_map_by_name(obj, "fl_rservers"),
					  rs_key, 20, &one, 4, 0);
	return r ? -EINVAL : 0;
}

static inline int fl_off_test_run(const char *path, int fd, unsigned max_entries,
				  const void *svc_key, const void *rs_key,
				  const void *data, __u32 len, void *out, __u32 *outlen,
				  __u32 *action, __u32 ingress_ifindex, __u32 repeat, __u32 *duration)
{
	struct bpf_object *obj = bpf_object__open_file(path, NULL);
	struct bpf_program *prog;
	struct xdp_md ctx = { .data = 0, .data_end = len, .ingress_ifindex = ingress_ifindex };
	int r;

	if (!obj)
		return -errno;
	r = fl_off_reuse(obj, fd, max_entries);
	if (!r)
		r = bpf_object__load(obj);
	prog = r ? NULL : bpf_object__find_program_by_name(obj, "fl_steer");
	if (!r && !prog)
		r = -ENOENT;
	if (!r)
		r = fl_off_put_keys(obj, svc_key, rs_key);
	if (!r) {
		LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = data, .data_size_in = len,
			    .data_out = out, .data_size_out = *outlen, .ctx_in = &ctx,
			    .ctx_size_in = sizeof(ctx), .repeat = repeat ? repeat : 1);
		r = bpf_prog_test_run_opts(bpf_program__fd(prog), &o);
		if (r)
			r = -errno;
		*outlen = o.data_size_out;
		*action = o.retval;
		*duration = o.duration;
	}
	bpf_object__close(obj);
	return r;
}

#else
static inline int fl_off_maps_create(unsigned e, unsigned n, int *fds) { (void)e; (void)n; (void)fds; return -EOPNOTSUPP; }
static inline void *fl_off_mmap(int fd, size_t len) { (void)fd; (void)len; return NULL; }
static inline void fl_off_munmap(void *p, size_t len) { (void)p; (void)len; }
static inline uint32_t fl_off_map_id(int fd) { (void)fd; return 0; }
static inline int fl_off_cnt_read(int fd, uint32_t i, uint64_t *p, uint64_t *b) { (void)fd; (void)i; *p = *b = 0; return -EOPNOTSUPP; }
static inline int fl_off_reuse(struct bpf_object *o, int fd, unsigned n) { (void)o; (void)fd; (void)n; return -EOPNOTSUPP; }
static inline int fl_off_test_run(const char *p, int fd, unsigned n, const void *sk, const void *rk, const void *d, __u32 l, void *o, __u32 *ol, __u32 *a, __u32 i, __u32 r, __u32 *du) { (void)r; (void)du; (void)p; (void)fd; (void)n; (void)sk; (void)rk; (void)d; (void)l; (void)o; (void)ol; (void)a; (void)i; return -EOPNOTSUPP; }
#endif

#endif
