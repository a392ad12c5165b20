"""The VRRP-only keepalived.conf derived from the user's (control/vrrp.py, `fastlvs vrrp-conf`):
exactly the VRRP blocks and VRRP's global_defs, as written (values and quoting), includes
expanded, lvs_sync_daemon out and read into KeepalivedConfig.sync_daemon; the --vrrp setting.
keepalived itself accepting the derived files is tests/netns/test_vrrp_keepalived.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from fastlvs import cli
from fastlvs.control.config import ConfigError, parse_config
from fastlvs.control.keepalived import (KeepalivedError, SyncDaemon, _parse_tree,
                                        load_keepalived)
from fastlvs.control.vrrp import is_vrrp_block, vrrp_conf
from fastlvs.daemon import Daemon, Options, StartupError

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "keepalived"
CORPUS = sorted(FIX.glob("*.conf")) + [FIX / "vrrp" / "main.conf"]


def _shape(stmts):
    """A tree as nested (words, children) tuples: what keepalived reads from it."""
    return [(tuple(s.words), None if s.block is None else _shape(s.block)) for s in stmts]


def _reread(text: str, tmp_path: Path):
    p = tmp_path / "derived.conf"
    p.write_text(text)
    return _parse_tree(str(p), [])


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.relative_to(FIX).as_posix())
def test_derived_file_reads_as_the_sources_vrrp_blocks_and_vrrp_globals(path, tmp_path):
    source = _parse_tree(str(path), [])
    derived = _reread(vrrp_conf(path), tmp_path)
    want = []
    for s in source:
        if s.kw == "global_defs":
            kept = [t for t in s.block if not t.kw.startswith(("lvs_", "checker_"))]
            want.append((("global_defs",), _shape(kept)))
        elif is_vrrp_block(s.kw):
            want += _shape([s])
    assert _shape(derived) == want
    kws = {s.kw for s in derived}
    assert not kws & {"virtual_server", "virtual_server_group", "SSL", "include"}


def test_corpus_vrrp_blocks_survive(tmp_path):
    derived = _reread(vrrp_conf(FIX / "include_main.conf"), tmp_path)
    assert [s.kw for s in derived] == ["global_defs", "vrrp_script", "vrrp_instance"]
    assert derived[0].block == []           # lvs_flush was its only item
    assert _shape(derived[1].block) == [(("script", "/usr/bin/true"), None)]


def test_pair_file_keeps_exactly_the_vrrp_part_as_written():
    text = vrrp_conf(FIX / "vrrp" / "main.conf")
    body = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert body == (FIX / "vrrp" / "expected.conf").read_text().splitlines()
    # quoting as written: spaces inside one value, '#' inside quotes is not a comment
    assert '    notify_master "/usr/bin/logger -t vrrp \'group master\'"' in body
    assert '        auth_pass "s3cret#1"' in body
    assert not any("lvs_" in ln or "checker_" in ln or "virtual_server" in ln for ln in body)


def test_included_blocks_come_in_place_and_blocks_on_one_line_are_split(tmp_path):
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "s.conf").write_text(
        'vrrp_script chk { script "/bin/sh -c \'exit 0\'" interval 2 }\n')
    (tmp_path / "k.conf").write_text(
        "vrrp_sync_group G { group { A } }\ninclude inc/*.conf\n"
        "vrrp_instance A {\n interface eth0 ! comment\n virtual_router_id 9\n}\n")
    out = vrrp_conf(tmp_path / "k.conf").splitlines()
    body = [ln for ln in out if not ln.startswith("#")]
    assert body == ["vrrp_sync_group G {", "    group {", "        A", "    }", "}",
                    "vrrp_script chk {", "    script \"/bin/sh -c 'exit 0'\" interval 2", "}",
                    "vrrp_instance A {", "    interface eth0", "    virtual_router_id 9", "}"]


def test_escaped_comment_characters_stay_values(tmp_path):
    src = tmp_path / "k.conf"
    src.write_text("vrrp_instance A {\n    auth_pass ab\\#cd\\!e # a comment\n}\n")
    text = vrrp_conf(src)
    assert "    auth_pass ab\\#cd\\!e" in text.splitlines()
    (inst,) = _reread(text, tmp_path)
    assert inst.block[0].words == ["auth_pass", "ab#cd!e"]


def test_global_defs_without_vrrp_items_and_no_vrrp_blocks(tmp_path):
    src = tmp_path / "k.conf"
    src.write_text("global_defs {\n router_id d1\n lvs_timeouts tcp 60\n"
                   " lvs_sync_daemon eth0\n checker_log_all_failures\n}\n"
                   "virtual_server 192.0.2.1 80 { real_server 192.0.2.9 80 { } }\n")
    body = [ln for ln in vrrp_conf(src).splitlines() if not ln.startswith("#")]
    assert body == ["global_defs {", "    router_id d1", "}"]


def test_bad_file_is_the_readers_one_line(tmp_path):
    src = tmp_path / "k.conf"
    src.write_text("vrrp_instance A {\n  state MASTER\n")
    with pytest.raises(KeepalivedError, match=rf"^{src}:1: the block of vrrp_instance is never"):
        vrrp_conf(src)
    with pytest.raises(OSError):
        vrrp_conf(tmp_path / "absent.conf")


# -- lvs_sync_daemon, read for fastlvs ---------------------------------------------------------
@pytest.mark.parametrize("line, want", [
    ("lvs_sync_daemon eth0 VI_WEB id 7 maxlen 1400 port 8849 ttl 2 group 239.0.0.81",
     SyncDaemon("eth0", "VI_WEB", 7, 1400, 8849, 2, "239.0.0.81")),
    ("lvs_sync_daemon eth1", SyncDaemon("eth1")),
    ("lvs_sync_daemon eth1 inst VI_2 id 0", SyncDaemon("eth1", "VI_2", syncid=0)),
    ("lvs_sync_daemon eth1 port 9000", SyncDaemon("eth1", port=9000)),
])
def test_lvs_sync_daemon_is_read(tmp_path, line, want):
    src = tmp_path / "k.conf"
    src.write_text(f"global_defs {{\n    {line}\n}}\n")
    kc = load_keepalived(src)
    assert kc.sync_daemon == want
    assert not any("lvs_sync_daemon ignored" in w for w in kc.warnings)


@pytest.mark.parametrize("line, reason", [
    ("lvs_sync_daemon", "lvs_sync_daemon needs a value"),
    ("lvs_sync_daemon eth0 VI id 256", "lvs_sync_daemon 256: not a number in 0..255"),
    ("lvs_sync_daemon eth0 VI colour red", "lvs_sync_daemon: unknown 'colour'"),
    ("lvs_sync_daemon eth0 group 300.1.1.1", "300.1.1.1"),
])
def test_bad_lvs_sync_daemon_is_one_line(tmp_path, line, reason):
    src = tmp_path / "k.conf"
    src.write_text(f"global_defs {{\n    {line}\n}}\n")
    with pytest.raises(KeepalivedError) as e:
        load_keepalived(src)
    assert str(e.value).startswith(f"{src}:2: ") and reason in str(e.value)


def test_pair_file_sync_daemon_and_services():
    kc = load_keepalived(FIX / "vrrp" / "main.conf")
    assert kc.sync_daemon == SyncDaemon("eth0", "VI_WEB", 7, 1400, 8849, 2, "239.0.0.81")
    assert sorted(s.vaddr for s in kc.table) == ["192.0.2.10", "192.0.2.53"]


# -- the command and the setting -----------------------------------------------------------------
def test_vrrp_conf_command_prints_the_file(capsys):
    assert cli.main(["vrrp-conf", str(FIX / "vrrp" / "main.conf")]) == 0
    assert capsys.readouterr().out == vrrp_conf(FIX / "vrrp" / "main.conf")


def test_vrrp_conf_command_bad_input_is_one_line(tmp_path, capsys):
    assert cli.main(["vrrp-conf", str(tmp_path / "absent.conf")]) == 2
    err = capsys.readouterr().err
    assert err == f"fastlvs vrrp-conf: {tmp_path / 'absent.conf'}: No such file or directory\n"
    bad = tmp_path / "k.conf"
    bad.write_text("vrrp_instance A {\n}\n}\n")
    assert cli.main(["vrrp-conf", str(bad)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == f"{bad}:3: '}}' without a matching '{{'\n"


def test_vrrp_setting_needs_a_keepalived_conf():
    d = Daemon(Options(mode="dr", interface="eth0", vip="192.0.2.1:80", rs=["192.0.2.9:80"],
                       vrrp=True))
    with pytest.raises(StartupError, match=r"^--vrrp needs a keepalived.conf"):
        d._settings()


def test_vrrp_setting_from_the_command_line_and_toml(tmp_path):
    assert cli.daemon_parser().parse_args(["--vrrp"]).vrrp is True
    assert cli.daemon_parser().parse_args([]).vrrp is False
    assert parse_config('[director]\nvrrp = true\n').director.vrrp is True
    assert parse_config('[director]\n').director.vrrp is False
    with pytest.raises(ConfigError, match=r"director.vrrp: must be true or false"):
        parse_config('[director]\nvrrp = "yes"\n')
    toml = tmp_path / "f.toml"
    toml.write_text('[director]\ninterface = "eth0"\nkeepalived_conf = "k.conf"\nvrrp = true\n')
    (tmp_path / "k.conf").write_text("")
    d = Daemon(Options(config=str(toml)))       # no --vrrp: the file's true stays
    d._settings()
    assert d.cfg.vrrp is True


def test_vrrp_conf_command_warns_of_lines_it_does_not_carry(tmp_path, capsys):
    src = tmp_path / "k.conf"
    src.write_text("vrrp_instance A {\n@dir2 priority 90\n    priority 100\n}\n")
    assert cli.main(["vrrp-conf", str(src)]) == 0
    out = capsys.readouterr()
    assert out.err == (f"{src}:2: conditional and parameter lines (@, $) are not read by "
                       "fastlvs; ignored\n")
    assert "priority 90" not in out.out and "    priority 100" in out.out.splitlines()
