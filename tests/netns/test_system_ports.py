"""system/ports.Ports on the namespace topology: rings open when the wanted steering first
names their interface, keys follow the wanted sets (AF_PACKET's nft drops in one transaction
per change set), the state file records what a crash would leave, and close() leaves
nothing: no XDP program, no nft table, no state file."""
import json

import pytest

from tests.netns.netns_support import in_ns

core = pytest.importorskip("fastlvs.engine._core")
from fastlvs.system import nft  # noqa: E402
from fastlvs.system.netlink import Netlink  # noqa: E402
from fastlvs.system.ports import Ports  # noqa: E402
from fastlvs.system.state import StateFile  # noqa: E402

VIP = "10.200.1.100"


@pytest.mark.parametrize("backend", ["xdp", "packet"])
def test_ports_follow_the_wanted_steering(topo, tmp_path, monkeypatch, backend):
    calls = []
    real = nft._nft
    monkeypatch.setattr(nft, "_nft", lambda *a, **k: calls.append(a) or real(*a, **k))
    with in_ns(topo.director):
        nl = Netlink()
        d0, d1 = nl.interface("d0").index, nl.interface("d1").index
        state = StateFile(str(tmp_path))
        ports = Ports(nl, backend, state=state)
        try:
            keys = {("service", "udp", VIP, 9000 + i) for i in range(5)}
            opened = ports.sync({d0: keys, d1: {("rserver", "tcp", "10.200.2.2", 80)}})
            assert [p.ifname for p in opened] == ["d0", "d1"]
            assert [p.backend for p in ports.list()] == [backend, backend]
            # besides the keys asked for, a "local" key per address of the namespace (so
            # replies to the director's own connections stay with the kernel)
            assert ports.steered[d0] - ports.local == keys
            assert ports.local and all(k[0] == "local" for k in ports.local)
            recorded = json.load(open(state.path))
            if backend == "packet":
                assert len(calls) == 1                 # two tables, six keys: one nft run
                tables = topo.nft_tables(topo.director)
                assert all(t in tables for t in recorded["nft"]) and len(recorded["nft"]) == 2
                assert recorded["xdp"] == []
            else:
                assert calls == [] and recorded["xdp"] == ["d0", "d1"]
                assert topo.xdp_attached(topo.director, "d0")
            calls.clear()
            assert ports.sync({d0: set(list(keys)[:2])}) == []      # opens nothing new
            assert len(calls) == (1 if backend == "packet" else 0)
            assert ports.steered[d1] - ports.local == {("rserver", "tcp", "10.200.2.2", 80)}  # kept
            assert set(ports.stats()) == {"d0", "d1"}
        finally:
            ports.close()
            nl.close()
    assert not topo.xdp_attached(topo.director, "d0")
    assert "fastlvs_" not in topo.nft_tables(topo.director)
    assert list(tmp_path.iterdir()) == []
