"""Two network namespaces joined by a veth pair, made with unique names for each test and
always deleted: `a` (where the helpers run) holds 10.213.N.1/24, `b` holds 10.213.N.2/24 and
is the gateway of 198.51.100.0/24 for `a`. Root only: the tests skip otherwise."""
from __future__ import annotations

import os
import uuid

import pytest

from tests.netns_netlink.netns_pair import Pair, ip


@pytest.fixture
def pair():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = uuid.uuid4().hex[:8]
    a, b = f"fltest-a-{tag}", f"fltest-b-{tag}"
    net = int(tag[:2], 16) % 200 + 10
    made = []
    try:
        for ns in (a, b):
            ip("netns", "add", ns)
            made.append(ns)
        ip("link", "add", f"fla{tag}"[:15], "netns", a, "type", "veth", "peer", "name",
           f"flb{tag}"[:15], "netns", b)
        p = Pair(a, b, f"fla{tag}"[:15], f"flb{tag}"[:15], f"10.213.{net}.1",
                 f"10.213.{net}.2")
        for ns, ifname, addr in ((a, p.a_if, p.a_ip), (b, p.b_if, p.b_ip)):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
            ip("-n", ns, "link", "set", ifname, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", a, "route", "add", "198.51.100.0/24", "via", p.b_ip)
        yield p
    finally:
        for ns in made:
            ip("netns", "del", ns, check=False)
