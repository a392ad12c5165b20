"""A service loaded whole (rules file, TOML, --vip/--rs, reload) ends in the state `ipvsadm -R`
of the same lines leaves in the kernel: the service made first, then each -a applied in turn.
For wrr that decides the first round: after -A and -a with weights 4, 3, 2, the kernel's first
pick is the server added last (weight 2), the head of its list (recorded on 6.1, see
ARCHITECTURE.md); a scheduler bound to the full list at once would start at weight 4."""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

import fastlvs.engine.reference as reference
from fastlvs.control.director import Director
from fastlvs.control.ipvsadm import parse_command
from fastlvs.control.model import NoRoute
from fastlvs.control.rules import iter_rules, parse_rules

S = 1_000_000_000
VIP = "203.0.113.10"
LOCAL_MAC = "02:00:00:00:00:01"
CLIENT_MAC = "02:00:00:00:00:aa"
RS = {f"192.0.2.{i}": bytes([2, 0, 0, 0, 1, i]) for i in (11, 12, 13)}
RULES = f"""\
-A -t {VIP}:80 -s wrr
-a -t {VIP}:80 -r 192.0.2.11:80 -g -w 4
-a -t {VIP}:80 -r 192.0.2.12:80 -g -w 3
-a -t {VIP}:80 -r 192.0.2.13:80 -g -w 2
"""


def nexthop(ip):
    if ip not in RS:
        raise NoRoute(f"{ip} is not a neighbour")
    return RS[ip], 10


def director():
    engine = reference.Engine(capacity=1024, batch=1, local_ip="192.0.2.1", local_mac=LOCAL_MAC)
    return Director(engine, nexthop)


def picks(d, n):
    """The real server each of n new connections goes to, in order."""
    mac_to_rs = {mac: ip for ip, mac in RS.items()}
    out = []
    for i in range(n):
        frame = bytes(Ether(src=CLIENT_MAC, dst=LOCAL_MAC) / IP(src="198.51.100.7", dst=VIP)
                      / TCP(sport=30000 + i, dport=80, flags="S"))
        (_, _, data), = d.engine.process([frame], [S + i])
        out.append(mac_to_rs[data[:6]])
    return out


def test_loaded_wrr_starts_at_the_server_added_last_as_the_kernel_does():
    d = director()
    d.load(parse_rules(RULES))
    assert picks(d, 1) == ["192.0.2.13"]


@pytest.mark.parametrize("sched", ["wrr", "rr", "wlc", "sh", "mh"])
def test_loading_a_table_equals_applying_its_commands_one_by_one(sched):
    rules = RULES.replace("-s wrr", f"-s {sched}")
    whole, stepwise = director(), director()
    whole.load(parse_rules(rules))
    for _, cmd in iter_rules(rules):
        stepwise.execute(cmd)
    assert picks(whole, 27) == picks(stepwise, 27)


def test_an_edited_scheduler_is_bound_to_the_full_list_as_ipvsadm_E_does():
    # -E -s wrr on a populated service is the kernel's init_service over the whole list:
    # the first round starts at the highest weight
    d = director()
    d.load(parse_rules(RULES.replace("-s wrr", "-s rr")))
    d.execute(parse_command(["-E", "-t", f"{VIP}:80", "-s", "wrr"]))
    assert picks(d, 1) == ["192.0.2.11"]
