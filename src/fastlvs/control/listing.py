"""`ipvsadm -L` as text: the service listing (plain, --stats, --rate, --thresholds,
--persistent-conn, --tun-info), the connection listing (-c), the timeouts (--timeout), and
the order ipvsadm sorts services and dests in.

The widths and number formats are those of ipvsadm 1.31's printf formats, byte for byte,
including the trailing blanks its left-aligned last columns leave.
"""
from __future__ import annotations

import errno
import ipaddress
from typing import Callable, Iterable, NamedTuple

from fastlvs.control.model import (ControlError, FwdMethod, Proto, Service, ServiceTable, addrport,
                           flag_bits, fwmark_text, service_key)

IPVS_VERSION = "1.2.1"           # what every kernel since 2.6.x reports (IP_VS_VERSION_CODE)
DEFAULT_CONN_TABLE_SIZE = 4096   # the kernel's default conn_tab_bits = 12

_AF_NUMBER = {4: 2, 6: 10}       # AF_INET, AF_INET6: ipvsadm compares these numbers
_U32 = 0xFFFFFFFF


# -- ordering ------------------------------------------------------------------------------
def _c_int(diff: int) -> int:
    """A difference of two u32 values as the C int ipvsadm's comparators store it in.

    libipvs subtracts unsigned addresses and keeps the result in an int, so two addresses
    more than 2**31 apart compare "backwards" (10.0.0.1 sorts after 192.168.0.1). We keep
    the same arithmetic so our order is ipvsadm's, quirk included.
    """
    diff &= _U32
    return diff - (1 << 32) if diff & 0x80000000 else diff


def _words(af: int, addr: str) -> tuple[int, int, int, int]:
    # The address as the four host-order u32 words of a union nf_inet_addr (IPv4 is word 0).
    n = int(ipaddress.ip_address(addr))
    if af == 4:
        return (n, 0, 0, 0)
    return (n >> 96, (n >> 64) & _U32, (n >> 32) & _U32, n & _U32)


def _cmp_addr(af: int, a: tuple, b: tuple) -> int:
    if af == 6:
        for x, y in zip(a, b):
            r = _c_int(x - y)
            if r:
                return r
        return 0
    return _c_int(a[0] - b[0])


def _fwmark(svc: Service) -> int:
    return svc.vport if svc.proto is Proto.FWM else 0


def _cmp_services(s1: Service, s2: Service) -> int:
    # fwmark, af, protocol, address, port: libipvs' service comparator.
    r = _c_int(_fwmark(s1) - _fwmark(s2))
    if r:
        return r
    r = _AF_NUMBER[s1.af] - _AF_NUMBER[s2.af]
    if r:
        return r
    r = s1.proto.number - s2.proto.number
    if r:
        return r
    r = _cmp_addr(s1.af, _words(s1.af, s1.vaddr), _words(s2.af, s2.vaddr))
    if r:
        return r
    return s1.vport - s2.vport


def _cmp_dests(d1, d2) -> int:
    # Address (as many words as the first dest's family has), then port: libipvs' dest
    # comparator, which does not compare families first.
    r = _cmp_addr(d1.af, _words(d1.af, d1.addr), _words(d2.af, d2.addr))
    if r:
        return r
    return d1.port - d2.port


def _msort(items: list, cmp: Callable) -> list:
    """glibc's qsort(): a top-down merge sort that takes from the left run on ties.

    Reproduced rather than using sorted() because libipvs' comparators are not a total
    order (see `_c_int`); with them, only the same algorithm gives the same result.
    """
    n = len(items)
    if n <= 1:
        return list(items)
    n1 = n // 2
    left, right = _msort(items[:n1], cmp), _msort(items[n1:], cmp)
    out, i, j = [], 0, 0
    while i < len(left) and j < len(right):
        if cmp(left[i], right[j]) <= 0:
            out.append(left[i])
            i += 1
        else:
            out.append(right[j])
            j += 1
    out.extend(left[i:])
    out.extend(right[j:])
    return out


def sorted_services(table: ServiceTable) -> list[Service]:
    """Services in the order `ipvsadm -L`/`-S` print them (IPv4 first, then by protocol
    number, address and port)."""
    return _msort(list(table), _cmp_services)


def sorted_dests(service: Service) -> list:
    """A service's dests in the order `ipvsadm -L`/`-S` print them (by address, then port)."""
    return _msort(list(service.dests), _cmp_dests)


# -- pieces --------------------------------------------------------------------------------
def _largenum(i: int, exact: bool) -> str:
    # ipvsadm's print_largenum: 9 columns, scaled to K/M/G/T (by 1000s) unless --exact.
    if exact:
        s = str(i)
        return s.rjust(9 if len(s) <= 8 else len(s) + 1)
    if i < 100_000_000:
        return f"{i:9d}"
    if i < 1_000_000_000:
        return f"{i // 1000:8d}K"
    if i < 100_000_000_000:
        return f"{i // 1_000_000:8d}M"
    if i < 100_000_000_000_000:
        return f"{i // 1_000_000_000:8d}G"
    return f"{i // 1_000_000_000_000:8d}T"


def sched_flags_text(service: Service) -> str:
    """The scheduler flags as ipvsadm prints them: the scheduler's own names for sh and mh
    (a generic bit they have no name for is not printed: `mh ()` for -b flag-3),
    `flag-N` for every other scheduler; "" when there are none."""
    names = []
    for bit, name in flag_bits(service.sched_name, service.flags):
        if service.sched_name in ("sh", "mh"):
            if not name.startswith("flag-"):
                names.append(name)
        elif bit:
            names.append(f"flag-{bit}")
        else:
            names.append(name)
    return ",".join(names)


def _svc_name(svc: Service) -> str:
    if svc.proto is Proto.FWM:
        # ipvsadm prints the mark as a signed int, and names the family of a v6 one
        return f"FWM  {fwmark_text(svc.vport)}" + (" IPv6" if svc.af == 6 else "")
    name = f"{svc.proto.label:<4} {addrport(svc.vaddr, svc.vport)}"
    # ipvsadm cuts IPv4 names at 33 characters (only a long host name can get there).
    return name if svc.af == 6 else name[:33]


def _dest_name(dest) -> str:
    name = addrport(dest.addr, dest.port)
    return name if dest.af == 6 else name[:28]


def _title(stats, rate, thresholds, persistent_conn, tun_info) -> str:
    if stats or rate:
        cols = ("Conns", "InPkts", "OutPkts", "InBytes", "OutBytes") if stats else \
               ("CPS", "InPPS", "OutPPS", "InBPS", "OutBPS")
        return (f"{'Prot LocalAddress:Port':<33}" + "".join(f" {c:>8}" for c in cols) +
                "\n  -> RemoteAddress:Port\n")
    if thresholds:
        return (f"{'Prot LocalAddress:Port':<33} {'Uthreshold':<10} {'Lthreshold':<10} "
                f"{'ActiveConn':<10} {'InActConn':<10}\n  -> RemoteAddress:Port\n")
    if persistent_conn:
        return (f"{'Prot LocalAddress:Port':<33} {'Weight':<9} {'PersistConn':<11} "
                f"{'ActiveConn':<10} {'InActConn':<10}\n  -> RemoteAddress:Port\n")
    if tun_info:
        return ("Prot LocalAddress:Port Scheduler Flags\n"
                "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn "
                "InActConn\n")
    return ("Prot LocalAddress:Port Scheduler Flags\n"
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n")


def tun_info_text(d) -> str:
    """A TUN dest's TunnelInfo column as ipvsadm 1.31 prints it: ipip, gue:PORT:-c|+c|r+c
    (nocsum, csum, remcsum), gre:-c|+c."""
    if d.tun_type == "ipip":
        return "ipip"
    mark = {"nocsum": "-c", "csum": "+c", "remcsum": "r+c"}[d.tun_flags]
    if d.tun_type == "gue":
        return f"gue:{d.tun_port}:{mark}"
    return f"gre:{mark}"


def _service_lines(svc: Service, stats, rate, exact, thresholds, persistent_conn, tun_info,
                   sort) -> list[str]:
    name = _svc_name(svc)
    if stats:
        line = f"{name:<33}" + "".join(_largenum(getattr(svc, f), exact) for f in
                                       ("conns", "inpkts", "outpkts", "inbytes", "outbytes"))
    elif rate:
        line = f"{name:<33}" + "".join(_largenum(getattr(svc, f), exact) for f in
                                       ("cps", "inpps", "outpps", "inbps", "outbps"))
    else:
        line = f"{name} {svc.sched_name}"
        if svc.flags:                    # "()" when no set bit has a name (recorded)
            line += f" ({sched_flags_text(svc)})"
        if svc.persistent:
            line += f" persistent {svc.timeout}"
            if svc.af == 4 and svc.netmask != "255.255.255.255":
                line += f" mask {svc.netmask}"
            if svc.af == 6 and svc.netmask != 128:
                line += f" mask {svc.netmask}"
        if svc.ops:
            line += " ops"
    lines = [line]
    for d in (sorted_dests(svc) if sort else svc.dests):
        dn = _dest_name(d)
        if stats:
            lines.append(f"  -> {dn:<28}" + "".join(
                _largenum(getattr(d, f), exact)
                for f in ("conns", "inpkts", "outpkts", "inbytes", "outbytes")))
        elif rate:
            # ipvsadm prints a dest's three first rates plainly and scales only the byte rates.
            lines.append(f"  -> {dn:<28} {d.cps:8d} {d.inpps:8d} {d.outpps:8d}"
                         + _largenum(d.inbps, exact) + _largenum(d.outbps, exact))
        elif thresholds:
            lines.append(f"  -> {dn:<28} {d.u_threshold:<10} {d.l_threshold:<10} "
                         f"{d.activeconns:<10} {d.inactconns:<10}")
        elif persistent_conn:
            lines.append(f"  -> {dn:<28} {d.weight:<9} {d.persistconns:<11} "
                         f"{d.activeconns:<10} {d.inactconns:<10}")
        elif tun_info:
            info = tun_info_text(d) if d.fwd is FwdMethod.TUN else "n/a"
            lines.append(f"  -> {dn:<28} {d.fwd.label:<7} {info:<13} {d.weight:<6} "
                         f"{d.activeconns:<10} {d.inactconns:<10}")
        else:
            lines.append(f"  -> {dn:<28} {d.fwd.label:<7} {d.weight:<6} "
                         f"{d.activeconns:<10} {d.inactconns:<10}")
    return lines


# -- listings ------------------------------------------------------------------------------
def format_list(table: ServiceTable, stats: bool = False, rate: bool = False,
                exact: bool = False, numeric: bool = True,
                conn_table_size: int = DEFAULT_CONN_TABLE_SIZE, *, thresholds: bool = False,
                persistent_conn: bool = False, tun_info: bool = False, sort: bool = True,
                service=None) -> str:
    """What `ipvsadm -L -n [--stats|--rate|--thresholds|--persistent-conn|--tun-info]
    [--exact] [--nosort]` prints for `table`.

    One variant applies, by ipvsadm's precedence: stats, rate, thresholds,
    persistent_conn, tun_info. `exact` prints counters unscaled (no K/M/G/T).
    `conn_table_size` is the number in the banner's "(size=N)", the connection hash
    table's bucket count. `sort=False` is --nosort: services in the order they were added
    and dests in list order (newest first). `service` (a key or Service) lists that
    service alone, without the banner, as `ipvsadm -L -t VIP:PORT` does; "No such service"
    if it is absent.

    `numeric=False` (plain -L) still prints numbers here: the admin client puts in the
    names (control/names.py), so that no look-up ever waits inside the daemon.
    """
    del numeric  # documented above: both forms print numbers
    variant = dict(stats=stats, rate=rate and not stats,
                   thresholds=thresholds and not (stats or rate),
                   persistent_conn=persistent_conn and not (stats or rate or thresholds),
                   tun_info=tun_info and not (stats or rate or thresholds or persistent_conn))
    out = []
    if service is not None:
        svc = table.get(service)
        if svc is None:
            key = service.key if isinstance(service, Service) else service_key(*service)
            raise ControlError("No such service", errno.ESRCH, key.option_text())
        services = [svc]
    else:
        out.append(f"IP Virtual Server version {IPVS_VERSION} (size={conn_table_size})\n")
        services = sorted_services(table) if sort else list(table)
    out.append(_title(**variant))
    for svc in services:
        out.extend(line + "\n" for line in _service_lines(svc, exact=exact, sort=sort,
                                                          **variant))
    return "".join(out)


def format_timeout(table: ServiceTable) -> str:
    """What `ipvsadm -L --timeout` prints."""
    t = table.timeouts
    return f"Timeout (tcp tcpfin udp): {t['tcp']} {t['tcpfin']} {t['udp']}\n"


class ConnEntry(NamedTuple):
    """One connection (or persistence template) as the connection listing shows it.

    `protocol` is a Proto or the kernel's name ("TCP", "UDP", "SCTP", "IP" for a template of
    a fwmark service); `state` the kernel's state name ("ESTABLISHED", "FIN_WAIT", "NONE",
    ...); `expires` the seconds left. `pe_name`/`pe_data` are shown only with
    persistent_conn and only when set.
    """

    protocol: object
    caddr: str
    cport: int
    vaddr: str
    vport: int
    daddr: str
    dport: int
    state: str
    expires: int
    pe_name: str | None = None
    pe_data: str | None = None


def format_conns(conns: Iterable, numeric: bool = True, persistent_conn: bool = False) -> str:
    """What `ipvsadm -L -c -n [--persistent-conn]` prints for `conns` (ConnEntry records
    or objects with the same attributes), in the order given: conn_header(), then
    conn_lines() of the entries as conn_row() puts them.

    Addresses and ports are numbers whatever `numeric` says: names are the admin
    client's business (control/names.py).
    """
    del numeric
    return conn_header(persistent_conn) + conn_lines(map(conn_row, conns), persistent_conn)


def conn_header(persistent_conn: bool = False) -> str:
    """The title lines of the connection listing; what it prints for no entries."""
    if persistent_conn:
        return ("IPVS connection entries\n"
                f"pro expire {'state':<11} {'source':<18} {'virtual':<18} "
                f"{'destination':<18} {'pe name':<16} pe_data\n")
    return ("IPVS connection entries\n"
            f"pro expire {'state':<11} {'source':<18} {'virtual':<18} destination\n")


def conn_row(c) -> tuple:
    """A ConnEntry (or an object with its attributes) as the row conn_lines() prints: the
    protocol as its label, every address in canonical text."""
    proto = c.protocol.label if isinstance(c.protocol, Proto) else str(c.protocol).upper()
    return (proto, str(ipaddress.ip_address(c.caddr)), c.cport,
            str(ipaddress.ip_address(c.vaddr)), c.vport, str(ipaddress.ip_address(c.daddr)),
            c.dport, c.state, int(c.expires), getattr(c, "pe_name", None),
            getattr(c, "pe_data", None))


def conn_lines(rows: Iterable, persistent_conn: bool = False) -> str:
    """The entry lines of the connection listing, without the title, in the order given: a
    listing made in slices is conn_header() followed by the conn_lines() of each slice.

    A row is a tuple (protocol label, caddr, cport, vaddr, vport, daddr, dport, state,
    expires seconds[, pe_name, pe_data]) with the addresses in canonical text, as the
    engine gives them (conn_row() makes one of a ConnEntry). Tuples and no re-parsing of
    addresses because a million entries go through here: this loop is the listing's cost.
    """
    out = []
    for row in rows:
        proto, caddr, cport, vaddr, vport, daddr, dport, state, expires = row[:9]
        minutes, seconds = divmod(expires, 60)
        expire = f"{minutes:02d}:{seconds:02d}"
        src = addrport(caddr, cport)
        virt = addrport(vaddr, vport)
        dst = addrport(daddr, dport)
        if persistent_conn and len(row) > 9 and row[9]:
            out.append(f"{proto:<3} {expire:<6} {state:<11} {src:<18} {virt:<18} {dst:<16} "
                       f"{row[9]:<18} {row[10] or ''}\n")
        else:
            out.append(f"{proto:<3} {expire:<6} {state:<11} {src:<18} {virt:<18} {dst}\n")
    return "".join(out)


__all__ = ["ConnEntry", "DEFAULT_CONN_TABLE_SIZE", "IPVS_VERSION", "conn_header", "conn_lines",
           "conn_row", "format_conns", "format_list", "format_timeout", "sched_flags_text",
           "sorted_dests", "sorted_services"]
