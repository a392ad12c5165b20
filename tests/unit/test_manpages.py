"""fastlvs(8) and fastlvs-admin(8) come from the options the commands themselves declare: every
daemon option, every subcommand option and every `fastlvs admin` option is on its page, with
a line saying what it does, and the roff is well-formed enough for man(1)."""
from __future__ import annotations

import re

from fastlvs import admin, cli, manpages, settings
from fastlvs.control import ipvsadm


def _items(page: str) -> list[tuple[str, str]]:
    # the .TP items: (tag as printed, its text)
    lines = page.splitlines()
    out = []
    for i, line in enumerate(lines):
        if line == ".TP":
            tag = lines[i + 1].replace("\\fB", "").replace("\\fR", "").replace("\\-", "-")
            out.append((tag, lines[i + 2]))
    return out


def _roff_ok(page: str) -> None:
    assert page.startswith(".TH ")
    for line in page.splitlines():
        # a text line starting with . or ' would be read as a request
        if line[:1] in (".", "'"):
            assert re.match(r"\.(TH|SH|SS|TP|nf|fi)\b", line), line
        assert "\t" not in line


def test_the_daemon_page_has_every_option_of_the_daemon_and_subcommands():
    page = manpages.daemon_page()
    _roff_ok(page)
    tags = [t for t, _ in _items(page)]
    for s in settings.CLI_SETTINGS:
        for flag in s.flags:
            assert any(flag in re.split(r"[ ,]+", t) for t in tags), flag
    for name in ("demo", "replay", "admin", "vrrp-conf"):
        assert f".SS fastlvs {name.replace('-', chr(92) + '-')}" in page
    assert any(t.startswith("--local-ip") for t in tags)       # replay's own
    assert all(text.strip() for _, text in _items(page))


def test_the_admin_page_has_every_ipvsadm_option_and_ours_each_with_its_help():
    page = manpages.admin_page()
    _roff_ok(page)
    items = _items(page)
    longs = {o.long for o in ipvsadm._OPTIONS}
    assert set(ipvsadm.OPTION_HELP) == longs          # no option without help, no stale help
    for long in longs:
        assert any(f"--{long}" in re.split(r"[ ,]+", t) for t, _ in items), long
    for spell, _ in admin.OWN_OPTIONS:
        assert any(t == spell for t, _ in items), spell
    assert "-L, -l, --list" in [t for t, _ in items]
    # the synopsis is the command's own usage text
    assert "fastlvs admin \\-\\-set tcp tcpfin udp" in page


def test_manpages_writes_both_files(tmp_path):
    assert manpages.main([str(tmp_path)]) == 0
    assert (tmp_path / "fastlvs.8").read_text() == manpages.daemon_page()
    assert (tmp_path / "fastlvs-admin.8").read_text() == manpages.admin_page()
    assert manpages.main([]) == 2
    assert cli.version() in manpages.daemon_page().splitlines()[0]
