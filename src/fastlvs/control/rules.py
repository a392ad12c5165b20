"""The ipvsadm-save / ipvsadm -R text format <-> ServiceTable: `iter_rules` and `parse_rules`
read it (each line a command of the ipvsadm language, ipvsadm.py), `load_rules` reads a file,
`dump_rules` writes what `ipvsadm -S -n` prints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from fastlvs.control.ipvsadm import (TABLE_COMMANDS, Command, CommandError, apply_command,
                                     describe, parse_command)
from fastlvs.control.model import ControlError, FwdMethod, ServiceTable, addrport


class RulesError(ValueError):
    """A rules file line that cannot be parsed or applied; str() is `FILE:LINE: reason`."""

    def __init__(self, filename: str, lineno: int, reason: str):
        self.filename = filename
        self.lineno = lineno
        self.reason = reason
        super().__init__(f"{filename}:{lineno}: {reason}")


# -- rules files -----------------------------------------------------------------------------
def iter_rules(text: str, filename: str = "-") -> Iterator[tuple[int, Command]]:
    """Yield (line number, Command) for each command line of a rules file.

    Lines are split on blanks; `#` starts a comment; blank lines are skipped, as is a
    leading "ipvsadm" word (as ipvsadm -R allows). Only table changes are accepted
    (-A -E -D -C -a -e -d -Z --set). RulesError names the file and line.
    """
    for lineno, raw in enumerate(text.splitlines(), 1):
        tokens = raw.split("#", 1)[0].split()
        if tokens and tokens[0] == "ipvsadm":
            tokens = tokens[1:]
        if not tokens:
            continue
        try:
            cmd = parse_command(tokens)
        except CommandError as e:
            raise RulesError(filename, lineno, str(e)) from None
        if cmd.name not in TABLE_COMMANDS:
            raise RulesError(filename, lineno, f"{cmd.flag} does not belong in a rules file "
                             f"(only -A -E -D -C -a -e -d -Z --set --mark-rule "
                             f"--del-mark-rules)")
        yield lineno, cmd


def parse_rules(text: str, filename: str = "-", table: ServiceTable | None = None
                ) -> ServiceTable:
    """Apply the commands of an ipvsadm-save/-R text, in order, to `table` (a new, empty
    ServiceTable by default) and return it.

    Stops at the first bad line with RulesError (`FILE:LINE: reason`); unlike ipvsadm -R,
    which carries on past lines the kernel refuses, nothing after it is applied. Each -a
    inserts its dest at the head of the list, as IPVS does, so dests end up newest first.
    """
    table = ServiceTable() if table is None else table
    for lineno, cmd in iter_rules(text, filename):
        try:
            apply_command(table, cmd)
        except ControlError as e:
            raise RulesError(filename, lineno, describe(cmd, e)) from None
    return table


def load_rules(path) -> ServiceTable:
    """parse_rules() of a file; errors name the file as given."""
    return parse_rules(Path(path).read_text(), filename=str(path))


def dump_rules(table: ServiceTable, numeric: bool = True, *, sort: bool = True,
               thresholds: bool = False) -> str:
    """The table as `ipvsadm-save -n` (ipvsadm -S -n) prints it.

    Per service `-A -t VIP:PORT -s SCHED [-p T [-M MASK]] [-o] [-b FLAGS]`, then its dests
    `-a -t VIP:PORT -r RIP:PORT -g|-m|-i -w W` (`--tun-type ipip` after a -i dest, as 1.31
    writes). Like ipvsadm: services and dests sorted by address and port, thresholds not
    written, -M only for a persistent service with a non-host mask.

    Order: ipvsadm sorts the dests, and restoring re-adds each at the list's head, so a
    save/restore round trip leaves the list in reverse sorted order whatever it was before
    (equal listings, possibly different rr/wrr turns). `sort=False` is fastlvs' exact form:
    services in the order they were added and each service's dests oldest first, so that
    parse_rules() rebuilds the same list order. `thresholds=True` appends `-x U -y L` to
    dests that have thresholds (ipvsadm -R reads them; ipvsadm -S never writes them).
    `numeric=False` prints numbers too: the admin client puts in names (control/names.py).
    """
    from fastlvs.control.listing import sched_flags_text, sorted_dests, sorted_services

    del numeric
    # fastlvs' firewall-mark match rules first (none: the file is ipvsadm's own)
    out = [f"--mark-rule {rule.text()}\n" for rule in table.marks]
    for svc in (sorted_services(table) if sort else list(table)):
        name = svc.key.option_text()
        line = f"-A {name} -s {svc.sched_name}"
        if svc.persistent:
            line += f" -p {svc.timeout}"
            if svc.af == 4 and svc.netmask != "255.255.255.255":
                line += f" -M {svc.netmask}"
            if svc.af == 6 and svc.netmask != 128:
                line += f" -M {svc.netmask}"
        if svc.ops:
            line += " -o"
        if svc.flags:                    # "-b " alone when no set bit has a name, as ipvsadm
            line += f" -b {sched_flags_text(svc)}"
        out.append(line + "\n")
        for d in (sorted_dests(svc) if sort else list(reversed(svc.dests))):
            line = f"-a {name} -r {addrport(d.addr, d.port)} {d.fwd.option} -w {d.weight}"
            if d.fwd is FwdMethod.TUN:
                # ipvsadm 1.31: a gue dest's port, and gue's and gre's checksum flag always
                line += f" --tun-type {d.tun_type}"
                if d.tun_type == "gue":
                    line += f" --tun-port {d.tun_port}"
                if d.tun_type != "ipip":
                    line += f" --tun-{d.tun_flags}"
            if thresholds and (d.u_threshold or d.l_threshold):
                line += f" -x {d.u_threshold} -y {d.l_threshold}"
            out.append(line + "\n")
    return "".join(out)


__all__ = ["RulesError", "dump_rules", "iter_rules", "load_rules", "parse_rules"]
