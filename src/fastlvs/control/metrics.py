"""`--metrics ADDR:PORT`: the director's state as Prometheus text on HTTP GET /metrics.

`Metrics` is the registry of collectors a scrape asks, by name ("ipvs", "fastlvs", "process";
later work adds its own: health-check states, sync lag, offloaded entries). `IpvsCollector`
speaks node_exporter's ipvs collector (its names, types, help and labels, so IPVS dashboards
work unchanged); `FastlvsCollector` adds the engine's own counters. `MetricsServer` serves HTTP
from the daemon's loop, non-blocking and bounded like the control socket; the loop only copies
numbers (a snapshot), and one worker thread, which never sees the director, makes the text.
"""
from __future__ import annotations

import errno
import gc
import gzip
import logging
import select
import socket
import threading
import time
from typing import Callable, Iterable

from prometheus_client import ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fastlvs import __version__
from fastlvs.engine import contract

log = logging.getLogger("fastlvs.metrics")

# -- node_exporter's ipvs collector (collector/ipvs_linux.go, node_exporter 1.12.1) ------------
# Names, help and label order as it declares them. It reads /proc/net/ip_vs_stats (the totals)
# and /proc/net/ip_vs (one row per real server): TCP/UDP services have local_mark "", an fwmark
# service would have local_address "", local_port "0", proto "FWM" and local_mark the mark as
# /proc/net/ip_vs prints it (%08X); fastlvs has no fwmark services yet.
BACKEND_LABELS = ("local_address", "local_port", "remote_address", "remote_port", "proto",
                  "local_mark")
IPVS_TOTALS = (     # (metric, help, the Director.totals() field)
    ("node_ipvs_connections_total", "The total number of connections made.", "conns"),
    ("node_ipvs_incoming_packets_total", "The total number of incoming packets.", "inpkts"),
    ("node_ipvs_outgoing_packets_total", "The total number of outgoing packets.", "outpkts"),
    ("node_ipvs_incoming_bytes_total", "The total amount of incoming data.", "inbytes"),
    ("node_ipvs_outgoing_bytes_total", "The total amount of outgoing data.", "outbytes"),
)
IPVS_BACKEND = (    # (metric, help, the Dest attribute)
    ("node_ipvs_backend_connections_active",
     "The current active connections by local and remote address.", "activeconns"),
    ("node_ipvs_backend_connections_inactive",
     "The current inactive connections by local and remote address.", "inactconns"),
    ("node_ipvs_backend_weight",
     "The current backend weight by local and remote address.", "weight"),
)

# -- fastlvs's own: the engine's counters (contract.COUNTER_NAMES) by what they count ----------
ENGINE_FRAMES = ("rx", "tx", "passed")
ENGINE_DROPS = ("malformed", "bad_checksum", "table_full", "tcp_not_syn", "no_dest",
                "dest_unavailable", "no_route", "no_headroom", "oversize", "callback_error",
                "ttl_exceeded", "frag_needed_sent", "frag_bad", "frag_no_room", "drop_packet")
ENGINE_HOST = ("not_ip", "no_service", "fragment")
# every other engine counter (conns_created, frag_reasm, ... and any added later) is an event
PORT_FRAMES = ("rx", "tx")
PORT_DROPS = ("tx_ring_full", "tx_oversize", "fill_empty", "rx_dropped", "rx_ring_full",
              "rx_fill_ring_empty_descs", "rx_invalid_descs", "tx_invalid_descs")
_PORT_NOT_COUNTERS = ("backend", "queues", "umem_frame_size")


def _counter(name, doc, labels=()):
    return CounterMetricFamily(name, doc, labels=list(labels))


def _gauge(name, doc, labels=()):
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _paced(rows, every: int = 64):
    """`rows`, letting the interpreter lock go every `every` of them: families are made in
    the worker thread, and the daemon's loop must not wait a whole table for the lock."""
    for i, row in enumerate(rows):
        if i and i % every == 0:
            time.sleep(0)
        yield row


def backend_labels(svc, dest) -> tuple[str, ...]:
    """node_exporter's label values of one real server of one service, in BACKEND_LABELS
    order."""
    if svc.proto.value == "fwm":
        # as node_exporter labels a fwmark service read from /proc/net/ip_vs: no address,
        # port 0, the mark in local_mark
        return ("", "0", dest.addr, str(dest.port), "FWM", str(svc.vport))
    return (svc.vaddr, str(svc.vport), dest.addr, str(dest.port), svc.proto.label, "")


class DirectorCollector:
    """A collector of a Director's state in two halves: `snapshot()` reads the director
    (call it from the thread that runs the engine; it copies numbers, cheap) and
    `families(snap)` makes the metric families from that copy alone (any thread).
    `collect()` is both at once: prometheus_client's Collector protocol."""

    def __init__(self, director):
        self.director = director

    def snapshot(self):
        raise NotImplementedError

    def families(self, snap) -> Iterable:
        raise NotImplementedError

    def collect(self) -> Iterable:
        return self.families(self.snapshot())


class IpvsCollector(DirectorCollector):
    """node_exporter's ipvs metrics: the totals of /proc/net/ip_vs_stats
    (Director.totals(): deleted services included, zeroed by -Z of everything) and, per real
    server of every service, active and inactive connections and weight."""

    def snapshot(self):
        d = self.director
        d.pull_counters()
        attrs = [a for _, _, a in IPVS_BACKEND]
        return d.totals(), [(backend_labels(svc, dest), *(getattr(dest, a) for a in attrs))
                            for svc in d.table for dest in svc.dests]

    def families(self, snap) -> Iterable:
        totals, rows = snap
        for name, doc, field in IPVS_TOTALS:
            fam = _counter(name, doc)
            fam.add_metric([], totals[field])
            yield fam
        fams = [_gauge(name, doc, BACKEND_LABELS) for name, doc, _ in IPVS_BACKEND]
        for labels, *values in _paced(rows):
            for fam, v in zip(fams, values):
                fam.add_metric(labels, v)
        yield from fams


_BACKEND_COUNTERS = (   # fastlvs_backend_<what>_total, help, the Dest attribute
    ("connections", "Connections scheduled to a real server", "conns"),
    ("incoming_packets", "Packets from clients to a real server", "inpkts"),
    ("outgoing_packets", "Packets from a real server to clients (NAT)", "outpkts"),
    ("incoming_bytes", "Bytes (IP lengths) from clients to a real server", "inbytes"),
    ("outgoing_bytes", "Bytes (IP lengths) from a real server to clients (NAT)", "outbytes"),
)


class FastlvsCollector(DirectorCollector):
    """fastlvs's own metrics: every engine counter (frames, drops by reason, frames left to
    the host, events), the per-ring counters of every interface the daemon runs rings on,
    the connection table's entries and capacity, and per real server the
    `ipvsadm -Ln --stats` counters under node_exporter's labels."""

    def snapshot(self):
        c = self.director.counters()            # pulls the model's counters too
        attrs = [a for _, _, a in _BACKEND_COUNTERS] + ["persistconns", "overloaded"]
        rows = [(backend_labels(svc, dest), *(int(getattr(dest, a)) for a in attrs))
                for svc in self.director.table for dest in svc.dests]
        ports = {ifname: {k: v for k, v in st.items() if k != "queues"}
                 for ifname, st in (c.get("ports") or {}).items()}
        return dict(c["engine"]), c["conn_entries"], c["conn_capacity"], rows, ports

    def families(self, snap) -> Iterable:
        engine, entries, capacity, rows, ports = snap
        yield from self._engine(engine)
        fam = _gauge("fastlvs_conn_entries",
                     "Connection table entries in use (connections and persistence "
                     "templates, expired but not yet swept included).")
        fam.add_metric([], entries)
        yield fam
        fam = _gauge("fastlvs_conn_capacity", "Connection table entries allocated at start.")
        fam.add_metric([], capacity)
        yield fam
        yield from self._backends(rows)
        yield from self._ports(ports)
        fam = _gauge("fastlvs_build_info", "The running fastlvs's version.", ["version"])
        fam.add_metric([__version__], 1)
        yield fam

    @staticmethod
    def _engine(st: dict) -> Iterable:
        frames = _counter("fastlvs_engine_frames_total",
                          "Frames through the engine: rx read from the rings, tx sent, passed "
                          "left to the host's stack.", ["counter"])
        drops = _counter("fastlvs_engine_drops_total",
                         "Packets the engine did not forward, by reason (its counter names, "
                         "as `fastlvs admin --counters` prints them); ttl_exceeded and "
                         "frag_needed_sent were answered with ICMP.", ["reason"])
        host = _counter("fastlvs_engine_host_frames_total",
                        "Frames left to the host's stack as not the director's to forward, "
                        "by reason.", ["reason"])
        events = _counter("fastlvs_engine_events_total",
                          "The engine's other counters by name: conns_created, conns_expired, "
                          "csum_completed, drop_entry (entries the flood defence dropped), "
                          "frag_held, frag_reasm, frag_timeout, frag_out, ...", ["event"])
        for name in contract.COUNTER_NAMES:
            value = st.get(name, 0)
            if name in ENGINE_FRAMES:
                frames.add_metric([name], value)
            elif name in ENGINE_DROPS:
                drops.add_metric([name], value)
            elif name in ENGINE_HOST:
                host.add_metric([name], value)
            else:
                events.add_metric([name], value)
        return frames, drops, host, events

    @staticmethod
    def _backends(rows) -> Iterable:
        # the model's counters as -Ln --stats shows them (-Z too)
        fams = [_counter(f"fastlvs_backend_{what}_total",
                         f"{text} (ipvsadm -Ln --stats; -Z zeroes it).", BACKEND_LABELS)
                for what, text, _ in _BACKEND_COUNTERS]
        fams.append(_gauge("fastlvs_backend_persistent_connections",
                           "Persistence templates pointing at a real server.", BACKEND_LABELS))
        fams.append(_gauge("fastlvs_backend_overloaded",
                           "1 while a real server is overloaded (-x upper threshold reached, "
                           "until -y).", BACKEND_LABELS))
        for labels, *values in _paced(rows, 16):
            for fam, v in zip(fams, values):
                fam.add_metric(labels, v)
        return fams

    @staticmethod
    def _ports(ports: dict) -> Iterable:
        frames = _counter("fastlvs_port_frames_total",
                          "Frames received (rx) and sent (tx) on an interface's rings, summed "
                          "over its RX queues.", ["interface", "counter"])
        drops = _counter("fastlvs_port_drops_total",
                         "Frames lost at an interface's rings, by reason: ours (tx_ring_full, "
                         "fill_empty, tx_oversize) and, for AF_XDP, the kernel's socket "
                         "counters (rx_ring_full: the daemon was behind).",
                         ["interface", "reason"])
        events = _counter("fastlvs_port_events_total",
                          "An interface's other ring counters: wakeups (syscalls to kick the "
                          "kernel), tx_copies, and the XDP steering program's redirected and "
                          "passed.", ["interface", "event"])
        info = _gauge("fastlvs_port_info", "The rings the daemon runs on an interface.",
                      ["interface", "backend"])
        for ifname, st in sorted(ports.items()):
            info.add_metric([ifname, str(st.get("backend", ""))], 1)
            for key, value in st.items():
                if key in _PORT_NOT_COUNTERS or isinstance(value, bool) \
                        or not isinstance(value, int):
                    continue
                if key in PORT_FRAMES:
                    frames.add_metric([ifname, key], value)
                elif key in PORT_DROPS:
                    drops.add_metric([ifname, key], value)
                else:
                    events.add_metric([ifname, key], value)
        return frames, drops, events, info


class Metrics:
    """The collectors a scrape asks, by name, in the order registered. Later work registers
    its own under its name, exporting fastlvs_<name>_* ("health": checker states, "sync":
    sync lag, "offload": offloaded entries).

    A scrape is two steps so that the daemon's loop pays only for copying numbers:
    `snapshot()`, in the thread that runs the engine, asks each collector that has a
    `snapshot()` method (a DirectorCollector) for its copy of the state; `render(snap)`,
    in any thread, makes the text from those copies, calling `families(copy)` of those
    collectors and `collect()` of plain prometheus_client collectors (which must then be
    safe to call from another thread: the process collector reads /proc/self).

    A collector that raises costs only its own families: the scrape carries the others, and
    `fastlvs_scrape_collector_success{collector}` (0) and
    `fastlvs_scrape_collector_duration_seconds{collector}` say which, as node_exporter's
    node_scrape_collector_* do; its traceback is logged when it starts failing."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._collectors: dict[str, object] = {}
        self._failing: set[str] = set()
        self._clock = clock

    def register(self, name: str, collector) -> None:
        """Add `collector` under `name`; ValueError if the name is taken."""
        if name in self._collectors:
            raise ValueError(f"a metrics collector named {name!r} is already registered")
        self._collectors[name] = collector

    def unregister(self, name: str) -> None:
        """Remove the collector `name` (absent: a no-op)."""
        self._collectors.pop(name, None)

    def names(self) -> list[str]:
        return list(self._collectors)

    def snapshot(self) -> dict:
        """{name: (seconds taken, the collector's copy, or the exception it raised)} for
        the collectors with a snapshot() (call from the thread that runs the engine)."""
        out = {}
        for name, collector in list(self._collectors.items()):
            if hasattr(collector, "snapshot"):
                t0 = self._clock()
                try:
                    copy = collector.snapshot()
                except Exception as e:
                    copy = e
                out[name] = (self._clock() - t0, copy)
        return out

    def _families(self, snap: dict) -> Iterable:
        ok = _gauge("fastlvs_scrape_collector_success",
                    "1 if the collector's part of this scrape succeeded.", ["collector"])
        took = _gauge("fastlvs_scrape_collector_duration_seconds",
                      "Time the collector's part of this scrape took (its copy of the "
                      "state in the daemon's loop, and making its metrics).", ["collector"])
        for name, collector in list(self._collectors.items()):
            if name not in snap and hasattr(collector, "snapshot"):
                continue        # registered after the snapshot: its turn is the next scrape
            t0 = self._clock()
            before, copy = snap.get(name, (0.0, None))
            try:
                if isinstance(copy, Exception):
                    raise copy
                if name in snap:
                    families = list(collector.families(copy))
                else:
                    families = list(collector.collect())
            except Exception:
                if name not in self._failing:
                    log.exception("metrics: collector %s failed", name)
                self._failing.add(name)
                families = []
                ok.add_metric([name], 0)
            else:
                self._failing.discard(name)
                ok.add_metric([name], 1)
            took.add_metric([name], before + self._clock() - t0)
            yield from families
        yield ok
        yield took

    def render(self, snap: dict | None = None) -> bytes:
        """The text exposition (format 0.0.4) of every collector, from `snap` (None: a
        snapshot taken now, in this thread). Made a slice of samples at a time, with the
        interpreter lock let go between slices: the daemon's loop, in the other thread,
        waits for it a slice at most, not the interpreter's 5 ms switch interval."""
        # The render's objects (a tuple and a dict per sample) die by reference count; left
        # on, the cyclic collector ran full collections over them that held the lock for
        # 90-110 ms at 10,000 backends (18-23 ms with it off). Renders are one at a time.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return encode(self._families(self.snapshot() if snap is None else snap))
        finally:
            if was_enabled:
                gc.enable()


ENCODE_SLICE = 128      # samples encoded between two yields of the interpreter lock


def encode(families: Iterable) -> bytes:
    """generate_latest's text of `families`, made ENCODE_SLICE samples at a time with the
    interpreter lock let go in between (the same bytes as one generate_latest call)."""
    out = []
    for fam in families:
        samples = fam.samples
        for i in range(0, max(len(samples), 1), ENCODE_SLICE):
            part = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            part.samples = samples[i:i + ENCODE_SLICE]
            text = generate_latest(_Families([part]))
            if i:
                text = text.split(b"\n", 2)[2]      # HELP and TYPE are said once
            out.append(text)
            time.sleep(0)
    return b"".join(out)


class _Families:
    def __init__(self, families):
        self._families = families

    def collect(self):
        return self._families


class HealthCollector:
    """fastlvs_health_*: the health checks of a keepalived.conf (`policy`, control/health.py's
    HealthPolicy: what `fastlvs admin --health` lists): each checker's and each real
    server's state, and each virtual server's quorum and live weight. Halves as in
    DirectorCollector: snapshot() in the loop's thread, families() anywhere."""

    def __init__(self, policy):
        self.policy = policy

    def snapshot(self):
        return self.policy.status(ask_checkers=False)

    def collect(self) -> Iterable:
        return self.families(self.snapshot())

    def families(self, snap) -> Iterable:
        checker = _gauge("fastlvs_health_checker_up", "1 while a checker says its real "
                         "server is up", ["service", "server", "checker", "target"])
        server = _gauge("fastlvs_health_server_up", "1 while every checker of a real server "
                        "says up", ["service", "server"])
        quorum = _gauge("fastlvs_health_quorum_up", "1 while a virtual server has its quorum",
                        ["service"])
        live = _gauge("fastlvs_health_live_weight", "Sum of the weights of the real servers "
                      "that are up (what the quorum is compared with)", ["service"])
        for v in snap["services"]:
            quorum.add_metric([v["service"]], int(v["quorum_up"]))
            live.add_metric([v["service"]], v["live_weight"])
            for s in v["servers"]:
                server.add_metric([v["service"], s["server"]], int(s["up"]))
                for c in s["checkers"]:
                    checker.add_metric([v["service"], s["server"], c["checker"], c["target"]],
                                       int(c["up"]))
        yield from (checker, server, quorum, live)


class SyncCollector:
    """fastlvs_sync_*: the IPVS sync daemons (sync/daemon.py's SyncDaemons) and the engine's
    sync counters (Director.sync_stats()): messages, entries and bytes sent and received,
    drops by reason, send errors, which daemons run and how far behind they are. Halves as
    in DirectorCollector: snapshot() in the loop's thread, families() anywhere."""

    def __init__(self, sync):
        self.sync = sync

    def snapshot(self):
        return {"daemons": self.sync.stats(), "engine": self.sync.director.sync_stats()}

    def collect(self) -> Iterable:
        return self.families(self.snapshot())

    def families(self, snap) -> Iterable:
        d, e = snap["daemons"], snap["engine"]
        running = _gauge("fastlvs_sync_daemon_running", "1 while the sync daemon of this "
                         "state runs (ipvsadm -L --daemon)", ["state"])
        messages = _counter("fastlvs_sync_messages", "Sync messages (datagrams) multicast "
                            "by the master and read by the backup", ["direction"])
        entries = _counter("fastlvs_sync_entries", "Connection entries (conns and "
                           "templates) in the sync messages sent and received", ["direction"])
        nbytes = _counter("fastlvs_sync_bytes", "UDP payload bytes of the sync messages sent "
                          "and received", ["direction"])
        installed = _counter("fastlvs_sync_conns", "What the backup did with the entries it "
                             "received: a new conn installed, or one it had updated",
                             ["result"])
        drops = _counter("fastlvs_sync_dropped", "Sync messages or entries dropped, by "
                         "reason (the decoder's reasons, refused entries, a full send "
                         "queue)", ["reason"])
        errors = _counter("fastlvs_sync_send_errors", "Sync messages the master's socket "
                          "refused (the message is lost; the daemon goes on)")
        rerrors = _counter("fastlvs_sync_receive_errors", "Errors reading the backup's "
                           "socket")
        lag = _gauge("fastlvs_sync_lag_seconds", "master: age of the oldest sync message "
                     "waiting to be sent (0 when none waits); backup: time since the last "
                     "message arrived (since its start when none has)", ["state"])
        queued = _gauge("fastlvs_sync_queued_messages", "Sync messages made by the engine "
                        "or waiting for room in the socket, not yet sent")
        for state in ("master", "backup"):
            running.add_metric([state], d.get(f"{state}_running", 0))
        messages.add_metric(["sent"], d.get("sent_messages", 0))
        messages.add_metric(["received"], d.get("received_messages", 0))
        nbytes.add_metric(["sent"], d.get("sent_bytes", 0))
        nbytes.add_metric(["received"], d.get("received_bytes", 0))
        entries.add_metric(["sent"], e.get("sent_conns", 0))
        entries.add_metric(["received"], e.get("received_conns", 0))
        installed.add_metric(["installed"], e.get("installed", 0))
        installed.add_metric(["updated"], e.get("updated", 0))
        for key, value in sorted(e.items()):
            if key.startswith(("drop_", "skip_", "refused_")):
                drops.add_metric([key], value)
        drops.add_metric(["queue_overflow"], e.get("queue_overflow", 0))
        drops.add_metric(["send_buffer_full"], d.get("send_dropped", 0))
        errors.add_metric([], d.get("send_errors", 0))
        rerrors.add_metric([], d.get("receive_errors", 0))
        for state in ("master", "backup"):
            if f"{state}_lag_ns" in d:
                lag.add_metric([state], d[f"{state}_lag_ns"] / 1e9)
        queued.add_metric([], e.get("queued", 0) + d.get("master_pending", 0))
        yield from (running, messages, entries, nbytes, installed, drops, errors, rerrors,
                    lag, queued)


class OffloadCollector:
    """fastlvs_offload_*: the XDP offload's map (Engine.offload_stats()): connections in it
    now, put in and taken out, frames the program forwarded as last read back, failed map
    calls, and the map's size. Halves as in DirectorCollector."""

    def __init__(self, engine):
        self.engine = engine

    def snapshot(self):
        return self.engine.offload_stats()

    def collect(self) -> Iterable:
        return self.families(self.snapshot())

    def families(self, st) -> Iterable:
        enabled = _gauge("fastlvs_offload_enabled", "1 while established connections are "
                         "forwarded by the XDP program (--offload)")
        entries = _gauge("fastlvs_offload_entries", "Connections in the offload map now")
        size = _gauge("fastlvs_offload_map_entries_max", "The offload flow table's slots "
                      "(4 per connection entry of --capacity: at most half full)")
        moved = _counter("fastlvs_offload_conns", "Connections put in and taken out of the "
                         "offload map", ["event"])
        frames = _counter("fastlvs_offload_frames", "Frames the XDP program forwarded itself "
                          "(as last read back)")
        errors = _counter("fastlvs_offload_map_errors", "Offload map calls the kernel "
                          "refused (reading the program's counters back)")
        enabled.add_metric([], int(bool(st.get("enabled"))))
        entries.add_metric([], max(0, st.get("installed", 0) - st.get("removed", 0)))
        size.add_metric([], st.get("max_entries", 0))
        moved.add_metric(["installed"], st.get("installed", 0))
        moved.add_metric(["removed"], st.get("removed", 0))
        frames.add_metric([], st.get("frames", 0))
        errors.add_metric([], st.get("errors", 0))
        yield from (enabled, entries, size, moved, frames, errors)


def director_metrics(director) -> Metrics:
    """The registry of a director: node_exporter's ipvs metrics, fastlvs's own, and the
    process's (CPU, memory, open files: prometheus_client's process collector)."""
    m = Metrics()
    m.register("ipvs", IpvsCollector(director))
    m.register("fastlvs", FastlvsCollector(director))
    m.register("process", ProcessCollector(registry=None))
    return m


# -- the HTTP side ---------------------------------------------------------------------------
MAX_CLIENTS = 64            # connections held at once; past it the oldest idle one is dropped
MAX_REQUEST = 8192          # bytes of request line and headers
REQUEST_SECONDS = 5.0       # from accept to a complete request
RENDER_SECONDS = 20.0       # for the worker to make the text, once the request is in
WRITE_SECONDS = 30.0        # to take the whole answer
DRAIN_SECONDS = 2.0         # for the client to close once it has the whole answer
ACCEPT_BURST = 16           # connections accepted per turn of the loop
CACHE_SECONDS = 1.0         # a scrape within this long of the last one gets the same text
_RECV = 4096
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}
_INDEX = b"fastlvs: metrics at /metrics\n"
# The classic text format, which every Prometheus (and node_exporter's answer to a text
# scrape) speaks; prometheus_client's newer default names version 1.0.0, unknown to older ones.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


ASKING, WAITING, WRITING, DRAINING = 0, 1, 2, 3     # a connection's states, in order


class _Client:
    __slots__ = ("sock", "rbuf", "wbuf", "deadline", "state", "since", "head_only", "gzip")

    def __init__(self, sock: socket.socket, now: float):
        self.sock = sock
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.since = now
        self.deadline = now + REQUEST_SECONDS
        self.state = ASKING
        self.head_only = False
        self.gzip = False           # the client takes gzip (Prometheus always does)


def _takes_gzip(head: bytes) -> bool:
    """Whether a request's Accept-Encoding takes gzip (not with q=0)."""
    for line in head.split(b"\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() != b"accept-encoding":
            continue
        for item in value.lower().split(b","):
            coding, _, params = item.partition(b";")
            if coding.strip() in (b"gzip", b"*"):
                q = params.strip().replace(b" ", b"")
                if not q.startswith(b"q="):
                    return True
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
    return False


class _Worker:
    """One thread that makes the text of snapshots, one at a time. It is handed a snapshot
    (plain numbers the loop copied) and the registry's render(); it never touches the
    director, so the engine stays the loop's alone."""

    def __init__(self):
        self._cv = threading.Condition()
        self._job = None
        self._result = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, render: Callable, snap) -> None:
        with self._cv:
            self._job, self._result = (render, snap), None
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fastlvs-metrics",
                                                daemon=True)
                self._thread.start()
            self._cv.notify()

    def result(self):
        """None while busy (or idle), else (True, body) or (False, the exception)."""
        with self._cv:
            r, self._result = self._result, None
            return r

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._job is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                (render, snap), self._job = self._job, None
            try:
                out = (True, render(snap))
            except Exception as e:       # a bug must not take the daemon down
                log.exception("metrics: rendering failed")
                out = (False, e)
            with self._cv:
                self._result = out

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(5)


class MetricsServer:
    """HTTP/1.x on a TCP socket, serviced from the daemon's loop: `handle_ready()` accepts,
    reads and writes whatever is ready without blocking, and returns. GET (or HEAD)
    /metrics answers the text of `source` (a Metrics: its snapshot() is taken in the loop,
    its render(snapshot) made by a worker thread and sent on a later turn), / a pointer to
    it, other paths 404, other methods 405, a malformed request 400; every answer closes
    its connection.

    Bounded whatever clients do: a request must be complete within REQUEST_SECONDS and
    MAX_REQUEST bytes (431 past it), an answer taken within WRITE_SECONDS; at most
    MAX_CLIENTS connections are held (a new one pushes out the oldest of those that have
    their whole answer, else of those still asking, else the oldest of all), and
    ACCEPT_BURST accepted per call. One snapshot is taken per `cache_seconds` at most, and
    clients asking meanwhile get the same text, so clients asking in a loop cost the loop
    nothing more.

    `MetricsServer(source, host, port)` binds at once: OSError (EADDRINUSE, EADDRNOTAVAIL)
    with the address in its message. `source` may be set later (503 until then).
    """

    def __init__(self, source, host: str, port: int, *,
                 cache_seconds: float = CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.source = source
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._listen = self._bind(host, port)
        self.address = self._listen.getsockname()[:2]
        self._clients: dict[int, _Client] = {}
        self._body: bytes | None = None
        self._body_at = 0.0
        self._rendering_at: float | None = None     # when the snapshot being rendered was taken
        self._worker = _Worker()
        self.scrapes = 0             # snapshots taken (scrapes not answered from the cache)
        self._ep = select.epoll()
        self._ep.register(self._listen.fileno(), select.EPOLLIN)

    @staticmethod
    def _bind(host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # a restarted daemon must not wait for its old connections' TIME_WAIT
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
        except OSError as e:
            sock.close()
            where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
            raise OSError(e.errno, f"{where}: {e.strerror}") from None
        sock.setblocking(False)
        return sock

    def fileno(self) -> int:
        """A descriptor that polls readable whenever handle_ready() has work."""
        return self._ep.fileno()

    @property
    def clients(self) -> int:
        return len(self._clients)

    def handle_ready(self) -> int:
        """Service every connection that is ready now, without blocking, send the text the
        worker finished, and drop connections past their deadline; returns the number of
        requests taken in or answered."""
        now = self._clock()
        answered = 0
        if self._rendering_at is not None:
            answered += self._rendered(now)
        for fd, events in self._ep.poll(0):
            if fd == self._listen.fileno():
                self._accept(now)
                continue
            c = self._clients.get(fd)
            if c is None:
                continue
            if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                answered += self._read(c, now)
            if fd in self._clients and c.wbuf:
                self._write(c, now)
        if self._clients:
            for c in [c for c in self._clients.values() if now >= c.deadline]:
                self._drop(c)
        return answered

    def close(self) -> None:
        """Disconnect every client and stop listening."""
        for c in list(self._clients.values()):
            self._drop(c)
        if self._listen.fileno() >= 0:
            self._ep.unregister(self._listen.fileno())
            self._listen.close()
        self._ep.close()
        self._worker.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- connections -------------------------------------------------------------------------
    def _accept(self, now: float) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                sock, _ = self._listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:         # EMFILE and the like: try again on the next turn
                log.warning("metrics: accept: %s", e.strerror)
                return
            if len(self._clients) >= MAX_CLIENTS:
                # a flood of connections may push out a slow scraper, never wedge the port
                self._drop(min(self._clients.values(),
                               key=lambda c: (c.state not in (DRAINING, ASKING),
                                              c.state != DRAINING, c.since)))
            sock.setblocking(False)
            c = _Client(sock, now)
            self._clients[sock.fileno()] = c
            self._ep.register(sock.fileno(), select.EPOLLIN)

    def _read(self, c: _Client, now: float) -> int:
        try:
            data = c.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            self._drop(c)
            return 0
        if not data:                     # the client is gone (or done reading our answer)
            self._drop(c)
            return 0
        if c.state != ASKING:
            return 0                     # anything after the request is not read
        c.rbuf += data
        end = c.rbuf.find(b"\r\n\r\n")
        if end < 0:
            end = c.rbuf.find(b"\n\n")
        if end < 0:
            if len(c.rbuf) > MAX_REQUEST:
                self._answer(c, now, 431, b"request too large\n")
                return 1
            return 0
        if end > MAX_REQUEST:
            self._answer(c, now, 431, b"request too large\n")
            return 1
        self._request(c, now, bytes(c.rbuf[:end]))
        return 1

    def _request(self, c: _Client, now: float, head: bytes) -> None:
        line = head.split(b"\n", 1)[0].rstrip(b"\r")
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[1]:
            self._answer(c, now, 400, b"bad request\n")
            return
        method, target, _ = parts
        if method not in (b"GET", b"HEAD"):
            self._answer(c, now, 405, b"only GET\n", extra=b"Allow: GET, HEAD\r\n")
            return
        head_only = method == b"HEAD"
        c.gzip = _takes_gzip(head)
        path = target.split(b"?", 1)[0]
        if path == b"/metrics":
            self._scrape(c, now, head_only)
        elif path == b"/":
            self._answer(c, now, 200, _INDEX, head_only=head_only)
        else:
            self._answer(c, now, 404, b"not found: try /metrics\n", head_only=head_only)

    def _scrape(self, c: _Client, now: float, head_only: bool) -> None:
        c.head_only = head_only
        if self.source is None:
            self._answer(c, now, 503, b"not serving yet\n", head_only=head_only)
            return
        if self._body is not None and now - self._body_at < self.cache_seconds:
            self._answer_text(c, now, self._body)
            return
        c.state = WAITING
        c.deadline = now + RENDER_SECONDS
        self._ep.modify(c.sock.fileno(), select.EPOLLIN)     # to see it hang up meanwhile
        if self._rendering_at is None:
            try:
                snap = self.source.snapshot()
            except Exception:            # a bug must not take the daemon down
                log.exception("metrics: snapshot failed")
                self._answer_waiting(now, 500, b"metrics failed; see the daemon's log\n")
                return
            self.scrapes += 1
            self._rendering_at = now
            self._worker.submit(self._make, snap)

    def _make(self, snap) -> tuple[bytes, bytes]:
        # in the worker: the text, and its gzip for the clients that take it
        text = self.source.render(snap)
        return text, gzip.compress(text, compresslevel=6, mtime=0)

    def _rendered(self, now: float) -> int:
        result = self._worker.result()
        if result is None:
            return 0
        ok, body = result
        at, self._rendering_at = self._rendering_at, None
        if not ok:
            return self._answer_waiting(now, 500, b"metrics failed; see the daemon's log\n")
        self._body, self._body_at = body, at
        return self._answer_waiting(now, 200, body)

    def _answer_waiting(self, now: float, status: int, body) -> int:
        waiting = [c for c in self._clients.values() if c.state == WAITING]
        for c in waiting:
            if status == 200:
                self._answer_text(c, now, body)
            else:
                self._answer(c, now, status, body, head_only=c.head_only)
        return len(waiting)

    def _answer_text(self, c: _Client, now: float, body: tuple[bytes, bytes]) -> None:
        text, packed = body
        if c.gzip:
            self._answer(c, now, 200, packed, CONTENT_TYPE, c.head_only,
                         extra=b"Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n")
        else:
            self._answer(c, now, 200, text, CONTENT_TYPE, c.head_only,
                         extra=b"Vary: Accept-Encoding\r\n")

    def _answer(self, c: _Client, now: float, status: int, body: bytes,
                ctype: str = "text/plain; charset=utf-8", head_only: bool = False,
                extra: bytes = b"") -> None:
        head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode() + extra
        c.wbuf += head + b"\r\n" + (b"" if head_only else body)
        c.rbuf.clear()
        c.state = WRITING
        c.deadline = now + WRITE_SECONDS
        self._write(c, now)

    def _write(self, c: _Client, now: float) -> None:
        while c.wbuf:
            try:
                n = c.sock.send(c.wbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(c)
                return
            del c.wbuf[:n]
        fd = c.sock.fileno()
        if c.wbuf:
            self._ep.modify(fd, select.EPOLLOUT)
            return
        # All of it is with the kernel. Closing now with unread bytes from the client would
        # reset the connection and could lose the answer's tail: say we are done and wait
        # (until the deadline) for the client to close its side.
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(c)
            return
        c.state = DRAINING
        c.deadline = min(c.deadline, now + DRAIN_SECONDS)
        self._ep.modify(fd, select.EPOLLIN)

    def _drop(self, c: _Client) -> None:
        fd = c.sock.fileno()
        if self._clients.pop(fd, None) is not None:
            try:
                self._ep.unregister(fd)
            except OSError as e:          # pragma: no cover - closed under us
                if e.errno != errno.ENOENT:
                    raise
        c.sock.close()


__all__ = ["BACKEND_LABELS", "FastlvsCollector", "HealthCollector", "IpvsCollector", "Metrics",
           "MetricsServer", "OffloadCollector", "SyncCollector", "backend_labels",
           "director_metrics"]
