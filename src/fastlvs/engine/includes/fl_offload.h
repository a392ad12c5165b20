/* The few libbpf calls the XDP offload makes (dataplane/offload.pxi): create the shared
 * connection map, read it back in batches, take an entry out with its last counters, let a
 * program object use the map before it is loaded, and run the program once on a frame
 * (BPF_PROG_TEST_RUN: the tests compare its bytes with the engine's). Without FL_HAVE_XDP
 * the same names fail with -EOPNOTSUPP. */
#ifndef FL_OFFLOAD_H
#define FL_OFFLOAD_H

#include "fl_xdp.h"

#ifdef FL_HAVE_XDP
#include <unistd.h>

static inline int fl_off_map_create(unsigned key_size, unsigned val_size, unsigned max_entries)
{
	LIBBPF_OPTS(bpf_map_create_opts, o, .map_flags = BPF_F_NO_PREALLOC);
	int fd = bpf_map_create(BPF_MAP_TYPE_HASH, "fl_offload", key_size, val_size,
				max_entries, &o);
	return fd < 0 ? -errno : fd;
}

/* One batch: *count in (room) and out (read); *more = 0 once the map was read to its end. */
static inline int fl_off_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys,
				      void *vals, __u32 *count, int *more)
{
	int r = bpf_map_lookup_batch(fd, in_batch, out_batch, keys, vals, count, NULL);

	*more = 1;
	if (r < 0) {
		if (errno == ENOENT) {   /* the last batch (possibly empty) */
			*more = 0;
			return 0;
		}
		return -errno;
	}
	return 0;
}

static inline int fl_off_lookup_delete(int fd, const void *key, void *val)
{
	return bpf_map_lookup_and_delete_elem(fd, key, val) ? -errno : 0;
}

static inline int fl_off_lookup(int fd, const void *key, void *val)
{
	return bpf_map_lookup_elem(fd, key, val) ? -errno : 0;
}

static inline int fl_off_update(int fd, const void *key, const void *val)
{
	return bpf_map_update_elem(fd, key, val, BPF_ANY) ? -errno : 0;
}

/* *count in: entries, out: entries written (all of them when 0 is returned) */
static inline int fl_off_update_batch(int fd, const void *keys, const void *vals, __u32 *count)
{
	LIBBPF_OPTS(bpf_map_batch_opts, o, .elem_flags = BPF_ANY);

	return bpf_map_update_batch(fd, keys, vals, count, &o) ? -errno : 0;
}

static inline int fl_off_delete(int fd, const void *key)
{
	return bpf_map_delete_elem(fd, key) ? -errno : 0;
}

/* Before the object is loaded: its fl_offload becomes the engine's map (same size). */
static inline int fl_off_reuse(struct bpf_object *obj, int fd, unsigned max_entries)
{
	struct bpf_map *m = bpf_object__find_map_by_name(obj, "fl_offload");
	int r;

	if (!m)
		return -ENOENT;
	r = bpf_map__set_max_entries(m, max_entries);
	if (r)
		return r;
	return bpf_map__reuse_fd(m, fd);
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
static inline int fl_off_map_create(unsigned k, unsigned v, unsigned n) { (void)k; (void)v; (void)n; return -EOPNOTSUPP; }
static inline int fl_off_lookup_batch(int fd, void *ib, void *ob, void *k, void *v, __u32 *c, int *m) { (void)fd; (void)ib; (void)ob; (void)k; (void)v; *c = 0; *m = 0; return -EOPNOTSUPP; }
static inline int fl_off_lookup_delete(int fd, const void *k, void *v) { (void)fd; (void)k; (void)v; return -EOPNOTSUPP; }
static inline int fl_off_lookup(int fd, const void *k, void *v) { (void)fd; (void)k; (void)v; return -EOPNOTSUPP; }
static inline int fl_off_update(int fd, const void *k, const void *v) { (void)fd; (void)k; (void)v; return -EOPNOTSUPP; }
static inline int fl_off_delete(int fd, const void *k) { (void)fd; (void)k; return -EOPNOTSUPP; }
static inline int fl_off_update_batch(int fd, const void *k, const void *v, __u32 *c) { (void)fd; (void)k; (void)v; *c = 0; return -EOPNOTSUPP; }
static inline int fl_off_reuse(struct bpf_object *o, int fd, unsigned n) { (void)o; (void)fd; (void)n; return -EOPNOTSUPP; }
static inline int fl_off_test_run(const char *p, int fd, unsigned n, const void *sk, const void *rk, const void *d, __u32 l, void *o, __u32 *ol, __u32 *a, __u32 i, __u32 r, __u32 *du) { (void)r; (void)du; (void)p; (void)fd; (void)n; (void)sk; (void)rk; (void)d; (void)l; (void)o; (void)ol; (void)a; (void)i; return -EOPNOTSUPP; }
#endif

#endif
