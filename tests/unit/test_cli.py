"""The `fastlvs` command as a new user meets it: --version, --help (the daemon's options and
the subcommands together), a bare `fastlvs`, and usage errors. No build, no root."""
from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

import fastlvs
from fastlvs import cli, settings


def run_main(capsys, *argv):
    """(exit status, stdout, stderr) of cli.main(argv), argparse's exits included."""
    try:
        rc = cli.main(list(argv))
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_version_is_the_installed_package_metadata_through_the_real_entry_point():
    r = subprocess.run([sys.executable, "-m", "fastlvs", "--version"], capture_output=True,
                       text=True, timeout=60)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == f"fastlvs {metadata.version('fastlvs')}\n"


def test_the_metadata_version_is_the_one_written_in_the_package():
    # pyproject reads it from fastlvs.__version__ (the control socket's ping reports that)
    assert metadata.version("fastlvs") == fastlvs.__version__ == cli.version()


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_shows_every_daemon_option_and_every_subcommand(capsys, flag):
    rc, out, err = run_main(capsys, flag)
    assert (rc, err) == (0, "")
    assert out.startswith("usage: fastlvs ")
    for s in settings.CLI_SETTINGS:
        assert s.option in out, s.option
    assert "--version" in out
    tail = out[out.index("subcommands"):]
    for name, text in cli.SUBCOMMANDS:
        assert f"  {name} " in tail and text in tail, name


def test_a_subcommand_help_is_still_its_own(capsys):
    rc, out, _ = run_main(capsys, "replay", "--help")
    assert rc == 0 and "--local-mac" in out and "--rs-interface" not in out


def test_bare_fastlvs_says_how_to_start_in_two_lines_exit_2(capsys):
    rc, out, err = run_main(capsys)
    assert (rc, out) == (2, "")
    assert err.count("\n") == 2 and err == cli.START_HINT + "\n"
    assert "-i IFACE" in err and "--vip" in err and "--help" in err
    assert "arguments are required" not in err


@pytest.mark.parametrize("argv,expect", [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["--mode", "xx"], "--mode"),
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_usage_errors_are_one_line_exit_2(capsys, argv, expect):
    rc, out, err = run_main(capsys, *argv)
    assert (rc, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("fastlvs: ") and expect in err
