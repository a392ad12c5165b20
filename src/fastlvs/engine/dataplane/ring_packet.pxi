# The AF_PACKET backend, for drivers or kernels without AF_XDP: a TPACKET_V3 RX ring (frames are
# handed to the engine in place, a block goes back to the kernel once all its frames were
# handled) and a TPACKET_V2 TX ring on a second socket with PACKET_QDISC_BYPASS (one copy into
# the ring, one send() per batch). The kernel still sees every frame, so the virtual services
# need an nftables netdev-ingress drop while the port is open: system/ports.py installs it.

cdef enum:
    PKT_RX_BLOCK_SIZE = 1 << 16
    PKT_RX_BLOCK_NR = 256
    PKT_RX_FRAME_SIZE = 2048
    PKT_RX_RESERVE = 64         # headroom in front of every received frame (TUN adds 20)
    PKT_RX_RETIRE_MS = 1        # a partly filled block is handed over after this long
    PKT_TX_FRAME_SIZE = 2048    # the smallest TX slot; larger MTUs get larger slots
    PKT_TX_RING_BYTES = 8 << 20 # TX ring memory kept about this size when slots grow
    PKT_TUN_GROWTH = 20         # TUN's outer header: a frame may leave 20 bytes longer
    PKT_TX_FRAME_NR = 4096
    PKT_TX_DATA_OFF = 32        # TPACKET_ALIGN(sizeof(tpacket2_hdr)): where TX data starts
    PKT_HDR3_SIZE = 48          # sizeof(struct tpacket3_hdr)


cdef inline pk.tpacket_block_desc *pkt_block(fl_port *p, uint32_t i) noexcept nogil:
    return <pk.tpacket_block_desc *>(p.rx_ring + <size_t>i * p.rx_block_size)


cdef inline int pkt_rx(fl_port *p, fl_frame *frames, uint64_t *cookies, int maxn,
                       uint64_t now) noexcept nogil:
    # Frames of the current block only: the block is returned whole in pkt_rx_done.
    cdef pk.tpacket_block_desc *bd
    cdef pk.tpacket3_hdr *h
    cdef fl_frame *f
    cdef uint8_t *d
    cdef int n = 0
    cdef uint32_t tci
    if not p.rx_block_open:
        bd = pkt_block(p, p.rx_block)
        # acquire: the block's packets are visible once we see TP_STATUS_USER
        if (fl_load_acquire_u32(&bd.hdr.bh1.block_status) & pk.TP_STATUS_USER) == 0:
            return 0
        p.rx_block_open = 1
        p.rx_left = bd.hdr.bh1.num_pkts
        p.rx_next = <uint8_t *>bd + bd.hdr.bh1.offset_to_first_pkt
    while n < maxn and p.rx_left:
        h = <pk.tpacket3_hdr *>p.rx_next
        f = &frames[n]
        d = p.rx_next + h.tp_mac
        f.data = d
        f.len = h.tp_snaplen if h.tp_snaplen == h.tp_len else 0   # truncated: malformed
        f.headroom = h.tp_mac - PKT_HDR3_SIZE    # sockaddr_ll + reserve are ours to reuse
        f.ts_ns = now
        # a sender on this host with checksum offload (a veth peer, a container) hands over
        # the frame with only the pseudo-header sum in its L4 checksum field
        f.csum = (FRAME_CSUM_PARTIAL if h.tp_status & pk.TP_STATUS_CSUMNOTREADY
                  else FRAME_CSUM_FULL)
        if (h.tp_status & pk.TP_STATUS_VLAN_VALID) and f.headroom >= 4 and f.len:
            # the kernel took the 802.1Q tag off into the header: put it back in the frame
            tci = h.hv1.tp_vlan_tci
            memmove(d - 4, d, 12)
            d -= 4
            d[12] = 0x81
            d[13] = 0x00
            if h.tp_status & pk.TP_STATUS_VLAN_TPID_VALID:
                d[12] = h.hv1.tp_vlan_tpid >> 8
                d[13] = h.hv1.tp_vlan_tpid & 0xFF
            d[14] = (tci >> 8) & 0xFF
            d[15] = tci & 0xFF
            f.data = d
            f.len += 4
            f.headroom -= 4
        cookies[n] = 0
        p.rx_left -= 1
        p.rx_next += h.tp_next_offset
        n += 1
    p.rx_frames += n
    return n


cdef inline void pkt_rx_done(fl_port *p) noexcept nogil:
    # Called after the batch was handled (frames transmitted or dropped): a drained block
    # goes back to the kernel.
    cdef pk.tpacket_block_desc *bd
    if p.rx_block_open and p.rx_left == 0:
        bd = pkt_block(p, p.rx_block)
        fl_store_release_u32(&bd.hdr.bh1.block_status, pk.TP_STATUS_KERNEL)
        p.rx_block_open = 0
        p.rx_block += 1
        if p.rx_block == p.rx_block_nr:
            p.rx_block = 0


cdef inline void pkt_tx_flush(fl_port *p) noexcept nogil:
    # one send() hands every SEND_REQUEST frame to the driver (qdisc bypassed)
    if p.tx_queued:
        pk.sendto(p.tx_fd, NULL, 0, pk.MSG_DONTWAIT, NULL, 0)
        p.wakeups += 1
        p.tx_frames += p.tx_queued
        p.tx_queued = 0


cdef inline void pkt_tx_copy(fl_port *p, const uint8_t *data, uint32_t length) noexcept nogil:
    cdef pk.tpacket2_hdr *h = <pk.tpacket2_hdr *>(p.tx_ring + <size_t>p.tx_head * p.tx_frame_size)
    cdef uint32_t st = fl_load_acquire_u32(&h.tp_status)
    if st & (pk.TP_STATUS_SEND_REQUEST | pk.TP_STATUS_SENDING):
        pkt_tx_flush(p)
        st = fl_load_acquire_u32(&h.tp_status)
        if st & (pk.TP_STATUS_SEND_REQUEST | pk.TP_STATUS_SENDING):
            p.tx_ring_full += 1
            return
    if length > p.tx_frame_size - PKT_TX_DATA_OFF:
        p.tx_oversize += 1
        return
    memcpy(<uint8_t *>h + PKT_TX_DATA_OFF, data, length)
    h.tp_len = length
    # release: the frame's bytes before the status that gives it to the kernel
    fl_store_release_u32(&h.tp_status, pk.TP_STATUS_SEND_REQUEST)
    p.tx_head += 1
    if p.tx_head == p.tx_frame_nr:
        p.tx_head = 0
    p.tx_queued += 1
    if p.tx_queued >= RING_BATCH:
        pkt_tx_flush(p)


cdef int _sockopt_int(int fd, int level, int opt, int val, what) except -1:
    if pk.setsockopt(fd, level, opt, &val, sizeof(int)) != 0:
        raise OSError(pk.errno, f"setsockopt {what}: {_os.strerror(pk.errno)}")
    return 0


cdef class PacketPort(Port):
    """PacketPort(ifname, block_size=65536, block_nr=256, tx_frames=4096): AF_PACKET on one
    interface, TPACKET_V3 RX ring (all frames of the interface, outgoing ones ignored) and a
    TPACKET_V2 TX ring with PACKET_QDISC_BYPASS. Both are sized from the interface's MTU: an
    RX block holds the largest frame, a TX slot the largest frame plus TUN's outer header
    (2048-byte slots up to MTU 1958; above that fewer, larger slots). The kernel sees the same
    frames: keeping it from answering service traffic is the caller's (system/ports.py: an
    nftables drop). close() unmaps the rings and closes the sockets."""
    cdef readonly int block_size, block_nr

    def __init__(self, ifname, int block_size=PKT_RX_BLOCK_SIZE, int block_nr=PKT_RX_BLOCK_NR,
                 int tx_frames=PKT_TX_FRAME_NR):
        cdef fl_port *p = self.p
        cdef pk.tpacket_req3 req3
        cdef pk.tpacket_req req
        cdef pk.sockaddr_ll sll
        cdef void *m
        if block_size < 4096 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two >= 4096, got {block_size}")
        if tx_frames < 64 or tx_frames & (tx_frames - 1):
            raise ValueError(f"tx_frames must be a power of two >= 64, got {tx_frames}")
        self.ifname = ifname
        self.ifindex = _ifindex(ifname)
        mtu = _if_mtu(ifname)
        tx_frame_size = PKT_TX_FRAME_SIZE
        while tx_frame_size < PKT_TX_DATA_OFF + mtu + L2_MAX + PKT_TUN_GROWTH:
            tx_frame_size *= 2
        if tx_frame_size > PKT_TX_FRAME_SIZE:
            tx_frames = max(64, min(tx_frames, PKT_TX_RING_BYTES // tx_frame_size))
        while block_size < mtu + L2_MAX + 512:         # block and frame headers, reserve
            block_size *= 2
        self.backend = "packet"
        self.mode = "tpacket_v3"
        self.nsfd = _netns_fd()
        self.block_size = block_size
        self.block_nr = block_nr
        try:
            # RX: protocol 0 until bind, so nothing is queued from other interfaces meanwhile
            p.rx_fd = pk.socket(pk.AF_PACKET, pk.SOCK_RAW, 0)
            if p.rx_fd < 0:
                raise OSError(pk.errno, f"socket(AF_PACKET): {_os.strerror(pk.errno)}")
            _sockopt_int(p.rx_fd, pk.SOL_PACKET, pk.PACKET_VERSION, pk.TPACKET_V3,
                         "PACKET_VERSION")
            _sockopt_int(p.rx_fd, pk.SOL_PACKET, pk.PACKET_RESERVE, PKT_RX_RESERVE,
                         "PACKET_RESERVE")
            _sockopt_int(p.rx_fd, pk.SOL_PACKET, pk.PACKET_IGNORE_OUTGOING, 1,
                         "PACKET_IGNORE_OUTGOING")
            memset(&req3, 0, sizeof(req3))
            req3.tp_block_size = block_size
            req3.tp_block_nr = block_nr
            req3.tp_frame_size = PKT_RX_FRAME_SIZE
            req3.tp_frame_nr = (block_size // PKT_RX_FRAME_SIZE) * block_nr
            req3.tp_retire_blk_tov = PKT_RX_RETIRE_MS
            if pk.setsockopt(p.rx_fd, pk.SOL_PACKET, pk.PACKET_RX_RING, &req3, sizeof(req3)):
                raise OSError(pk.errno, f"PACKET_RX_RING: {_os.strerror(pk.errno)}")
            p.rx_ring_len = <size_t>block_size * block_nr
            m = pk.mmap(NULL, p.rx_ring_len, pk.PROT_READ | pk.PROT_WRITE,
                        pk.MAP_SHARED | pk.MAP_POPULATE, p.rx_fd, 0)
            if m == pk.MAP_FAILED:
                raise OSError(pk.errno, f"mmap RX ring: {_os.strerror(pk.errno)}")
            p.rx_ring = <uint8_t *>m
            p.rx_block_size = block_size
            p.rx_block_nr = block_nr
            memset(&sll, 0, sizeof(sll))
            sll.sll_family = pk.AF_PACKET
            sll.sll_protocol = pk.htons(pk.ETH_P_ALL)
            sll.sll_ifindex = self.ifindex
            if pk.bind(p.rx_fd, <pk.sockaddr *>&sll, sizeof(sll)):
                raise OSError(pk.errno, f"bind RX to {ifname}: {_os.strerror(pk.errno)}")
            # TX: a second socket that receives nothing (protocol 0)
            p.tx_fd = pk.socket(pk.AF_PACKET, pk.SOCK_RAW, 0)
            if p.tx_fd < 0:
                raise OSError(pk.errno, f"socket(AF_PACKET): {_os.strerror(pk.errno)}")
            _sockopt_int(p.tx_fd, pk.SOL_PACKET, pk.PACKET_VERSION, pk.TPACKET_V2,
                         "PACKET_VERSION")
            _sockopt_int(p.tx_fd, pk.SOL_PACKET, pk.PACKET_QDISC_BYPASS, 1,
                         "PACKET_QDISC_BYPASS")
            memset(&req, 0, sizeof(req))
            req.tp_block_size = tx_frame_size * 32
            req.tp_frame_size = tx_frame_size
            req.tp_frame_nr = tx_frames
            req.tp_block_nr = tx_frames // 32
            if pk.setsockopt(p.tx_fd, pk.SOL_PACKET, pk.PACKET_TX_RING, &req, sizeof(req)):
                raise OSError(pk.errno, f"PACKET_TX_RING: {_os.strerror(pk.errno)}")
            p.tx_ring_len = <size_t>req.tp_block_size * req.tp_block_nr
            m = pk.mmap(NULL, p.tx_ring_len, pk.PROT_READ | pk.PROT_WRITE,
                        pk.MAP_SHARED | pk.MAP_POPULATE, p.tx_fd, 0)
            if m == pk.MAP_FAILED:
                raise OSError(pk.errno, f"mmap TX ring: {_os.strerror(pk.errno)}")
            p.tx_ring = <uint8_t *>m
            p.tx_frame_size = tx_frame_size
            p.tx_frame_nr = tx_frames
            sll.sll_protocol = 0
            if pk.bind(p.tx_fd, <pk.sockaddr *>&sll, sizeof(sll)):
                raise OSError(pk.errno, f"bind TX to {ifname}: {_os.strerror(pk.errno)}")
            p.kind = PORT_PACKET
            p.ifindex = self.ifindex
            _OPEN_PORTS.add(self)
        except BaseException:
            self.close()
            raise

    def close(self):
        """Unmap the rings, close both sockets. Idempotent."""
        cdef fl_port *p = self.p
        if p.rx_ring != NULL:
            pk.munmap(p.rx_ring, p.rx_ring_len)
            p.rx_ring = NULL
        if p.tx_ring != NULL:
            pk.munmap(p.tx_ring, p.tx_ring_len)
            p.tx_ring = NULL
        if p.rx_fd >= 0:
            pk.close(p.rx_fd)
            p.rx_fd = -1
        if p.tx_fd >= 0:
            pk.close(p.tx_fd)
            p.tx_fd = -1
        p.kind = 0
        p.rx_block_open = 0
        if self.nsfd >= 0:
            _os.close(self.nsfd)
            self.nsfd = -1
