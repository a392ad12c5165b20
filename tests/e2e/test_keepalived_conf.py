"""The daemon started from a keepalived.conf, in every forwarding mode: the table it serves is
the one the reader computes (what keepalived installs at start: an alpha real server with a
checker stays out), HTTP reaches only the installed real servers, the VRRP block is a warning
line, and SIGHUP re-reads the file."""
import collections
import os
import signal
import time

import pytest

from fastlvs import settings
from fastlvs.control.keepalived import load_keepalived
from fastlvs.control.listing import format_list

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
pytest.importorskip("fastlvs.engine._core")

KIND = {"dr": "DR", "nat": "NAT", "tun": "TUN"}


def conf(bed, rs3_alpha=True) -> str:
    rs3 = "        alpha\n        TCP_CHECK {\n        }\n" if rs3_alpha else ""
    return f"""global_defs {{
    router_id fastlvs-e2e
}}
vrrp_instance VI_1 {{
    state MASTER
    interface eth0
    virtual_router_id 51
}}
virtual_server {bed.vip} 80 {{
    lb_algo wrr
    lb_kind {KIND[bed.mode]}
    protocol TCP
    real_server {bed.rip_of("rs1")} 80 {{
        weight 2
    }}
    real_server {bed.rip_of("rs2")} 80 {{
        weight 1
    }}
    real_server {bed.rip_of("rs3")} 80 {{
        weight 1
{rs3}    }}
}}
"""


def test_serves_what_keepalived_installs_and_reloads(bed, start):
    path = bed.write_rules(conf(bed), name="keepalived.conf")
    d = start("--keepalived-conf", path)
    assert any(f"{path}:4: vrrp_instance ignored (VRRP stays with keepalived)" in ln
               for ln in d.lines), d.stderr
    # the banner's size= is the daemon's own hash size (--capacity), not a fixed 4096
    capacity = settings.setting("capacity").default
    assert d.admin("-Ln").stdout == format_list(load_keepalived(path).table,
                                                conn_table_size=1 << (capacity - 1).bit_length())
    got = collections.Counter(bed.http_get(timeout=3.0) for _ in range(30))
    assert set(got) == {"rs1", "rs2"} and got["rs1"] == 2 * got["rs2"], got

    bed.write_rules(conf(bed, rs3_alpha=False), name="keepalived.conf")
    n_lines = len(d.lines)
    d.send(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while not any("reload" in ln for ln in d.lines[n_lines:]):
        assert time.monotonic() < deadline, d.stderr
        time.sleep(0.05)
    got = collections.Counter(bed.http_get(timeout=3.0) for _ in range(40))
    assert set(got) == {"rs1", "rs2", "rs3"}, got
