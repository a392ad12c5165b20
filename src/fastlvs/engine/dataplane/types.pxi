# The fast path's plain C data: frame descriptors, parsed packets, connection entries, dests,
# services, interned virtual addresses and the engine state that owns them all. No Python
# object lives in here, so every function over these structs can run without the GIL.

# The contract's constants (FWD_*, SCHED_*, VERDICT_*, the C_* counter indices in
# COUNTER_NAMES order, limits), generated from contract.py by setup.py.
include "contract.pxi"

cdef enum:
    FRAME_CSUM_UNKNOWN = 0  # no metadata (AF_XDP copy mode, process()): detect a partial one
    FRAME_CSUM_PARTIAL = 1  # the sender offloaded it (TP_STATUS_CSUMNOTREADY): complete it
    FRAME_CSUM_FULL = 2     # complete (or at least not ours to fix): leave it

    # conn flags (IPVS's IP_VS_CONN_F_* meanings, our own bits: the entry has only 8)
    CF_TEMPLATE = 1
    CF_INACTIVE = 2
    CF_NOOUTPUT = 4
    CF_INVALID = 8          # template invalidated by ip_vs_check_template: no longer matched
    CF_OFFLOADED = 0x40     # in the XDP offload map (offload.pxi): its packets may bypass us
    CF_REPLIED = 0x80       # a NAT reply was seen (the offload waits for both directions)

    # dest flags
    DF_IN_USE = 1           # the id names a dest (possibly deleted but still referenced)
    DF_AVAILABLE = 2        # IP_VS_DEST_F_AVAILABLE: linked to its service
    DF_OVERLOAD = 4         # IP_VS_DEST_F_OVERLOAD

    C_PASS = C_PASSED       # the counter of frames left to the host
    # service flags
    SVC_F_ONEPACKET = 1     # -o: every UDP datagram scheduled alone, no entry kept

    # flood defence modes (drop_entry, drop_packet, secure_tcp), as the kernel's sysctls
    DEF_OFF = 0
    DEF_AUTO = 1            # on while free entries < amemthresh (reads 2 while on)
    DEF_AUTO_ON = 2
    DEF_ALWAYS = 3

    SVC_SLOTS = MAX_SERVICES + 1   # svcs[] is indexed by service id (0 = none)
    VIP_INDEX_SIZE = 131072   # open-addressed index over the interned VIPs, power of 2
    NEIGH_WAYS = 8            # client-MAC table: entries per set (the whole probe window)
    NEIGH_MIN_SLOTS = 64
    NEIGH_MAX_SLOTS = 1 << 24
    NEIGH_TICK_SHIFT = 30     # entry ages in ticks of 2**30 ns (about 1.07 s)
    NEIGH_LEARNED_TICKS = 838 # a learned entry unused this long (about 900 s) has aged out
    NEIGH_MAX_SUBNETS = 16    # on-link client subnets of the learning interface
    NF_USED = 1
    NF_KERNEL = 2             # from the kernel's neighbour table (set_neighbor): never aged
    MAX_BATCH = BATCH_MAX
    EMBRYO_RESERVE = 512      # free entries drop_entry keeps (2 per frame of a full batch)
    CHAIN_EVICT_MAX = 4       # embryos one insert may drop from its own chain (conn_link)
    PREFETCH_AHEAD = 6        # frames handled between an entry's prefetch and its lookup

    # TCP states, numbered as ip_vs.h numbers them
    TCP_S_NONE = 0
    TCP_S_ESTABLISHED = 1
    TCP_S_SYN_SENT = 2
    TCP_S_SYN_RECV = 3
    TCP_S_FIN_WAIT = 4
    TCP_S_TIME_WAIT = 5
    TCP_S_CLOSE = 6
    TCP_S_CLOSE_WAIT = 7
    TCP_S_LAST_ACK = 8
    TCP_S_LISTEN = 9
    TCP_S_SYNACK = 10
    TCP_S_LAST = 11

    TH_FIN = 0x01
    TH_SYN = 0x02
    TH_RST = 0x04
    TH_ACK = 0x10


cdef struct fl_frame:
    # One frame handed to the engine; ring code points `data` into UMEM / the packet ring.
    uint8_t *data
    uint32_t len
    uint32_t headroom       # bytes writable before data (TUN and ICMP replies grow forwards)
    uint64_t ts_ns          # receive time; drives every timeout
    uint32_t out_ifindex
    uint32_t out_len
    int32_t out_adj         # output starts at data + out_adj (-20 for TUN, -28 for ICMP)
    uint8_t verdict
    uint8_t reason          # the C_* counter that decided a DROP/PASS (diagnostics)
    uint8_t csum            # FRAME_CSUM_*: what the receiving side knows of the L4 checksum
    uint16_t xrec           # 1 + record of a reassembled datagram (data is then engine
                            # memory and a TX leaves as e.frag.xseg[...]); 0 = ring frame


cdef struct fl_pkt:
    # What parsing learned about one frame; addresses are host-order 32-bit words, IPv4 in [3].
    uint32_t saddr[4]
    uint32_t daddr[4]
    uint32_t bucket         # conn hash bucket of the in-direction key
    uint16_t sport
    uint16_t dport
    uint16_t l2len          # 14, or 18 with an 802.1Q tag
    uint16_t ihl            # IP header length in bytes
    uint16_t tot_len        # IP total length
    uint16_t vip            # interned VIP index, 0 = none
    uint8_t proto
    uint8_t tcpflags
    uint8_t ok              # 1 when parsed and to be handled
    uint8_t v6              # an IPv6 packet: addresses use all four words (parse6.pxi)


cdef struct fl_conn:
    # One connection or persistence template: 56 bytes, allocated once at start.
    uint32_t caddr[4]
    uint64_t expires        # ns, engine clock (frame timestamps)
    uint32_t dest           # dest id
    uint32_t ctl            # conn: 1 + template index (0 = none); template: n_control
    uint32_t next           # 1 + index of the next entry in the bucket chain / free list
    uint32_t timeout        # seconds, as IPVS's cp->timeout
    uint16_t cport
    uint16_t vip            # interned VIP (proto, vaddr, vport); 0 = free entry
    uint16_t vport          # the client's destination port: a port-0 VIP's conns differ here
    uint8_t state
    uint8_t flags
    uint8_t proto
    uint8_t fwd             # transmit function bound at creation (FWD_*)


cdef struct fl_dest:
    uint32_t raddr[4]
    uint64_t conns
    uint64_t inpkts
    uint64_t outpkts
    uint64_t inbytes
    uint64_t outbytes
    int64_t weight
    uint32_t u_threshold
    uint32_t l_threshold
    int32_t activeconns
    int32_t inactconns
    int32_t persistconns
    uint32_t refcnt         # entries (conns + templates) bound to this dest
    uint32_t ifindex
    uint16_t rport
    uint16_t svc
    uint8_t fwd
    uint8_t flags
    uint8_t mac[6]
    uint8_t smac[6]         # our MAC on the interface towards this dest (the frame's source)
    uint8_t tun_type        # TUN's encapsulation: TUN_IPIP, TUN_GUE, TUN_GRE (tunnel.pxi)
    uint8_t tun_flags       # TUN_F_CSUM, TUN_F_REMCSUM; none = nocsum
    uint16_t tun_port       # GUE's UDP destination port


cdef struct fl_svc:
    uint32_t vaddr[4]
    uint64_t conns
    uint64_t inpkts
    uint64_t outpkts
    uint64_t inbytes
    uint64_t outbytes
    uint32_t *table         # sh/dh/mh bucket table of dest ids (owned), NULL = callback
    uint32_t table_len
    uint32_t persist_timeout
    uint32_t netmask        # host order, IPv4
    uint16_t vport
    uint16_t vip
    uint8_t in_use
    uint8_t proto
    uint8_t sched
    uint8_t sched_flags
    uint8_t flags           # SVC_F_*


cdef struct fl_vip:
    uint32_t addr[4]
    uint16_t port
    uint16_t svc            # service id currently on this VIP, 0 = none (conns live on)
    uint8_t proto
    uint8_t used
    uint8_t off             # the address is not on this host now: its frames are the kernel's


cdef struct fl_neigh:
    # One client's next hop for NAT replies: 20 bytes, NEIGH_WAYS to a set.
    uint32_t ip
    uint32_t ifindex
    uint32_t seen           # tick of the last use (reply sent, conn opened, set by Python)
    uint8_t mac[6]
    uint8_t flags           # NF_*
    uint8_t _pad


cdef struct fl_neigh6:
    # One IPv6 client's next hop for NAT66 replies: 32 bytes, NEIGH_WAYS to a set.
    uint32_t ip[4]
    uint32_t ifindex
    uint32_t seen
    uint8_t mac[6]
    uint8_t flags           # NF_*
    uint8_t _pad


cdef struct fl_parked:
    uint32_t dest           # the scheduler's answer (0 = none)
    uint16_t frame          # index of the frame in the batch
    uint16_t svc
    int16_t leader          # -1, or the parked entry whose flow this frame shares
    uint16_t _pad


cdef enum:
    FRAG_BLOCK = 1024         # payload is held in blocks of this size ...
    FRAG_BLOCK_BITS = 10
    FRAG_MAX_BLOCKS = 64      # ... up to 64 KiB per datagram
    FRAG_MAX_PIECES = 64      # distinct fragments of one datagram
    FRAG_SRC_BUCKETS = 64     # per-source shares, by keyed hash of the source address
    FRAG_HDR_MAX = 40         # L2 (14/18) + IPv4 header (20: fragments with options refused)
    FRAG6_HDR_MAX = 64        # L2 (14/18) + IPv6 fixed header (40: frag6.pxi)


cdef struct fl_fragq:
    # One datagram being reassembled: key, age, the pieces received (sorted, disjoint) and
    # the blocks holding their bytes; the first fragment's L2 + IP header once it came.
    uint64_t expires
    uint32_t saddr
    uint32_t daddr
    uint32_t next           # 1 + index: hash chain, or free list
    uint32_t older          # 1 + index: arrival order (all share one timeout, so the
    uint32_t newer          #   oldest expires first)
    uint32_t received       # payload bytes held
    uint32_t total          # payload length, known once the last fragment came
    uint16_t ipid
    uint16_t frag_max       # largest fragment (IP total length): the kernel cuts to it
    uint8_t proto
    uint8_t used
    uint8_t flags           # FQ_FIRST | FQ_LAST
    uint8_t npieces
    uint8_t src             # source share bucket
    uint8_t l2len
    uint8_t nblocks
    uint8_t _pad
    uint8_t hdr[FRAG_HDR_MAX]
    uint16_t poff[FRAG_MAX_PIECES]
    uint16_t pend[FRAG_MAX_PIECES]
    uint16_t blocks[FRAG_MAX_BLOCKS]   # 1 + block index, 0 = none
    # an IPv6 queue (frag6.pxi; proto FRAG6_PROTO, saddr/daddr/ipid keyed folds for the
    # hash): its real key, and the first fragment's L2 + fixed header once it came
    uint32_t id6
    uint32_t addr6[8]       # source, destination
    uint8_t hdr6[FRAG6_HDR_MAX]


cdef struct fl_xseg:
    uint8_t *data
    uint32_t len


cdef struct fl_xrec:
    uint32_t seg0           # first of nseg output frames in xseg
    uint32_t nseg
    uint16_t frag_max
    uint8_t l2len
    uint8_t _pad
    uint16_t *ends6         # v6 (frag6.pxi): where the datagram's pieces ended, in the arena
    uint32_t nends6


cdef struct fl_frag:
    fl_fragq *q
    uint32_t *buckets       # 1 + index of the chain head
    uint8_t *blocks
    uint16_t *free_blocks   # stack of free block indices
    uint32_t *vset          # VIP addresses (open addressing, 0 = empty): fragments to them
    uint32_t *rset          # NAT real servers' addresses: their reply fragments
    uint8_t *xbuf           # per-batch output arena: rebuilt datagrams and their fragments
    fl_xseg *xseg
    uint32_t nq
    uint32_t bmask
    uint32_t free_q
    uint32_t oldest
    uint32_t newest
    uint32_t nqueued
    uint32_t nblocks
    uint32_t nfree
    uint32_t vmask
    uint32_t rmask
    uint32_t src_block_limit
    uint32_t src_queue_limit
    uint32_t xsize
    uint32_t xused
    uint32_t xseg_max
    uint32_t nxseg
    uint32_t nxrec
    uint64_t timeout_ns
    uint32_t src_blocks[FRAG_SRC_BUCKETS]
    uint32_t src_queues[FRAG_SRC_BUCKETS]
    fl_xrec xrec[MAX_BATCH]
    # IPv6 (frag6.pxi)
    uint32_t *rset6         # folds of NAT66 real servers' addresses: their reply fragments
    uint32_t rmask6
    uint32_t oldest6        # v6 queues age on a list of their own: ip6frag_time differs
    uint32_t newest6
    uint32_t id6            # identifications of the fragments we cut (keyed, see frag6_ident)
    uint64_t timeout6_ns


cdef struct fl_markrule:
    # One firewall-mark match rule (dataplane/fwmark.pxi): IPv4 (or IPv6) destination prefix, port
    # range, protocol (0 = any); host order.
    uint32_t addr
    uint32_t mask
    uint32_t mark
    uint16_t port_lo
    uint16_t port_hi
    uint8_t proto
    uint8_t _pad[3]
    uint32_t addr6[4]       # an IPv6 rule (v6 = 1): its prefix and mask, host-order words
    uint32_t mask6[4]
    uint8_t v6              # the family of frames it matches: 0 IPv4 (addr/mask), 1 IPv6


cdef enum:
    # sync counters (dataplane/sync.pxi's SYNC_COUNTER_NAMES, same order)
    SC_SENT = 0
    SC_SENT_CONNS = 1
    SC_SENT_BYTES = 2
    SC_QUEUE_OVERFLOW = 3
    SC_QUEUE_OVERFLOW_CONNS = 4
    SC_RECEIVED = 5
    SC_RECEIVED_BYTES = 6
    SC_RECEIVED_CONNS = 7
    SC_INSTALLED = 8
    SC_UPDATED = 9
    SC_NO_SERVICE = 10
    SC_NO_DEST = 11
    SC_TABLE_FULL = 12
    SC_REFUSED_PE = 13      # a persistence engine's (sip): fastlvs has none
    SC_REFUSED_PROTOCOL = 14  # AH, ESP, SCTP over IPv6: IPVS syncs them, fastlvs does not forward them
    SC_REPLACED = 15
    SC_DROPPED = 16
    SD_SHORT = 17           # protocol.DROP_REASONS order, internal_error left out
    SD_SIZE = 18
    SD_SYNCID = 19
    SD_VERSION = 20
    SD_TRUNCATED = 21
    SD_ENTRY_OVERRUN = 22
    SD_ENTRY_VERSION = 23
    SD_ENTRY_TYPE = 24
    SD_ENTRY_SIZE = 25
    SD_OPT_TRUNCATED = 26
    SD_OPT_LENGTH = 27
    SD_OPT_SEQ = 28
    SD_OPT_PE_DATA = 29
    SD_OPT_PE_NAME = 30
    SK_OPTION = 31          # protocol.SKIP_REASONS order
    SK_PROTOCOL = 32
    SK_STATE = 33
    SK_PE = 34
    SYNC_C_LAST = 35


cdef struct fl_syncmeta:
    # What the sync master keeps of an entry (ip_vs_conn's in_pkts, old_state, sync_endtime),
    # in a table beside the conn table that exists only once sync has been started: the
    # entries stay 56 bytes and a director without sync pays nothing.
    uint64_t endtime        # ms of frame time, low 2 bits the retries (sync_refresh_period)
    uint32_t in_pkts
    uint8_t old_state
    uint8_t _pad[3]


cdef struct fl_syncbuf:
    # One sync message: the one being filled, queued, or in the pool of free ones.
    fl_syncbuf *next
    uint8_t *data
    uint64_t first_ns       # frame time of its first entry (the flush is 2 s after)
    uint32_t len
    uint32_t cap            # this message's end: maxlen, or its first entry's if larger
    uint32_t nconns


cdef struct fl_sync:
    fl_syncmeta *meta       # capacity entries, NULL until sync is first started
    fl_syncbuf *cur         # message being filled
    fl_syncbuf *qhead       # queued messages, oldest first
    fl_syncbuf *qtail
    fl_syncbuf *pool        # free messages, all of `bufcap` bytes
    uint32_t qlen
    uint32_t bufcap
    uint32_t maxlen
    uint32_t threshold      # sync_threshold, sync_period, sync_refresh_period (ms),
    uint32_t period         # sync_retries, sync_persist_mode, sync_qlen_max
    uint64_t refresh_ms
    uint32_t retries
    uint32_t persist_mode
    uint32_t qlen_max
    uint8_t master
    uint8_t backup
    uint8_t master_syncid
    uint8_t backup_syncid
    uint64_t counters[SYNC_C_LAST]


cdef struct fl_engine:
    fl_conn *conns
    uint32_t *buckets       # 1 + index of the chain head, 0 = empty
    uint32_t n_port0        # services on port 0 (all ports of their VIP): 0 = no second lookup
    uint32_t capacity
    uint32_t bucket_mask
    uint32_t bucket_bits
    uint32_t free_head      # 1 + index, 0 = none free
    uint32_t conn_count
    uint32_t sweep_pos
    uint32_t used_end       # no entry at or past this index was ever handed out
    uint32_t sweep_budget   # most entries inspected per batch by the incremental expiry
    uint64_t sweep_clock    # frame time the batch sweeps have been paid up to (ns)
    uint64_t seed
    uint64_t now            # latest frame timestamp seen (ns)
    fl_dest *dests
    uint32_t ndests         # allocated dest slots (ids 0..ndests-1)
    fl_svc *svcs
    fl_vip *vips
    uint16_t *vip_index
    uint32_t nvips
    fl_neigh *neigh
    uint32_t neigh_set_mask # sets - 1 (a power of two); a set is NEIGH_WAYS entries
    uint64_t neigh_k0       # random hsiphash key: nobody outside can aim at one set
    uint64_t neigh_k1
    uint32_t subnet_addr[NEIGH_MAX_SUBNETS]
    uint32_t subnet_mask[NEIGH_MAX_SUBNETS]
    uint32_t nsubnets       # 0: every client may be on-link (learn all, gateway fallback)
    uint8_t gw_mac[6]
    uint8_t has_gw
    uint8_t local_mac[6]
    uint32_t learn_ifindex   # NAT: learn clients' MACs from their frames, replies out here
    uint32_t gw_ifindex
    uint32_t local_ip
    uint32_t mtu
    uint16_t ip_id
    uint32_t tcp_timeouts[TCP_S_LAST + 1]
    uint32_t udp_timeout
    uint64_t counters[C_LAST]
    # the IPVS sysctls that change forwarding (control/sysctl.py declares them)
    uint8_t expire_nodest_conn
    uint8_t expire_quiescent_template
    uint8_t conn_reuse_mode
    uint8_t sloppy_tcp
    uint8_t nat_icmp_send   # port unreachable to a NAT dest's packet of no conn
    uint8_t pmtu_disc       # 0: TUN clears DF and cuts what is over the MTU
    uint8_t drop_entry      # 0..3, as the sysctl reads (1 <-> 2 follow the table's room)
    uint8_t drop_packet
    uint8_t secure_tcp
    uint8_t dropentry_on    # the defences in force now (defense_update)
    uint8_t secure_tcp_on
    uint32_t amemthresh     # free entries below which the automatic defences engage
    uint32_t am_droprate
    uint32_t drop_rate      # drop_packet: 1 of every drop_rate new conns, 0 = none
    uint32_t drop_counter
    uint64_t defense_clock  # frame time of the last defense_update (ns)
    uint64_t rnd            # xorshift state for drop_entry's random choices
    uint64_t *embryo        # FIFO of TCP entries opened in SYN_RECV/SYNACK: index << 32 | bucket
                            # (allocated when drop_entry is first set, else NULL)
    uint32_t emb_head       # free-running; slot = counter & bucket_mask (as many as buckets)
    uint32_t emb_tail
    uint32_t nvict          # drop_entry's next victims (ring references), prefetched
    uint64_t evict_horizon  # last-packet time (ns) of the ring's middle embryo: an insert
                            # may drop embryos of its chain no younger than this
    uint64_t vict[MAX_BATCH]
    fl_pkt pkts[MAX_BATCH]
    fl_parked parked[MAX_BATCH]
    int nparked
    fl_frag frag
    fl_markrule *marks      # fwmark.pxi: the match rules in order, first match gives the mark
    uint32_t nmarks
    uint32_t sctp_timeouts[16]   # sctp.pxi: seconds per SCTP state (SCTP_S_*)
    fl_sync sync            # connection sync (dataplane/sync.pxi)
    # IPv6 (parse6.pxi, xmit6.pxi, neigh6.pxi)
    uint32_t local_ip6[4]   # the director's own v6 address: TUN's outer source, NAT66 errors
    fl_neigh6 *neigh6       # client-MAC table of v6 clients, as `neigh`
    uint32_t neigh6_set_mask
    uint8_t gw6_mac[6]      # the v6 default router's MAC (replies to off-link v6 clients)
    uint8_t has_gw6
    uint32_t gw6_ifindex
    uint32_t *vset6         # folds of the v6 VIP addresses (open addressing, 0 = empty):
    uint32_t vmask6         #   frames to them with extension headers are dropped, not passed
    # the XDP offload (offload.pxi): off while off_on is 0
    uint8_t off_on
    int off_fd              # the fl_offload table (mmapped: off_tab)
    uint32_t off_max        # its slots
    uint32_t *off_slot      # per entry: its in and out direction's slot in the table (0 = none)
    uint64_t off_installed
    uint64_t off_removed
    uint64_t off_errors
    uint64_t off_frames     # frames the XDP program forwarded, as read back
    uint32_t off_nq         # conns waiting for the batch's one map update (off_q)
    uint32_t off_q[MAX_BATCH]
    uint8_t *off_tab        # fl_offload, mmapped: [0] the hash seed and mask, then buckets
    uint8_t *off_rwtab      # fl_off_rw, mmapped: the rewrites per dest and direction
    size_t off_tab_len
    size_t off_rw_len
    int off_rw_fd
    int off_cnt_fd          # fl_off_cnt: per-CPU counters per rewrite entry
    uint32_t off_mask       # buckets - 1
    uint64_t off_seed[2]
    uint32_t off_nrw        # rewrite entries (a power of two; index 0 unused)
    void *off_rwk           # fl_off_rwent[off_nrw]: keys, users, counter baselines
    uint32_t *off_rw_head   # hash chains over off_rwk
    uint32_t *off_rw_free   # free rewrite indexes (a stack)
    uint32_t off_rw_nfree
    uint32_t off_rw_hi      # indexes ever used are below this
    uint64_t off_full       # installs refused: probe window full, or no rewrite entry free
