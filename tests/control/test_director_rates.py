"""Director.tick: ip_vs_est.c's estimator, step by step, over a stand-in engine whose
counters the test sets (no build needed): the 2 s interval, the 1/4-weight average and its
rounding, late steps, -Z, and dests that come and go."""
from __future__ import annotations

from fastlvs.control.director import Director
from fastlvs.control.model import STAT_FIELDS
from fastlvs.control.ipvsadm import parse_command


class FakeEngine:
    def __init__(self):
        self.svc = {}
        self.dest = {}

    def set_scheduler_callback(self, fn):
        pass

    def set_service(self, sid, *a, **k):
        self.svc.setdefault(sid, dict.fromkeys(STAT_FIELDS, 0))

    def set_dest(self, did, *a, **k):
        self.dest.setdefault(did, dict.fromkeys(STAT_FIELDS, 0))

    def set_vip_served(self, *a):
        pass

    def del_dest(self, did):
        pass

    def del_service(self, sid):
        pass

    def set_hash_table(self, *a):
        pass

    def set_timeouts(self, *a):
        pass

    def service_stats(self, sid):
        return dict(self.svc[sid])

    def dest_stats(self, did):
        return dict(self.dest[did])

    def dest_counters(self, did):
        return (0, 0, 0, False)

    def add(self, n_conns, pkts, nbytes):
        for table in (self.svc, self.dest):
            for st in table.values():
                st["conns"] += n_conns
                st["inpkts"] += pkts
                st["outpkts"] += pkts
                st["inbytes"] += nbytes
                st["outbytes"] += nbytes


def _director():
    e = FakeEngine()
    d = Director(e, lambda ip: (b"\x02" * 6, 1))
    d.execute(parse_command(["-A", "-t", "10.0.0.1:80", "-s", "rr"]))
    d.execute(parse_command(["-a", "-t", "10.0.0.1:80", "-r", "10.0.1.1"]))
    return e, d, d.table.get(("tcp", "10.0.0.1", 80))


def _model(deltas_per_step, shift, scale, rnd):
    avg, out = 0, []
    for delta in deltas_per_step:
        avg += ((delta << shift) - avg) >> 2
        out.append((avg + rnd) >> scale)
    return out


def test_steady_traffic_converges_as_the_kernels_average_does():
    e, d, svc = _director()
    assert d.tick(0.0)                      # starts the clock
    cps, bps = [], []
    for step in range(1, 13):
        e.add(200, 1000, 150_000)           # per 2 s: 100 conn/s, 500 pkt/s, 75 kB/s
        assert not d.tick(step * 2.0 - 0.5)
        assert d.tick(step * 2.0)
        cps.append(svc.cps)
        bps.append(svc.inbps)
        assert (svc.inpps, svc.outpps, svc.outbps) == (svc.inpps, svc.inpps, svc.inbps)
    assert cps == _model([200] * 12, 9, 10, 0x1FF)
    assert bps == _model([150_000] * 12, 4, 5, 0xF)
    assert cps[0] == 25 and cps[-1] == 97   # a quarter of the way, then converging on 100
    dest = svc.dests[0]
    assert (dest.cps, dest.inbps) == (svc.cps, svc.inbps)


def test_a_late_step_is_scaled_to_two_seconds():
    e, d, svc = _director()
    d.tick(0.0)
    e.add(800, 0, 0)
    d.tick(8.0)                              # 4 intervals late: 100 conn/s, not 400
    assert svc.cps == _model([200], 9, 10, 0x1FF)[0]
    e.add(250, 0, 0)
    d.tick(10.5)                             # within half an interval: taken as is
    assert svc.cps == _model([200, 250], 9, 10, 0x1FF)[1]


def test_zero_restarts_the_average_and_new_dests_start_from_their_counters():
    e, d, svc = _director()
    d.tick(0.0)
    e.add(200, 0, 0)
    d.tick(2.0)
    assert svc.cps == 25
    d.execute(parse_command(["-Z"]))
    assert (svc.cps, svc.conns) == (0, 0)
    d.tick(4.0)                              # nothing since -Z
    assert svc.cps == 0
    # A dest added now starts from its engine counters: its rates stay 0 one step.
    d.execute(parse_command(["-a", "-t", "10.0.0.1:80", "-r", "10.0.1.2"]))
    new = svc.dests[0]
    e.dest[d._dest_by_obj[id(new)]]["conns"] = 10_000
    d.tick(6.0)
    assert new.cps == 0
    e.add(200, 0, 0)
    d.tick(8.0)
    assert new.cps == 25 and svc.cps == 25
