# Declarations of the AF_XDP API the backends use: linux/if_xdp.h, libxdp's xsk.h and libxdp.h,
# and the few libbpf calls for our maps. Names are verbatim from the C headers; fl_xdp.h maps
# them to stubs when the extension was built without libxdp (FL_XDP_BUILT == 0).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "fl_xdp.h" nogil:
    int FL_XDP_BUILT
    void fl_xdp_quiet()
    const char *fl_xdp_last()

    # linux/if_xdp.h
    int XDP_SHARED_UMEM
    int XDP_COPY
    int XDP_ZEROCOPY
    int XDP_USE_NEED_WAKEUP
    int XDP_RING_NEED_WAKEUP
    int SOL_XDP
    int XDP_STATISTICS
    int XDP_OPTIONS
    int XDP_OPTIONS_ZEROCOPY
    struct xdp_desc:
        uint64_t addr
        uint32_t len
        uint32_t options
    struct xdp_statistics:
        uint64_t rx_dropped
        uint64_t rx_invalid_descs
        uint64_t tx_invalid_descs
        uint64_t rx_ring_full
        uint64_t rx_fill_ring_empty_descs
        uint64_t tx_ring_empty_descs
    struct xdp_options:
        uint32_t flags

    # linux/if_link.h
    int XDP_FLAGS_UPDATE_IF_NOEXIST
    int XDP_FLAGS_SKB_MODE
    int XDP_FLAGS_DRV_MODE

    # xdp/xsk.h
    struct xsk_ring_prod:
        uint32_t cached_prod
        uint32_t cached_cons
        uint32_t mask
        uint32_t size
    struct xsk_ring_cons:
        uint32_t cached_prod
        uint32_t cached_cons
        uint32_t mask
        uint32_t size
    struct xsk_umem:
        pass
    struct xsk_socket:
        pass
    struct xsk_umem_config:
        uint32_t fill_size
        uint32_t comp_size
        uint32_t frame_size
        uint32_t frame_headroom
        uint32_t flags
    struct xsk_socket_config:
        uint32_t rx_size
        uint32_t tx_size
        uint32_t libxdp_flags
        uint32_t xdp_flags
        uint16_t bind_flags
    int XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD

    uint64_t *xsk_ring_prod__fill_addr(xsk_ring_prod *fill, uint32_t idx)
    const uint64_t *xsk_ring_cons__comp_addr(const xsk_ring_cons *comp, uint32_t idx)
    xdp_desc *xsk_ring_prod__tx_desc(xsk_ring_prod *tx, uint32_t idx)
    const xdp_desc *xsk_ring_cons__rx_desc(const xsk_ring_cons *rx, uint32_t idx)
    int xsk_ring_prod__needs_wakeup(const xsk_ring_prod *r)
    uint32_t xsk_prod_nb_free(xsk_ring_prod *r, uint32_t nb)
    uint32_t xsk_cons_nb_avail(xsk_ring_cons *r, uint32_t nb)
    uint32_t xsk_ring_prod__reserve(xsk_ring_prod *prod, uint32_t nb, uint32_t *idx)
    void xsk_ring_prod__submit(xsk_ring_prod *prod, uint32_t nb)
    uint32_t xsk_ring_cons__peek(xsk_ring_cons *cons, uint32_t nb, uint32_t *idx)
    void xsk_ring_cons__cancel(xsk_ring_cons *cons, uint32_t nb)
    void xsk_ring_cons__release(xsk_ring_cons *cons, uint32_t nb)
    void *xsk_umem__get_data(void *umem_area, uint64_t addr)
    int xsk_umem__fd(const xsk_umem *umem)
    int xsk_socket__fd(const xsk_socket *xsk)
    int xsk_umem__create(xsk_umem **umem, void *umem_area, uint64_t size, xsk_ring_prod *fill,
                         xsk_ring_cons *comp, const xsk_umem_config *config)
    int xsk_socket__create_shared(xsk_socket **xsk_ptr, const char *ifname, uint32_t queue_id,
                                  xsk_umem *umem, xsk_ring_cons *rx, xsk_ring_prod *tx,
                                  xsk_ring_prod *fill, xsk_ring_cons *comp,
                                  const xsk_socket_config *config)
    int xsk_umem__delete(xsk_umem *umem)
    void xsk_socket__delete(xsk_socket *xsk)

    # xdp/libxdp.h
    struct xdp_program:
        pass
    enum xdp_attach_mode:
        XDP_MODE_UNSPEC
        XDP_MODE_NATIVE
        XDP_MODE_SKB
        XDP_MODE_HW
    long libxdp_get_error(const void *ptr)
    xdp_program *xdp_program__open_file(const char *filename, const char *section_name,
                                        void *opts)
    int xdp_program__attach(xdp_program *xdp_prog, int ifindex, xdp_attach_mode mode,
                            unsigned int flags)
    int xdp_program__detach(xdp_program *xdp_prog, int ifindex, xdp_attach_mode mode,
                            unsigned int flags)
    void xdp_program__close(xdp_program *xdp_prog)

    # bpf/libbpf.h, bpf/bpf.h
    struct bpf_object:
        pass
    bpf_object *xdp_program__bpf_obj(xdp_program *xdp_prog)
    int bpf_object__find_map_fd_by_name(const bpf_object *obj, const char *name)
    int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)
    int bpf_map_delete_elem(int fd, const void *key)
    int bpf_map_lookup_elem(int fd, const void *key, void *value)
    int libbpf_num_possible_cpus()

    # ring barriers used by the AF_PACKET rings (fl_xdp.h)
    uint32_t fl_load_acquire_u32(const uint32_t *p)
    void fl_store_release_u32(uint32_t *p, uint32_t v)
