/* The AF_XDP headers as the extension sees them. With FL_HAVE_XDP (setup.py defines it when
 * libxdp-dev and libbpf-dev are installed) this is libxdp's xsk.h/libxdp.h and libbpf; without
 * it, the same names as stubs that fail with -EOPNOTSUPP, so _core still builds (AF_PACKET only)
 * and XdpPort says what was missing. Also: a quiet print callback that keeps libxdp's/libbpf's
 * last message for our error texts instead of writing to stderr. */
#ifndef FL_XDP_H
#define FL_XDP_H

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <stdint.h>
#include <linux/types.h>
#include <linux/if_link.h>   /* before the xdp headers (XDP_FLAGS_*) */
#include <linux/if_xdp.h>
#include <sys/socket.h>

/* Ring barriers for the AF_PACKET rings (the AF_XDP ones are inside libxdp's accessors). */
#define fl_load_acquire_u32(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define fl_store_release_u32(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

#ifdef FL_HAVE_XDP
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <xdp/libxdp.h>
#include <xdp/xsk.h>
#define FL_XDP_BUILT 1

static char fl_xdp_last_msg[512];

static int fl_xdp_keep_print(enum libxdp_print_level level, const char *fmt, va_list args)
{
	(void)level;
	vsnprintf(fl_xdp_last_msg, sizeof(fl_xdp_last_msg), fmt, args);
	if (getenv("FASTLVS_XDP_DEBUG"))
		fputs(fl_xdp_last_msg, stderr);
	return 0;
}

static int fl_bpf_keep_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	(void)level;
	vsnprintf(fl_xdp_last_msg, sizeof(fl_xdp_last_msg), fmt, args);
	if (getenv("FASTLVS_XDP_DEBUG"))
		fputs(fl_xdp_last_msg, stderr);
	return 0;
}

static inline void fl_xdp_quiet(void)
{
	libxdp_set_print(fl_xdp_keep_print);
	libbpf_set_print(fl_bpf_keep_print);
}

static inline const char *fl_xdp_last(void) { return fl_xdp_last_msg; }

#else  /* !FL_HAVE_XDP: stubs with the same names */
#define FL_XDP_BUILT 0
#include <stdlib.h>

struct xsk_ring_prod { __u32 cached_prod, cached_cons, mask, size; __u32 *producer, *consumer; void *ring; __u32 *flags; };
struct xsk_ring_cons { __u32 cached_prod, cached_cons, mask, size; __u32 *producer, *consumer; void *ring; __u32 *flags; };
struct xsk_umem;
struct xsk_socket;
struct xdp_program;
struct bpf_object;
struct xsk_umem_config { __u32 fill_size, comp_size, frame_size, frame_headroom, flags; };
struct xsk_socket_config { __u32 rx_size, tx_size; union { __u32 libbpf_flags; __u32 libxdp_flags; }; __u32 xdp_flags; __u16 bind_flags; };
enum xdp_attach_mode { XDP_MODE_UNSPEC = 0, XDP_MODE_NATIVE, XDP_MODE_SKB, XDP_MODE_HW };
#define XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD (1 << 0)

static inline __u64 *xsk_ring_prod__fill_addr(struct xsk_ring_prod *r, __u32 i) { return &((__u64 *)r->ring)[i & r->mask]; }
static inline const __u64 *xsk_ring_cons__comp_addr(const struct xsk_ring_cons *r, __u32 i) { return &((const __u64 *)r->ring)[i & r->mask]; }
static inline struct xdp_desc *xsk_ring_prod__tx_desc(struct xsk_ring_prod *r, __u32 i) { return &((struct xdp_desc *)r->ring)[i & r->mask]; }
static inline const struct xdp_desc *xsk_ring_cons__rx_desc(const struct xsk_ring_cons *r, __u32 i) { return &((const struct xdp_desc *)r->ring)[i & r->mask]; }
static inline int xsk_ring_prod__needs_wakeup(const struct xsk_ring_prod *r) { (void)r; return 0; }
static inline __u32 xsk_prod_nb_free(struct xsk_ring_prod *r, __u32 nb) { (void)r; (void)nb; return 0; }
static inline __u32 xsk_cons_nb_avail(struct xsk_ring_cons *r, __u32 nb) { (void)r; (void)nb; return 0; }
static inline __u32 xsk_ring_prod__reserve(struct xsk_ring_prod *r, __u32 nb, __u32 *idx) { (void)r; (void)nb; (void)idx; return 0; }
static inline void xsk_ring_prod__submit(struct xsk_ring_prod *r, __u32 nb) { (void)r; (void)nb; }
static inline __u32 xsk_ring_cons__peek(struct xsk_ring_cons *r, __u32 nb, __u32 *idx) { (void)r; (void)nb; (void)idx; return 0; }
static inline void xsk_ring_cons__cancel(struct xsk_ring_cons *r, __u32 nb) { (void)r; (void)nb; }
static inline void xsk_ring_cons__release(struct xsk_ring_cons *r, __u32 nb) { (void)r; (void)nb; }
static inline void *xsk_umem__get_data(void *area, __u64 addr) { return (char *)area + addr; }
static inline int xsk_umem__fd(const struct xsk_umem *u) { (void)u; return -1; }
static inline int xsk_socket__fd(const struct xsk_socket *x) { (void)x; return -1; }
static inline int xsk_umem__create(struct xsk_umem **u, void *a, __u64 s, struct xsk_ring_prod *f, struct xsk_ring_cons *c, const struct xsk_umem_config *cfg) { (void)u; (void)a; (void)s; (void)f; (void)c; (void)cfg; return -EOPNOTSUPP; }
static inline int xsk_socket__create_shared(struct xsk_socket **x, const char *n, __u32 q, struct xsk_umem *u, struct xsk_ring_cons *rx, struct xsk_ring_prod *tx, struct xsk_ring_prod *f, struct xsk_ring_cons *c, const struct xsk_socket_config *cfg) { (void)x; (void)n; (void)q; (void)u; (void)rx; (void)tx; (void)f; (void)c; (void)cfg; return -EOPNOTSUPP; }
static inline int xsk_umem__delete(struct xsk_umem *u) { (void)u; return 0; }
static inline void xsk_socket__delete(struct xsk_socket *x) { (void)x; }
static inline long libxdp_get_error(const void *p) { return p ? 0 : -EOPNOTSUPP; }
static inline struct xdp_program *xdp_program__open_file(const char *f, const char *s, void *o) { (void)f; (void)s; (void)o; return NULL; }
static inline int xdp_program__attach(struct xdp_program *p, int i, enum xdp_attach_mode m, unsigned int f) { (void)p; (void)i; (void)m; (void)f; return -EOPNOTSUPP; }
static inline int xdp_program__detach(struct xdp_program *p, int i, enum xdp_attach_mode m, unsigned int f) { (void)p; (void)i; (void)m; (void)f; return -EOPNOTSUPP; }
static inline void xdp_program__close(struct xdp_program *p) { (void)p; }
static inline struct bpf_object *xdp_program__bpf_obj(struct xdp_program *p) { (void)p; return NULL; }
static inline int bpf_object__find_map_fd_by_name(const struct bpf_object *o, const char *n) { (void)o; (void)n; return -EOPNOTSUPP; }
static inline int bpf_map_update_elem(int fd, const void *k, const void *v, __u64 f) { (void)fd; (void)k; (void)v; (void)f; return -EOPNOTSUPP; }
static inline int bpf_map_delete_elem(int fd, const void *k) { (void)fd; (void)k; return -EOPNOTSUPP; }
static inline int bpf_map_lookup_elem(int fd, const void *k, void *v) { (void)fd; (void)k; (void)v; return -EOPNOTSUPP; }
static inline int libbpf_num_possible_cpus(void) { return 1; }
static inline void fl_xdp_quiet(void) {}
static inline const char *fl_xdp_last(void) { return ""; }
#endif

#endif
