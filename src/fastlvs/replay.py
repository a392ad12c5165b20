"""`fastlvs replay`: run a pcap through the engine as the director would receive it and write
what the director would transmit. The same Engine and Director as the live daemon; only the
frames come from a file and the clock from the capture's timestamps.
"""
from __future__ import annotations

import ipaddress
import json
import sys
import time
from dataclasses import dataclass, field

import dpkt

from fastlvs import settings
from fastlvs.control.factory import build_director
from fastlvs.control.model import ControlError, NoRoute
from fastlvs.control.listing import format_list
from fastlvs.control.rules import RulesError, load_rules

# One frame per engine call: each frame is then fully handled (scheduled, bound, forwarded)
# before the next, the kernel's order of events, so a NAT reply or a later packet recorded
# right after a SYN finds its connection. The live path batches; a capture has no such need.
BATCH = 1


class ReplayError(Exception):
    """A bad argument or input file: the message is the one line the user sees."""


@dataclass
class ReplayOptions:
    rules: str
    input: str
    output: str
    local_ip: str | list[str]           # one address or one per family (IPv4, IPv6)
    local_mac: str
    neighbors: dict[str, str] = field(default_factory=dict)
    gateway: str | list[str] | None = None
    mtu: int = 1500
    stats: bool = False
    list_file: str | None = None
    capacity: int = 1 << 20


def parse_mac(text: str, what: str) -> bytes:
    """aa:bb:cc:dd:ee:ff (or with '-') -> 6 bytes; ReplayError naming `what` otherwise."""
    parts = text.replace("-", ":").split(":")
    try:
        if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
            raise ValueError
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ReplayError(f"{what}: not a MAC address: {text!r}") from None


def parse_ip(text: str, what: str) -> str:
    """An IPv4 or IPv6 address in its canonical spelling; ReplayError naming `what`."""
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise ReplayError(f"{what}: not an IP address: {text!r}") from None


def parse_neighbor(text: str) -> tuple[str, bytes]:
    """IP=MAC as --neighbor takes it (IPv6 as 2001:db8::1=MAC or [2001:db8::1]=MAC)."""
    ip, sep, mac = text.partition("=")
    if not sep:
        raise ReplayError(f"--neighbor: expected IP=MAC, got {text!r}")
    return parse_ip(ip, "--neighbor"), parse_mac(mac, "--neighbor")


def _per_family(values, what: str) -> dict[int, str]:
    """{4: addr, 6: addr} from one address or a list of them, at most one per family."""
    if values is None:
        return {}
    out: dict[int, str] = {}
    for v in [values] if isinstance(values, str) else values:
        ip = parse_ip(v, what)
        fam = ipaddress.ip_address(ip).version
        if fam in out:
            raise ReplayError(f"{what}: two IPv{fam} addresses ({out[fam]}, {ip}); "
                              f"give one per family")
        out[fam] = ip
    return out


def _nexthop_fn(neighbors: dict[str, bytes], gateways: dict[int, str]):
    gw_mac = {fam: neighbors.get(gw) for fam, gw in gateways.items()}

    def nexthop(ip: str):
        mac = neighbors.get(ip, gw_mac.get(ipaddress.ip_address(ip).version))
        if mac is None:
            raise NoRoute(f"no --neighbor for {ip} and no --gateway")
        return mac, 1
    return nexthop


def _open_pcap(path: str):
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise ReplayError(f"{path}: {e.strerror}") from None
    try:
        reader = dpkt.pcap.UniversalReader(fh)
    except (ValueError, dpkt.dpkt.Error) as e:
        fh.close()
        raise ReplayError(f"{path}: not a pcap or pcapng file ({e})") from None
    if reader.datalink() != dpkt.pcap.DLT_EN10MB:
        fh.close()
        raise ReplayError(f"{path}: link type {reader.datalink()} is not Ethernet")
    return fh, reader


def run(opts: ReplayOptions, out=sys.stdout) -> dict:
    """Replay `opts.input` into `opts.output`; return the counters (also printed as JSON
    when opts.stats). Raises ReplayError or RulesError for bad input, before any output
    file is written."""
    table = load_rules(opts.rules)
    locals_ = _per_family(opts.local_ip, "--local-ip")
    local_mac = parse_mac(opts.local_mac, "--local-mac")
    for name in ("mtu", "capacity"):
        problem = settings.setting(name).check(getattr(opts, name))
        if problem:
            raise ReplayError(problem)
    gateways = _per_family(opts.gateway, "--gateway")
    for gw in gateways.values():
        if gw not in opts.neighbors:
            raise ReplayError(f"--gateway {gw}: its MAC is unknown (add --neighbor {gw}=MAC)")
    director = build_director(_nexthop_fn(opts.neighbors, gateways),
                              capacity=opts.capacity, batch=BATCH,
                              local_ip=locals_.get(4, ""), local_mac=local_mac, mtu=opts.mtu)
    if 6 in locals_:
        director.set_local_ip6(locals_[6])
    for ip, mac in opts.neighbors.items():
        director.set_neighbor(ip, mac, 1)
    if 4 in gateways:
        director.set_gateway(opts.neighbors[gateways[4]], 1)
    if 6 in gateways:
        director.set_gateway6(opts.neighbors[gateways[6]], 1)
    try:
        director.load(table)
    except (NoRoute, ControlError) as e:
        raise ReplayError(f"{opts.rules}: {e}") from None

    fh, reader = _open_pcap(opts.input)
    started = time.perf_counter()
    n_in = n_out = 0
    try:
        with open(opts.output, "wb") as ofh:
            writer = dpkt.pcap.Writer(ofh, nano=True)
            frames, stamps = [], []

            def flush():
                nonlocal n_out
                for idx, _ifindex, data in director.process(frames, stamps):
                    writer.writepkt(data, ts=stamps[idx] / 1e9)
                    n_out += 1
                frames.clear()
                stamps.clear()

            try:
                for ts, buf in reader:
                    frames.append(buf)
                    # The capture's clock is the director's clock: timeouts replay as recorded.
                    stamps.append(int(round(float(ts) * 1e9)))
                    n_in += 1
                    if len(frames) == BATCH:
                        flush()
            except (dpkt.dpkt.NeedData, dpkt.dpkt.UnpackError, ValueError) as e:
                raise ReplayError(f"{opts.input}: truncated or corrupt after frame {n_in} ({e})") \
                    from None
            if frames:
                flush()
    except OSError as e:
        raise ReplayError(f"{opts.output}: {e.strerror}") from None
    finally:
        fh.close()
    elapsed = time.perf_counter() - started

    result = {"frames_in": n_in, "frames_out": n_out, "seconds": round(elapsed, 6),
              **director.counters()}
    if opts.list_file:
        director.pull_counters()
        try:
            with open(opts.list_file, "w") as lf:
                lf.write(format_list(director.table))
        except OSError as e:
            raise ReplayError(f"{opts.list_file}: {e.strerror}") from None
    if opts.stats:
        json.dump(result, out, indent=2, sort_keys=True)
        out.write("\n")
    return result


__all__ = ["ReplayError", "ReplayOptions", "RulesError", "parse_ip", "parse_mac",
           "parse_neighbor", "run"]
