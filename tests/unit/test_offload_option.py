"""--offload on|off|auto: declared once (settings.py), refused in one line where it cannot be
honoured (AF_PACKET has no offload), before anything touches the network."""
import pytest

from fastlvs.daemon import Daemon, Options, StartupError
from fastlvs.settings import setting


def quick(**kw):
    return Options(mode="dr", interface="eth0", vip="203.0.113.10:80", rs=["192.0.2.11:80"],
                   **kw)


def test_offload_on_with_the_packet_backend_is_refused_in_one_line():
    with pytest.raises(StartupError) as e:
        Daemon(quick(offload="on", backend="packet"))._settings()
    assert str(e.value) == "--offload on needs the AF_XDP backend: AF_PACKET has no offload"


@pytest.mark.parametrize("value", ["off", "auto"])
def test_offload_off_or_auto_with_the_packet_backend_starts(value):
    d = Daemon(quick(offload=value, backend="packet"))
    d._settings()
    assert d.cfg.offload == value


def test_the_default_is_auto_and_only_on_off_auto_are_taken():
    s = setting("offload")
    assert s.default == "auto" and s.choices == ("auto", "on", "off")
    d = Daemon(quick())
    d._settings()
    assert d.cfg.offload == "auto"
