"""A backup director: fastlvs starts without its VIP, then serves it exactly while it is on
the host, as keepalived's VRRP would move it (`ip addr add/del` in the director's namespace,
or a local route covering it). The client's neighbour entry for the VIP is pinned to the
director's MAC, so its frames reach the director whether or not the VIP is there: what
decides is whether fastlvs takes them. DR and NAT clusters, both backends.
"""
import json
import os
import time

import pytest

from tests.e2e.e2e_support import BACKENDS, assert_clean
from fastlvs.lab import testbed as tbmod
from fastlvs.lab.testbed import HTTP_PORT, run

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
pytest.importorskip("fastlvs.engine._core")

WAIT = 10.0                 # bound on the daemon noticing an address or route event


@pytest.fixture(scope="module", params=["dr", "nat"])
def bed(request):
    tb = tbmod.Testbed(request.param, n_rs=3).build()
    try:
        # the kernel must not route what it is not the VIP's owner for (a backup)
        tbmod.sysctl(tb.director, ipv4__ip_forward=0)
        link = json.loads(run("ip", "-n", tb.director, "-j", "link", "show", "dev",
                              tb.lan_if).stdout)[0]
        run("ip", "-n", tb.client, "neigh", "replace", tb.vip, "lladdr", link["address"],
            "dev", "eth0", "nud", "permanent")
        yield tb
    finally:
        tb.destroy()


def vip_addr(tb, op):
    run("ip", "-n", tb.director, "addr", op, f"{tb.vip}/32", "dev", tb.lan_if)


def local_route(tb, op, check=True):
    # a /30 holding the VIP, as one route owns a block of VIPs
    prefix = tb.vip.rsplit(".", 1)[0] + "." + str(int(tb.vip.rsplit(".", 1)[1]) & ~3)
    run("ip", "-n", tb.director, "route", op, "local", f"{prefix}/30", "dev", "lo",
        "table", "local", check=check)


def wait_vips(d, served, timeout=WAIT) -> dict:
    """The `vips` of `fastlvs admin --counters` once its served list is `served`."""
    deadline = time.monotonic() + timeout
    while True:
        got = json.loads(d.admin("--counters").stdout)["vips"]
        if got["served"] == served or time.monotonic() > deadline:
            assert got["served"] == served, got
            return got
        time.sleep(0.05)


def not_served(tb):
    """A request to the VIP gets no answer: fastlvs left it to the kernel, which is not its
    owner and does not forward."""
    with pytest.raises(OSError):
        tb.http_get(timeout=1.0)


def served(tb, n=6) -> set:
    return {tb.http_get(timeout=3.0) for _ in range(n)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_backup_serves_its_vip_exactly_while_it_is_on_the_host(bed, backend):
    vip_addr(bed, "del")
    local_route(bed, "del", check=False)
    d = conn = None
    try:
        d = bed.start_daemon("--vip", f"{bed.vip}:{HTTP_PORT}", "-s", "rr",
                             *[a for rip in bed.rips for a in ("--rs", f"{rip}:{HTTP_PORT}")],
                             backend=backend)
        assert any(f"VIP {bed.vip} not on this host: waiting for it (backup)" in ln
                   for ln in d.lines), d.stderr
        assert wait_vips(d, []) == {"served": [], "absent": [bed.vip]}
        not_served(bed)
        assert f"TCP  {bed.vip}:{HTTP_PORT} rr" in d.admin("-Ln").stdout

        # keepalived makes this director the master: the VIP arrives
        vip_addr(bed, "add")
        wait_vips(d, [bed.vip])
        assert served(bed) == set(bed.rs_names)
        conn = bed.keepalive(timeout=3.0)
        first = conn.ask()
        sport = conn.sock.getsockname()[1]

        # and leaves again: the kernel's traffic, the service and the conn stay
        vip_addr(bed, "del")
        assert wait_vips(d, []) == {"served": [], "absent": [bed.vip]}
        not_served(bed)
        assert f"TCP  {bed.vip}:{HTTP_PORT} rr" in d.admin("-Ln").stdout
        assert f"{tbmod.CLIENT_IP}:{sport}" in d.admin("-Lnc").stdout

        # back: the long-lived connection opened before carries on with its server
        vip_addr(bed, "add")
        wait_vips(d, [bed.vip])
        assert conn.ask() == first
        assert served(bed, 3) <= set(bed.rs_names)

        # a local route covering the VIP serves it too
        vip_addr(bed, "del")
        wait_vips(d, [])
        local_route(bed, "add")
        wait_vips(d, [bed.vip])
        assert served(bed, 3) <= set(bed.rs_names)
        assert conn.ask() == first
        local_route(bed, "del")
        wait_vips(d, [])
        not_served(bed)

        log = [ln for ln in d.lines if f"VIP {bed.vip}" in ln]
        assert [ln.split(f"VIP {bed.vip} ", 1)[1] for ln in log] == [
            "not on this host: waiting for it (backup)",
            *["is on this host: serving it",
              "left this host: the kernel gets its traffic; its services and connections "
              "are kept"] * 3], log
    finally:
        if conn is not None:
            conn.close()
        if d is not None:
            rc = d.stop()
            assert rc == 0, d.stderr
            assert_clean(bed, d)
        local_route(bed, "del", check=False)
        run("ip", "-n", bed.director, "addr", "replace", f"{bed.vip}/32", "dev", bed.lan_if)
