"""Each daemon setting is declared once (fastlvs.settings): the command line, the TOML
[director] table, the daemon's merging and replay's range checks all follow it."""
import dataclasses

import pytest

from fastlvs import cli, settings
from fastlvs.control.config import ConfigError, DirectorConfig, parse_config
from fastlvs.daemon import Daemon, StartupError
from fastlvs.engine import contract
from fastlvs.replay import ReplayError, ReplayOptions, run as replay_run


def test_every_declared_option_is_on_the_daemon_command_line_with_its_help():
    actions = {a.dest: a for a in cli.daemon_parser()._actions
               if a.dest not in ("help", "version")}
    assert set(actions) == {s.name for s in settings.CLI_SETTINGS}
    for s in settings.CLI_SETTINGS:
        assert tuple(actions[s.name].option_strings) == s.flags
        assert actions[s.name].help == s.help
        if s.choices:
            assert tuple(actions[s.name].choices) == s.choices


def test_the_director_table_has_exactly_the_toml_settings_with_their_defaults():
    fields = {f.name: f.default for f in dataclasses.fields(DirectorConfig)}
    assert tuple(fields) == settings.DIRECTOR_KEYS
    for name, default in fields.items():
        assert default == settings.setting(name).default
    assert settings.setting("mode").choices == contract.FWD_NAMES


@pytest.mark.parametrize("name,bad", [
    ("capacity", contract.CAPACITY_MAX + 1), ("capacity", contract.CAPACITY_MIN - 1),
    ("mtu", contract.MTU_MIN - 1), ("mtu", contract.MTU_MAX + 1),
    ("batch", contract.BATCH_MAX + 1), ("batch", 0)])
def test_a_range_is_refused_alike_by_toml_and_the_command_line(name, bad):
    s = settings.setting(name)
    lo, hi = s.range
    with pytest.raises(ConfigError) as e:
        parse_config(f"[director]\n{name} = {bad}\n", "f.toml")
    assert str(e.value) == f"f.toml:2: director.{name}: {bad} is outside {lo}..{hi}"
    if s.flags:
        opts = settings.Options(mode="dr", interface="eth0", vip="203.0.113.10:80",
                                rs=["192.0.2.11:80"], **{name: bad})
        with pytest.raises(StartupError) as e:
            Daemon(opts)._settings()
        assert str(e.value) == f"--{name}: {bad} is outside {lo}..{hi}"


@pytest.mark.parametrize("name", ["mtu", "capacity"])
def test_replay_checks_the_same_ranges(tmp_path, name):
    rules = tmp_path / "rules"
    rules.write_text("-A -t 203.0.113.10:80 -s rr\n")
    bad = settings.setting(name).range[1] + 1
    opts = ReplayOptions(rules=str(rules), input="x", output="y", local_ip="192.0.2.1",
                         local_mac="02:00:00:00:00:01", **{name: bad})
    with pytest.raises(ReplayError, match=f"^--{name}: {bad} is outside "):
        replay_run(opts)


def test_command_line_values_override_the_config_and_busy_poll_means_50us():
    cfg = DirectorConfig(mode="nat", capacity=4096, busy_poll=0)
    opts = settings.Options(capacity=65536, busy_poll=True)
    assert settings.merge(opts, cfg) == []
    assert (cfg.mode, cfg.capacity, cfg.busy_poll) == ("nat", 65536, 50)
    cfg2 = DirectorConfig(busy_poll=7)
    settings.merge(settings.Options(), cfg2)
    assert cfg2.busy_poll == 7 and cfg2.capacity == contract.CAPACITY_DEFAULT
