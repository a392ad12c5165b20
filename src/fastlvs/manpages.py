"""The man pages fastlvs(8) and fastlvs-admin(8), made from the declarations the commands
themselves use: the daemon's argparse parser (built from settings.SETTINGS), the subcommands'
parsers (cli.build_parser), and `fastlvs admin`'s usage and option table (admin.USAGE,
ipvsadm.OPTION_HELP). `python -m fastlvs.manpages DIR` writes both; `make man` runs it.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from fastlvs import cli


def _esc(text: str) -> str:
    # roff: a backslash starts an escape, a leading dot or quote a request
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _head(name: str, what: str) -> list[str]:
    return [f'.TH {name.upper()} 8 "" "fastlvs {cli.version()}" "fastlvs"',
            ".SH NAME", f"{_esc(name)} \\- {_esc(what)}"]


def _option_items(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        spell = ", ".join(action.option_strings)
        if action.nargs != 0:
            spell += " " + (action.metavar or action.dest.upper())
        out += [".TP", f"\\fB{_esc(spell)}\\fR"]
        text = action.help or ""
        if action.choices:
            text += f" (one of: {', '.join(map(str, action.choices))})"
        out.append(_esc(text))
    return out


def daemon_page() -> str:
    """fastlvs(8): the director's options (every command-line setting), then each
    subcommand with its own options."""
    p = cli.daemon_parser()
    lines = _head("fastlvs", "Linux Virtual Server director in user space")
    lines += [".SH SYNOPSIS", ".nf"] + [_esc(line) for line in cli.DAEMON_USAGE.splitlines()]
    lines += [".fi", ".SH DESCRIPTION", _esc(p.description or ""),
              "The director's settings can also come from a TOML file (\\fB\\-\\-config\\fR); "
              "the command line wins.", ".SH OPTIONS"]
    lines += _option_items(p)
    lines += [".SH SUBCOMMANDS"]
    sub = next(a for a in cli.build_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, parser in sub.choices.items():
        lines += [f".SS fastlvs {_esc(name)}", _esc(helps.get(name) or "")]
        if name == "admin":
            lines.append("See \\fBfastlvs\\-admin\\fR(8).")
            continue
        lines += _option_items(parser)
    lines += [".SH SEE ALSO", "fastlvs\\-admin(8), ipvsadm(8), keepalived(8)"]
    return "\n".join(lines) + "\n"


def admin_options() -> list[tuple[str, str]]:
    """(spelling, what it does) of every `fastlvs admin` option: ipvsadm's, in the order
    of its option table (-L and -l share a line), then fastlvs's own."""
    from fastlvs import admin
    from fastlvs.control import ipvsadm

    shorts: dict[str, list[str]] = {}
    first: dict[str, object] = {}
    for o in ipvsadm._OPTIONS:
        first.setdefault(o.long, o)
        if o.short:
            shorts.setdefault(o.long, []).append(f"-{o.short}")
    out = []
    for long, o in first.items():
        arg = {0: "", 1: f" {_argname(o)}", 2: " [TIMEOUT]"}[o.arg]
        spell = ", ".join(shorts.get(long, []) + [f"--{long}"]) + arg
        out.append((spell, ipvsadm.OPTION_HELP[long]))
    return out + list(admin.OWN_OPTIONS)


def _argname(o) -> str:
    return {"service-address": "ADDR:PORT" if o.value != "fwmark" else "MARK",
            "real-server": "ADDR[:PORT]", "scheduler": "SCHEDULER",
            "cmd:start-daemon": "master|backup", "cmd:stop-daemon": "master|backup",
            "cmd:mark-rule": "MARK,PROTO,PREFIX,PORTS",
            "cmd:del-mark-rules": "MARK"}.get(o.slot, o.long.upper().replace("-", "_"))


def admin_page() -> str:
    """fastlvs-admin(8): ipvsadm's command line against the running daemon."""
    from fastlvs import admin

    usage = admin.USAGE.splitlines()
    body = [line for line in usage[2:] if line.startswith("  ")]
    lines = _head("fastlvs-admin", "ipvsadm's command line against the running fastlvs daemon")
    lines += [".SH SYNOPSIS", ".nf"] + [_esc(line.strip()) for line in body] + [".fi"]
    lines += [".SH DESCRIPTION", _esc(usage[0]) + "."]
    lines += [_esc(" ".join(line.strip() for line in usage[2:]
                            if line.strip() and line not in body))]
    lines += [".SH OPTIONS"]
    for spell, text in admin_options():
        lines += [".TP", f"\\fB{_esc(spell)}\\fR", _esc(text)]
    lines += [".SH SEE ALSO", "fastlvs(8), ipvsadm(8)"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m fastlvs.manpages DIR", file=sys.stderr)
        return 2
    out = pathlib.Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "fastlvs.8").write_text(daemon_page())
    (out / "fastlvs-admin.8").write_text(admin_page())
    return 0


if __name__ == "__main__":
    sys.exit(main())
