"""`fastlvs demo` prints a share table that follows the weights."""
import io

from fastlvs.cli import main
from fastlvs.demo import SERVERS, run_scheduler_demo, simulate, _flows
import random


def test_wrr_shares_follow_the_weights_exactly_over_whole_cycles():
    """wrr over 10 cycles of weights 1:2:3:4 hands out exactly 10, 20, 30, 40 picks."""
    flows = _flows(100, random.Random(3))
    assert simulate("wrr", flows, 3) == [10 * w for _, w in SERVERS]


def test_demo_prints_one_row_per_scheduler():
    buf = io.StringIO()
    run_scheduler_demo(flows=500, seed=2, out=buf)
    rows = buf.getvalue().splitlines()
    assert [r.split()[0] for r in rows[3:]] == ["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh",
                                               "sh", "sed", "nq", "fo", "ovf", "mh", "twos"]
    fo = rows[3 + 10].split()
    assert fo[1:5] == ["0.0%", "0.0%", "0.0%", "100.0%"]   # fo: the highest weight takes all


def test_cli_rejects_a_nonpositive_flow_count(capsys):
    assert main(["demo", "--flows", "0"]) == 2
    assert "--flows" in capsys.readouterr().err
