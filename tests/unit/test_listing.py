"""`ipvsadm -L` text, byte for byte. The expected lines come from ipvsadm 1.31's printf
formats (print_title, print_service_entry, print_largenum, list_conn/print_conn in
ipvsadm.c), run through a C printf with the same data: note the trailing blanks that the
left-aligned last columns leave."""
import pytest

from fastlvs.control.listing import (ConnEntry, format_conns, format_list, format_timeout,
                             sorted_dests, sorted_services)
from fastlvs.control.model import RATE_FIELDS, STAT_FIELDS, ControlError, Proto, ServiceTable

BANNER = "IP Virtual Server version 1.2.1 (size=4096)"


def text(*lines):
    return "".join(line + "\n" for line in lines)


def _set(obj, fields, values):
    for f, v in zip(fields, values):
        setattr(obj, f, v)


@pytest.fixture
def table():
    """Two services with counters chosen to hit every number format (K, M, G, T)."""
    t = ServiceTable()
    s = t.add_service("tcp", "10.0.0.1", 80, "wlc", timeout=300, netmask="255.255.255.0")
    _set(s, STAT_FIELDS, [123456789, 99999999, 1000000000, 123456789012345, 5])
    _set(s, RATE_FIELDS, [12, 34, 56, 78, 123456789])
    d2 = t.add_dest(s, "192.168.1.20", 8080, "nat", weight=65535, u_threshold=100,
                    l_threshold=50)
    d2.activeconns, d2.inactconns, d2.persistconns = 4294967295, 12, 7
    _set(d2, STAT_FIELDS, [100000000, 99999999999, 100000000000, 99999999999999,
                           100000000000000])
    _set(d2, RATE_FIELDS, [123456789, 1, 2, 1000000000, 3])
    d1 = t.add_dest(s, "192.168.1.1", 80, "dr")
    _set(d1, STAT_FIELDS, [0, 1, 2, 3, 4])
    _set(d1, RATE_FIELDS, [5, 6, 7, 8, 9])
    u = t.add_service("udp", "2001:db8::1", 53, "sh", flags=["sh-port", "sh-fallback"])
    d = t.add_dest(u, "2001:db8:ffff:ffff:ffff:ffff:ffff:10", 53, "tun", weight=0)
    d.activeconns, d.inactconns, d.persistconns = 1, 2, 3
    _set(d, STAT_FIELDS, [1, 2, 3, 4, 5])
    _set(d, RATE_FIELDS, [1, 2, 3, 4, 5])
    return t


def test_the_plain_dest_line_is_byte_exact():
    t = ServiceTable()
    s = t.add_service("tcp", "10.0.0.1", 80)
    t.add_dest(s, "192.168.1.1", 80)
    assert format_list(t) == text(
        BANNER,
        "Prot LocalAddress:Port Scheduler Flags",
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
        "TCP  10.0.0.1:80 wlc",
        "  -> 192.168.1.1:80               Route   1      0          0         ",
    )


def test_empty_table_prints_banner_and_title_only():
    assert format_list(ServiceTable(), conn_table_size=1048576) == text(
        "IP Virtual Server version 1.2.1 (size=1048576)",
        "Prot LocalAddress:Port Scheduler Flags",
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
    )


def test_plain_listing(table):
    assert format_list(table) == text(
        BANNER,
        "Prot LocalAddress:Port Scheduler Flags",
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
        "TCP  10.0.0.1:80 wlc persistent 300 mask 255.255.255.0",
        "  -> 192.168.1.1:80               Route   1      0          0         ",
        "  -> 192.168.1.20:8080            Masq    65535  4294967295 12        ",
        "UDP  [2001:db8::1]:53 sh (sh-fallback,sh-port)",
        "  -> [2001:db8:ffff:ffff:ffff:ffff:ffff:10]:53 Tunnel  0      1          2         ",
    )


def test_numeric_false_keeps_the_same_columns(table):
    assert format_list(table, numeric=False) == format_list(table, numeric=True)


def test_stats_scales_counters(table):
    assert format_list(table, stats=True) == text(
        BANNER,
        "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes",
        "  -> RemoteAddress:Port",
        "TCP  10.0.0.1:80                   123456K 99999999    1000M     123T        5",
        "  -> 192.168.1.1:80                      0        1        2        3        4",
        "  -> 192.168.1.20:8080             100000K   99999M     100G   99999G     100T",
        "UDP  [2001:db8::1]:53                    0        0        0        0        0",
        "  -> [2001:db8:ffff:ffff:ffff:ffff:ffff:10]:53        1        2        3        4        5",
    )


def test_stats_exact(table):
    assert format_list(table, stats=True, exact=True) == text(
        BANNER,
        "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes",
        "  -> RemoteAddress:Port",
        "TCP  10.0.0.1:80                  123456789 99999999 1000000000 123456789012345        5",
        "  -> 192.168.1.1:80                      0        1        2        3        4",
        "  -> 192.168.1.20:8080            100000000 99999999999 100000000000 99999999999999 "
        "100000000000000",
        "UDP  [2001:db8::1]:53                    0        0        0        0        0",
        "  -> [2001:db8:ffff:ffff:ffff:ffff:ffff:10]:53        1        2        3        4        5",
    )


def test_stats_wins_over_rate(table):
    assert format_list(table, stats=True, rate=True) == format_list(table, stats=True)


def test_rate_scales_only_the_dest_byte_rates(table):
    assert format_list(table, rate=True) == text(
        BANNER,
        "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS",
        "  -> RemoteAddress:Port",
        "TCP  10.0.0.1:80                        12       34       56       78  123456K",
        "  -> 192.168.1.1:80                      5        6        7        8        9",
        "  -> 192.168.1.20:8080            123456789        1        2    1000M        3",
        "UDP  [2001:db8::1]:53                    0        0        0        0        0",
        "  -> [2001:db8:ffff:ffff:ffff:ffff:ffff:10]:53        1        2        3        4        5",
    )


def test_thresholds(table):
    assert format_list(table, thresholds=True) == text(
        BANNER,
        "Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn ",
        "  -> RemoteAddress:Port",
        "TCP  10.0.0.1:80 wlc persistent 300 mask 255.255.255.0",
        "  -> 192.168.1.1:80               0          0          0          0         ",
        "  -> 192.168.1.20:8080            100        50         4294967295 12        ",
        "UDP  [2001:db8::1]:53 sh (sh-fallback,sh-port)",
        "  -> [2001:db8:ffff:ffff:ffff:ffff:ffff:10]:53 0          0          1          2         ",
    )


def test_persistent_conn(table):
    assert format_list(table, persistent_conn=True) == text(
        BANNER,
        "Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn ",
        "  -> RemoteAddress:Port",
        "TCP  10.0.0.1:80 wlc persistent 300 mask 255.255.255.0",
        "  -> 192.168.1.1:80               1         0           0          0         ",
        "  -> 192.168.1.20:8080            65535     7           4294967295 12        ",
        "UDP  [2001:db8::1]:53 sh (sh-fallback,sh-port)",
        "  -> [2001:db8:ffff:ffff:ffff:ffff:ffff:10]:53 0         3           1          2         ",
    )


def test_tun_info(table):
    assert format_list(table, tun_info=True) == text(
        BANNER,
        "Prot LocalAddress:Port Scheduler Flags",
        "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn",
        "TCP  10.0.0.1:80 wlc persistent 300 mask 255.255.255.0",
        "  -> 192.168.1.1:80               Route   n/a           1      0          0         ",
        "  -> 192.168.1.20:8080            Masq    n/a           65535  4294967295 12        ",
        "UDP  [2001:db8::1]:53 sh (sh-fallback,sh-port)",
        "  -> [2001:db8:ffff:ffff:ffff:ffff:ffff:10]:53 Tunnel  ipip          0      1          2   "
        "      ",
    )


def test_one_service_has_no_banner(table):
    assert format_list(table, service=("udp", "2001:db8::1", 53)) == text(
        "Prot LocalAddress:Port Scheduler Flags",
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
        "UDP  [2001:db8::1]:53 sh (sh-fallback,sh-port)",
        "  -> [2001:db8:ffff:ffff:ffff:ffff:ffff:10]:53 Tunnel  0      1          2         ",
    )
    with pytest.raises(ControlError, match="No such service"):
        format_list(table, service=("udp", "2001:db8::1", 54))


def test_persistence_ipv6_mask_and_ops():
    t = ServiceTable()
    t.add_service("udp", "2001:db8::1", 0, "rr", timeout=360, netmask=64, ops=True)
    t.add_service("udp", "2001:db8::2", 53, "rr", timeout=360)
    t.add_service("udp", "10.0.0.1", 53, "mh", flags=["flag-2"])
    lines = format_list(t).splitlines()[3:]
    assert lines == [
        "UDP  10.0.0.1:53 mh (mh-port)",
        "UDP  [2001:db8::1]:0 rr persistent 360 mask 64 ops",
        "UDP  [2001:db8::2]:53 rr persistent 360",
    ]


def test_services_sort_by_family_protocol_address_port():
    t = ServiceTable()
    for proto, addr, port in [("udp", "10.0.0.1", 53), ("tcp", "2001:db8::1", 80),
                              ("tcp", "10.0.0.2", 80), ("tcp", "10.0.0.1", 443),
                              ("tcp", "10.0.0.1", 80)]:
        t.add_service(proto, addr, port)
    assert [s.key.option_text() for s in sorted_services(t)] == [
        "-t 10.0.0.1:80", "-t 10.0.0.1:443", "-t 10.0.0.2:80", "-u 10.0.0.1:53",
        "-t [2001:db8::1]:80"]
    # --nosort: the order they were added in
    assert [s.vport for s in t] == [53, 80, 80, 443, 80]
    listed = [line.split()[1] for line in format_list(t, sort=False).splitlines()[3:]]
    assert listed == ["10.0.0.1:53", "[2001:db8::1]:80", "10.0.0.2:80", "10.0.0.1:443",
                      "10.0.0.1:80"]


def test_dests_sort_by_address_then_port_and_nosort_keeps_list_order():
    t = ServiceTable()
    s = t.add_service("tcp", "10.0.0.1", 0, timeout=300)
    for addr, port in [("192.168.1.2", 80), ("192.168.1.10", 80), ("192.168.1.2", 22)]:
        t.add_dest(s, addr, port, "nat")
    assert [(d.addr, d.port) for d in sorted_dests(s)] == [
        ("192.168.1.2", 22), ("192.168.1.2", 80), ("192.168.1.10", 80)]
    nosort = [line.split()[1] for line in format_list(t, sort=False).splitlines()[4:]]
    assert nosort == ["192.168.1.2:22", "192.168.1.10:80", "192.168.1.2:80"]


def test_dest_order_keeps_libipvs_signed_difference_quirk():
    # libipvs compares addresses by u32 subtraction stored in an int: two addresses more
    # than 2**31 apart compare backwards. glibc's qsort over that gave this order (checked
    # with a C program using the same comparator).
    t = ServiceTable()
    s = t.add_service("tcp", "10.9.9.9", 80)
    for addr in ["10.0.0.1", "192.168.0.1", "200.1.1.1", "100.0.0.1"]:
        t.add_dest(s, addr, 80, "nat")
    assert [d.addr for d in sorted_dests(s)] == [
        "100.0.0.1", "192.168.0.1", "200.1.1.1", "10.0.0.1"]


def test_connection_listing():
    conns = [
        ConnEntry("tcp", "198.51.100.7", 40000, "10.0.0.1", 80, "192.168.1.1", 80,
                  "ESTABLISHED", 899),
        ConnEntry("IP", "198.51.100.7", 0, "10.0.0.1", 0, "192.168.1.1", 0, "NONE", 6000),
        ConnEntry(Proto.UDP, "2001:db8:1::7", 5353, "2001:db8::1", 53, "2001:db8::10", 53,
                  "UDP", 5),
    ]
    assert format_conns(conns) == text(
        "IPVS connection entries",
        "pro expire state       source             virtual            destination",
        "TCP 14:59  ESTABLISHED 198.51.100.7:40000 10.0.0.1:80        192.168.1.1:80",
        "IP  100:00 NONE        198.51.100.7:0     10.0.0.1:0         192.168.1.1:0",
        "UDP 00:05  UDP         [2001:db8:1::7]:5353 [2001:db8::1]:53   [2001:db8::10]:53",
    )
    assert format_conns([], numeric=False) == text(
        "IPVS connection entries",
        "pro expire state       source             virtual            destination")


def test_connection_listing_with_persistence_engine_data():
    conns = [ConnEntry("udp", "1.2.3.4", 5060, "10.0.0.1", 5060, "192.168.1.1", 5060, "UDP",
                       120, "sip", "abc"),
             ConnEntry("udp", "1.2.3.5", 5060, "10.0.0.1", 5060, "192.168.1.1", 5060, "UDP",
                       61)]
    assert format_conns(conns, persistent_conn=True) == text(
        "IPVS connection entries",
        "pro expire state       source             virtual            destination        "
        "pe name          pe_data",
        "UDP 02:00  UDP         1.2.3.4:5060       10.0.0.1:5060      192.168.1.1:5060 "
        "sip                abc",
        "UDP 01:01  UDP         1.2.3.5:5060       10.0.0.1:5060      192.168.1.1:5060",
    )


def test_timeout_listing():
    t = ServiceTable()
    assert format_timeout(t) == "Timeout (tcp tcpfin udp): 900 120 300\n"
    t.set_timeouts(3600, 0, 60)
    assert format_timeout(t) == "Timeout (tcp tcpfin udp): 3600 120 60\n"
