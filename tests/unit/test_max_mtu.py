"""The ring limits in the engine's contract: the largest MTU each backend carries whole."""
import pytest

from fastlvs.engine import contract


def test_max_mtu_per_backend():
    # AF_XDP: one frame in one UMEM chunk after the kernel's 256 bytes of XDP headroom,
    # room kept for an 802.1Q tag; AF_PACKET sizes its slots from the MTU
    assert contract.max_mtu("xdp", 4096) == 3822
    assert contract.max_mtu("xdp", 2048) == 1774
    assert contract.max_mtu("xdp") == 3822
    assert contract.max_mtu("packet") == contract.MTU_MAX
    with pytest.raises(ValueError):
        contract.max_mtu("dpdk")
    with pytest.raises(ValueError):
        contract.max_mtu("xdp", 3000)


def test_mtu_problem_is_one_line_naming_the_largest():
    assert contract.mtu_problem("xdp", "eth0", 1500) is None
    assert contract.mtu_problem("xdp", "eth0", 3822) is None
    assert contract.mtu_problem("packet", "eth0", 9000) is None
    msg = contract.mtu_problem("xdp", "eth0", 9000)
    assert "\n" not in msg and "eth0" in msg and "9000" in msg and "3822" in msg
