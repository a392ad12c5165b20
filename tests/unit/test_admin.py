"""`fastlvs admin` without a daemon (syntax errors, -h, -v, -R checks, no daemon) and
against a stub daemon that answers canned lines (printing, exit statuses). No build."""
from __future__ import annotations

import io
import json
import socket
import threading

import pytest

from fastlvs import admin
from fastlvs.control import ctl
from fastlvs.cli import main as cli_main


def run(*argv, stdin=""):
    out, err = io.StringIO(), io.StringIO()
    rc = admin.main(list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv, message", [
    (["-A", "-t", "1.2.3.4:80", "-s", "nope"], "unknown scheduler 'nope'; valid: rr, wrr, "
     "lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh, twos"),
    (["-A", "-L"], "multiple commands specified"),
    (["-a", "-t", "1.2.3.4:80", "-r", "5.6.7.8", "-w", "x"], "weight: 'x' is not an integer"),
    (["-D"], "You need to supply the 'service-address' option for the 'delete-service' "
             "command"),
    (["-L", "--timeout", "-c"], "The option 'timeout' conflicts with the 'connection' option "
                                "in the 'list' command"),
    (["-Q"], "unknown option '-Q'"),
    (["--socket"], "--socket: missing argument"),
    (["-f", "0", "-A"], "invalid fwmark value `0' specified"),
])
def test_syntax_errors_need_no_daemon(argv, message, tmp_path):
    rc, out, err = run("--socket", str(tmp_path / "absent"), *argv)
    assert (rc, out, err) == (2, "", message + "\n")


def test_help_and_version_need_no_daemon(tmp_path):
    rc, out, err = run("--socket", str(tmp_path / "absent"), "-h")
    assert rc == 0 and err == "" and "--set tcp tcpfin udp" in out
    rc, out, err = run("-v")
    assert rc == 0 and out.startswith("fastlvs ") and "IPVS v1.2.1" in out


def test_restore_text_is_checked_before_sending(tmp_path):
    rc, out, err = run("--socket", str(tmp_path / "absent"), "-R",
                       stdin="-A -t 1.2.3.4:80\n\n-L -n\n")
    assert (rc, err) == (2, "-:3: -L does not belong in a rules file (only -A -E -D -C -a -e -d "
                            "-Z --set --mark-rule --del-mark-rules)\n")


def test_daemon_not_running(tmp_path):
    rc, out, err = run("--socket", str(tmp_path / "x.sock"), "-Ln")
    assert (rc, out) == (2, "")
    assert err == (f"fastlvs admin: cannot reach the daemon at {tmp_path}/x.sock: "
                   f"No such file or directory\n")


class Stub:
    """A daemon stand-in: records each request, answers with the next canned answer."""

    def __init__(self, path, answers):
        self.requests = []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen(4)
        self.answers = list(answers)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        for answer in self.answers:
            c, _ = self.sock.accept()
            f = c.makefile("rb")
            self.requests.append(json.loads(f.readline()))
            c.sendall(ctl.encode(answer))
            c.close()
        self.sock.close()


def test_printing_and_exit_statuses(tmp_path, monkeypatch):
    path = str(tmp_path / "s")
    listing = "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port \n"
    stub = Stub(path, [ctl.ok(listing), ctl.error("No such service (-t 1.2.3.4:80)", 255),
                       ctl.error("-:1: a", 255, ["-:1: a", "-:3: b"]), ctl.ok(""),
                       ctl.error("No such service", 1), {"ok": False}])
    assert run("--socket", path, "-Ln") == (0, listing, "")
    monkeypatch.setenv("FASTLVS_SOCKET", path)
    assert run("-D", "-t", "1.2.3.4:80") == (255, "", "No such service (-t 1.2.3.4:80)\n")
    assert run("-R", stdin="-C\n\n-C\n") == (255, "", "-:1: a\n-:3: b\n")
    assert run("--socket=" + path, "--", "-C") == (0, "", "")
    assert run("-L", "-t", "1.2.3.4:80") == (1, "", "No such service\n")
    assert run("-C") == (255, "", "unknown error\n")
    stub.thread.join()
    assert stub.requests == [
        {"op": "command", "argv": ["-Ln"]},
        {"op": "command", "argv": ["-D", "-t", "1.2.3.4:80"]},
        {"op": "command", "argv": ["-R"], "stdin": "-C\n\n-C\n"},
        {"op": "command", "argv": ["-C"]},
        {"op": "command", "argv": ["-L", "-t", "1.2.3.4:80"]},
        {"op": "command", "argv": ["-C"]}]


def test_cli_hands_admin_its_raw_arguments(tmp_path, capsys):
    """argparse never sees ipvsadm's options: `fastlvs admin -A ...` reaches admin.main."""
    rc = cli_main(["admin", "--socket", str(tmp_path / "s"), "-A", "-t", "1.2.3.4:0"])
    assert rc == 2
    assert capsys.readouterr().err == "Zero port specified for non-persistent service\n"
    rc = cli_main(["admin", "--socket", str(tmp_path / "s"), "--set", "1", "2", "3"])
    assert rc == 2
    assert "cannot reach the daemon" in capsys.readouterr().err
