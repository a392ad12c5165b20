# Declarations for the AF_PACKET backend and the ring loop: linux/if_packet.h (TPACKET_V2/V3
# rings), sockets, mmap, poll, if_nametoindex, setns, clock_gettime. Names verbatim from the
# C headers.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        unsigned short sa_family
    int AF_PACKET
    int SOCK_RAW
    int SOL_SOCKET
    int SOL_PACKET
    int MSG_DONTWAIT
    int SO_RCVBUF
    int SO_SNDBUF
    int socket(int domain, int type, int protocol)
    int bind(int fd, const sockaddr *addr, socklen_t len)
    int setsockopt(int fd, int level, int optname, const void *optval, socklen_t optlen)
    int getsockopt(int fd, int level, int optname, void *optval, socklen_t *optlen)
    ssize_t sendto(int fd, const void *buf, size_t n, int flags, const sockaddr *addr,
                   socklen_t addr_len)
    ssize_t recvfrom(int fd, void *buf, size_t n, int flags, sockaddr *addr,
                     socklen_t *addr_len)

cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    ctypedef long ssize_t

cdef extern from "<errno.h>" nogil:
    int errno
    int EAGAIN
    int EBUSY
    int ENOBUFS
    int EINTR
    int ENETDOWN
    int EPERM
    int EOPNOTSUPP

cdef extern from "<string.h>" nogil:
    char *strerror(int errnum)

cdef extern from "<sys/mman.h>" nogil:
    int PROT_READ
    int PROT_WRITE
    int MAP_SHARED
    int MAP_PRIVATE
    int MAP_ANONYMOUS
    int MAP_POPULATE
    int MAP_LOCKED
    void *MAP_FAILED
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    short POLLIN
    short POLLOUT
    short POLLERR
    ctypedef unsigned long nfds_t
    int poll(pollfd *fds, nfds_t nfds, int timeout)

cdef extern from "<net/if.h>" nogil:
    unsigned int if_nametoindex(const char *ifname)

cdef extern from "<sched.h>" nogil:
    int CLONE_NEWNET
    int setns(int fd, int nstype)

cdef extern from "<time.h>" nogil:
    ctypedef int clockid_t
    struct timespec:
        long tv_sec
        long tv_nsec
    int CLOCK_MONOTONIC
    int clock_gettime(clockid_t clk_id, timespec *tp)

cdef extern from "<arpa/inet.h>" nogil:
    uint16_t htons(uint16_t x)
    uint16_t ntohs(uint16_t x)

cdef extern from "<linux/if_ether.h>" nogil:
    int ETH_P_ALL
    int ETH_P_8021Q

cdef extern from "<linux/if_packet.h>" nogil:
    struct sockaddr_ll:
        unsigned short sll_family
        unsigned short sll_protocol
        int sll_ifindex
        unsigned short sll_hatype
        unsigned char sll_pkttype
        unsigned char sll_halen
        unsigned char sll_addr[8]

    int PACKET_RX_RING
    int PACKET_TX_RING
    int PACKET_VERSION
    int PACKET_RESERVE
    int PACKET_QDISC_BYPASS
    int PACKET_IGNORE_OUTGOING
    int PACKET_STATISTICS
    int PACKET_LOSS
    int PACKET_OUTGOING

    int TPACKET_V2
    int TPACKET_V3
    int TPACKET_ALIGNMENT
    int TP_STATUS_KERNEL
    int TP_STATUS_USER
    int TP_STATUS_SEND_REQUEST
    int TP_STATUS_SENDING
    int TP_STATUS_WRONG_FORMAT
    int TP_STATUS_AVAILABLE
    int TP_STATUS_VLAN_VALID
    int TP_STATUS_VLAN_TPID_VALID
    int TP_STATUS_CSUMNOTREADY
    int TP_STATUS_CSUM_VALID

    struct tpacket_req:
        unsigned int tp_block_size
        unsigned int tp_block_nr
        unsigned int tp_frame_size
        unsigned int tp_frame_nr

    struct tpacket_req3:
        unsigned int tp_block_size
        unsigned int tp_block_nr
        unsigned int tp_frame_size
        unsigned int tp_frame_nr
        unsigned int tp_retire_blk_tov
        unsigned int tp_sizeof_priv
        unsigned int tp_feature_req_word

    struct tpacket_stats_v3:
        unsigned int tp_packets
        unsigned int tp_drops
        unsigned int tp_freeze_q_cnt

    struct tpacket2_hdr:
        uint32_t tp_status
        uint32_t tp_len
        uint32_t tp_snaplen
        uint16_t tp_mac
        uint16_t tp_net
        uint32_t tp_sec
        uint32_t tp_nsec
        uint16_t tp_vlan_tci
        uint16_t tp_vlan_tpid

    struct tpacket_hdr_variant1:
        uint32_t tp_rxhash
        uint32_t tp_vlan_tci
        uint16_t tp_vlan_tpid

    struct tpacket3_hdr:
        uint32_t tp_next_offset
        uint32_t tp_sec
        uint32_t tp_nsec
        uint32_t tp_snaplen
        uint32_t tp_len
        uint32_t tp_status
        uint16_t tp_mac
        uint16_t tp_net
        tpacket_hdr_variant1 hv1

    struct tpacket_hdr_v1:
        uint32_t block_status
        uint32_t num_pkts
        uint32_t offset_to_first_pkt
        uint32_t blk_len

    union tpacket_bd_header_u:
        tpacket_hdr_v1 bh1

    struct tpacket_block_desc:
        uint32_t version
        uint32_t offset_to_priv
        tpacket_bd_header_u hdr
