"""The client-MAC table that NAT replies are sent by: bounded work per packet whatever
clients come (the table is set-associative, keyed, sized from the capacity, and evicts),
off-link clients served by the gateway's MAC without an entry, no redirection of a known
client's replies by a spoofed SYN, and a gateway MAC change followed at once."""
import ipaddress
import subprocess
import sys
import textwrap

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

import fastlvs.engine._core as core
from tests.core import packets as P
from tests.core.helpers import S, engine

ATTACKER_MAC = "02:00:00:00:00:66"


def syn_from(ip, mac, sport=40000):
    return bytes(Ether(src=mac, dst=P.LOCAL_MAC) / IP(src=ip, dst=P.VIP)
                 / TCP(sport=sport, dport=P.VPORT, flags="S", seq=1000))


def reply_to(ip, cport=40000):
    return P.reply_tcp(client=ip, cport=cport, rport=8080)


def nat_engine(capacity=4096, learn=7):
    e = engine("nat", rport=8080, capacity=capacity)
    e.set_learn_ifindex(learn)
    return e


# The flood runs in a child process: on a table that probes without bound the reply spins
# in C with the GIL released, and only a timeout can end it.
FLOOD = textwrap.dedent("""
    import ipaddress
    from scapy.layers.l2 import Ether
    from tests.core import packets as P
    from tests.core.helpers import S, engine

    def with_ip(template, off, ip, mac_off=None, mac=None):
        # the template with one address (and MAC) replaced and its IP checksum redone
        b = bytearray(template)
        b[off:off + 4] = ip.packed
        if mac_off is not None:
            b[mac_off:mac_off + 6] = mac
        b[24:26] = b"\\0\\0"
        s = sum(int.from_bytes(b[i:i + 2], "big") for i in range(14, 34, 2))
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        b[24:26] = (~s & 0xFFFF).to_bytes(2, "big")
        return bytes(b)

    subnets = {subnets!r}
    e = engine("nat", rport=8080, capacity=1024)
    e.set_learn_ifindex(7)
    if subnets:
        e.set_client_subnets(subnets)
    syn, rep = P.tcp("S"), P.reply_tcp(rport=8080)
    base = int(ipaddress.ip_address("10.0.0.1"))
    to_client = to_gw = other = 0
    wave, n = 512, 0
    for w in range(40):                  # 20,480 distinct clients, 20 x the conn capacity
        t = (1 + 100 * w) * S            # conns of a wave expire (SYN_RECV 60 s) before the next
        clients = [ipaddress.ip_address(base + n + i) for i in range(wave)]
        n += wave
        macs = [b"\\x02\\xaa" + c.packed for c in clients]
        syns = [with_ip(syn, 26, c, 6, m) for c, m in zip(clients, macs)]
        assert len(e.process(syns, t)) == wave, e.stats()
        out = e.process([with_ip(rep, 30, c) for c in clients], t + S)
        assert len(out) == wave, e.stats()
        for (i, ifindex, fr), m in zip(out, macs):
            if fr[:6] == m and ifindex == 7:
                to_client += 1
            elif Ether(fr).dst == P.GW_MAC and ifindex == 2:
                to_gw += 1
            else:
                other += 1
    print(to_client, to_gw, other, n)
""")


def run_flood(subnets):
    # the child imports the test helpers by package name, from the checkout's root
    root = str(__import__("pathlib").Path(__file__).parents[2])
    res = subprocess.run([sys.executable, "-c", FLOOD.format(subnets=subnets)], cwd=root,
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    return [int(x) for x in res.stdout.split()]


def test_more_on_link_clients_than_the_table_holds_still_get_their_replies():
    """20 times the capacity in distinct clients, all learnt from their SYNs: process()
    returns every time, every reply leaves, and nearly all go to the client's own MAC (an
    entry pushed out of a crowded set falls back to the gateway, never to a wrong client)."""
    to_client, to_gw, other, n = run_flood([])
    assert other == 0
    assert to_client + to_gw == n
    assert to_client >= 0.9 * n


def test_off_link_clients_go_to_the_gateway_without_entries():
    """With the learning interface's subnet known, clients outside it are answered through
    the gateway's MAC; their SYNs (spoofed or not) put nothing in the table."""
    to_client, to_gw, other, n = run_flood(["192.0.2.0/24"])
    assert (to_client, to_gw, other) == (0, n, 0)


def test_on_link_and_off_link_clients_side_by_side():
    e = nat_engine()
    e.set_client_subnets(["198.51.100.0/24"])
    near, far = "198.51.100.9", "203.0.113.77"
    e.process([syn_from(near, P.CLIENT_MAC), syn_from(far, ATTACKER_MAC)], 1 * S)
    out = e.process([reply_to(near), reply_to(far)], 2 * S)
    assert [(Ether(f).dst, i) for _, i, f in out] == [(P.CLIENT_MAC, 7), (P.GW_MAC, 2)]


def test_the_table_follows_the_capacity():
    assert core.Engine(capacity=1024).neighbor_slots == 1024
    assert core.Engine(capacity=5000).neighbor_slots == 8192
    assert core.Engine(capacity=16).neighbor_slots >= 16


def test_set_neighbor_never_fails_for_want_of_room():
    """The control plane copies the kernel's neighbour table in: more entries than slots
    push out the oldest of a set instead of raising (which ended the daemon)."""
    e = nat_engine(capacity=16)
    base = int(ipaddress.ip_address("198.51.100.0"))
    for i in range(10_000):
        e.set_neighbor(str(ipaddress.ip_address(base + i)), "02:00:00:00:%02x:%02x"
                       % (i >> 8 & 0xFF, i & 0xFF), ifindex=3)
    last = str(ipaddress.ip_address(base + 9_999))
    e.process([syn_from(last, P.CLIENT_MAC)], 1 * S)
    (_, ifindex, fr), = e.process([reply_to(last)], 2 * S)
    assert (Ether(fr).dst, ifindex) == ("02:00:00:00:27:0f", 3)


@pytest.mark.parametrize("known_by", ["learnt", "kernel"])
def test_a_spoofed_syn_does_not_redirect_a_known_clients_replies(known_by):
    """A SYN with a client's address and the attacker's MAC opens its own conn but leaves
    the client's entry alone: replies of both conns go to the client's MAC."""
    e = nat_engine()
    if known_by == "kernel":
        e.set_neighbor(P.CLIENT, P.CLIENT_MAC, ifindex=7)
    e.process([syn_from(P.CLIENT, P.CLIENT_MAC, sport=40000)], 1 * S)
    e.process([syn_from(P.CLIENT, ATTACKER_MAC, sport=40001)], 2 * S)
    out = e.process([reply_to(P.CLIENT, 40000), reply_to(P.CLIENT, 40001)], 3 * S)
    assert [Ether(f).dst for _, _, f in out] == [P.CLIENT_MAC, P.CLIENT_MAC]


def test_the_kernels_word_replaces_a_learnt_entry():
    """What the kernel's neighbour table says (set_neighbor) wins over what a frame said."""
    e = nat_engine()
    e.process([syn_from(P.CLIENT, ATTACKER_MAC)], 1 * S)
    e.set_neighbor(P.CLIENT, P.CLIENT_MAC, ifindex=7)
    (_, _, fr), = e.process([reply_to(P.CLIENT)], 2 * S)
    assert Ether(fr).dst == P.CLIENT_MAC


def test_a_learnt_entry_ages_out():
    """A learnt entry unused for about 15 minutes is gone: the client's next SYN teaches its
    (new) MAC; until then its replies go to the gateway."""
    e = nat_engine()
    e.process([syn_from(P.CLIENT, ATTACKER_MAC, sport=40000)], 1 * S)
    e.process([syn_from(P.CLIENT, P.CLIENT_MAC, sport=40001)], 10 * S)
    (_, _, fr), = e.process([reply_to(P.CLIENT, 40001)], 11 * S)
    assert Ether(fr).dst == ATTACKER_MAC                 # fresh: kept
    later = 11 * S + 1000 * S
    e.process([syn_from(P.CLIENT, P.CLIENT_MAC, sport=40002)], later)
    (_, _, fr), = e.process([reply_to(P.CLIENT, 40002)], later + S)
    assert Ether(fr).dst == P.CLIENT_MAC


def test_a_changed_gateway_mac_is_followed():
    """Off-link clients, and entries learnt from frames that came through the old gateway,
    follow set_gateway_mac at once."""
    e = nat_engine()
    e.set_gateway_mac(P.GW_MAC, ifindex=2)
    far = "203.0.113.77"
    e.process([syn_from(far, P.GW_MAC)], 1 * S)         # learnt: the router's MAC
    e.set_gateway_mac("02:00:00:00:00:fd", ifindex=4)
    (_, ifindex, fr), = e.process([reply_to(far)], 2 * S)
    assert (Ether(fr).dst, ifindex) == ("02:00:00:00:00:fd", 4)
    e.set_client_subnets(["198.51.100.0/24"])
    e.set_gateway_mac("02:00:00:00:00:fc", ifindex=5)
    (_, ifindex, fr), = e.process([reply_to(far)], 3 * S)
    assert (Ether(fr).dst, ifindex) == ("02:00:00:00:00:fc", 5)


def test_client_subnets_are_checked():
    e = nat_engine()
    with pytest.raises(ValueError):
        e.set_client_subnets(["not a net"])
    with pytest.raises(ValueError):
        e.set_client_subnets([f"10.{i}.0.0/16" for i in range(17)])
