"""benchmarks/peers.py --replot --merge: pooling earlier full runs keeps pairs paired and
recomputes medians over every run."""
import pytest

from benchmarks import peers


def _result(date, pps_by_case):
    cases = [{"name": n, "runs": [{"saturated": {"pps": p, "us_per_packet": 1.0}, "lossless": None}
                                  for p in pps]} for n, pps in pps_by_case.items()]
    return {"date": date, "reps": len(next(iter(pps_by_case.values()))),
            "cases": [peers.summarize(c) for c in cases]}


def test_merge_pools_runs_and_keeps_pairs():
    a = _result("A", {"fastlvs_dr_xdp": [10, 30], "bare_xsk_nobp": [20, 20]})
    b = _result("B", {"fastlvs_dr_xdp": [40, 50, 60], "bare_xsk_nobp": [40, 100, 60]})
    peers.merge(a, [b])
    fl = {c["name"]: c for c in a["cases"]}["fastlvs_dr_xdp"]
    assert [r["saturated"]["pps"] for r in fl["runs"]] == [10, 30, 40, 50, 60]
    assert fl["saturated"]["median_pps"] == 40 and fl["saturated"]["max_pps"] == 60
    assert a["reps"] == 5 and a["merged_from"] == ["B"]
    r = peers.ratios(a)
    # pairs: 10/20, 30/20, 40/40, 50/100, 60/60 -> median 1.0; medians 40 / 40
    assert r["paired saturated: fastlvs_dr_xdp / bare_xsk_nobp (goal >= 0.90)"] == 1.0
    assert r["saturated: fastlvs_dr_xdp / bare_xsk_nobp (goal >= 0.90)"] == 1.0


def test_merge_refuses_other_cases():
    a = _result("A", {"fastlvs_dr_xdp": [1], "bare_xsk_nobp": [1]})
    b = _result("B", {"fastlvs_dr_xdp": [1]})
    with pytest.raises(KeyError, match="same cases"):
        peers.merge(a, [b])
