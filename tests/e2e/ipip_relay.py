"""A TUN-mode real server's second decapsulator, for datagrams that arrive as IPIP fragments
(run inside the real server's namespace: `python3 ipip_relay.py`). The XDP decapsulator passes
outer fragments up untouched; the kernel reassembles them and, having no ipip module, hands the
whole IPIP packet only to raw sockets. This one takes it, strips the outer header and sends the
inner packet (client -> VIP) back in through the stack, where the VIP on lo accepts it.
Prints "relaying" when ready; runs until killed.
"""
import socket

IPPROTO_IPIP = 4


def main():
    rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_IPIP)
    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    print("relaying", flush=True)
    while True:
        pkt = rx.recv(65535)
        ihl = (pkt[0] & 0x0F) * 4
        # only whole outer packets: the XDP program already took the unfragmented ones
        if len(pkt) < ihl + 20 or int.from_bytes(pkt[6:8], "big") & 0x3FFF:
            continue
        inner = pkt[ihl:]
        if inner[0] >> 4 != 4:
            continue
        tx.sendto(inner, (socket.inet_ntoa(inner[16:20]), 0))


if __name__ == "__main__":
    main()
