"""Edges of batching and of multi-interface output that the per-feature tests do not reach."""
from scapy.layers.l2 import Ether

from tests.core.helpers import S, engine
from tests.core.packets import CLIENT, RS_MAC, VIP, tcp, udp


def test_a_follower_in_the_same_batch_past_its_conns_timeout_opens_a_new_conn():
    """Three datagrams of one UDP flow in one batch, at t=100, 399 and 700 s: the first
    opens the conn, the second refreshes it (udp 300 s), the third comes 301 s after the
    second, so in the kernel's order it finds the conn expired and opens a new one."""
    calls = []

    def sched(svcs, flows):
        calls.append(len(flows))
        return [1] * len(flows)

    e = engine(proto=17, vport=53, sched=sched)
    f = udp()
    out = e.process_verdicts([f, f, f], [100 * S, 399 * S, 700 * S])
    assert [v[0] for v in out] == ["tx", "tx", "tx"]
    assert e.stats()["conns_created"] == 2
    assert calls == [1]                 # the scheduler is still asked once per batch and flow


def test_a_tcp_follower_without_syn_past_the_timeout_is_not_forwarded():
    """A SYN, then in the same batch an ACK of that flow long after its SYN_RECV timeout
    (60 s): like an unknown non-SYN, it is not forwarded and is counted."""
    e = engine()
    out = e.process_verdicts([tcp("S"), tcp("A")], [10 * S, 100 * S])
    assert [v[0] for v in out] == ["tx", "drop"]
    assert out[1][1] == "tcp_not_syn"


def test_frames_to_a_dest_carry_our_mac_of_that_dests_interface():
    """A director with several interfaces sends each frame from the MAC of the interface it
    leaves by, not one MAC for all."""
    e = engine()
    e.set_dest(1, 1, "192.0.2.11", 80, "dr", RS_MAC[0], ifindex=10,
               src_mac="02:00:00:00:0a:0a")
    (idx, ifindex, frame), = e.process([tcp("S")], 1 * S)
    eth = Ether(frame)
    assert (eth.src, eth.dst, ifindex) == ("02:00:00:00:0a:0a", RS_MAC[0], 10)
    assert (eth.payload.src, eth.payload.dst) == (CLIENT, VIP)


def test_nat_replies_reach_a_client_learnt_from_its_own_frames():
    """With no neighbour entry and no gateway, the first reply of a NAT connection still goes
    back to the MAC the client's SYN came from, out of the learning interface."""
    from tests.core.packets import CLIENT_MAC, reply_tcp
    e = engine(fwd="nat", rport=8080)
    e.set_gateway_mac(None)
    assert [v[0] for v in e.process_verdicts([tcp("S")], 1 * S)] == ["tx"]
    assert e.process_verdicts([reply_tcp()], 2 * S)[0][:2] == ("drop", "no_route")
    e2 = engine(fwd="nat", rport=8080)
    e2.set_gateway_mac(None)
    e2.set_learn_ifindex(7)
    e2.process([tcp("S")], 1 * S)
    (idx, ifindex, frame), = e2.process([reply_tcp()], 2 * S)
    eth = Ether(frame)
    assert (eth.dst, ifindex, eth.payload.src) == (CLIENT_MAC, 7, VIP)
