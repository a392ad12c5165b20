"""keepalived.conf → the file keepalived runs VRRP from (`keepalived --vrrp`) beside fastlvs:
the VRRP blocks and the global_defs VRRP reads, includes expanded, with everything LVS
dropped (virtual servers, groups, the checkers' SSL, lvs_* and checker_* settings). Above all
`lvs_sync_daemon` goes: keepalived's VRRP process starts IPVS's sync daemon for it, which
needs the kernel's IPVS (fastlvs reads it itself: KeepalivedConfig.sync_daemon).
"""
from __future__ import annotations

import os

from fastlvs.control.keepalived import _VRRP_BLOCKS, _parse_tree, _Stmt

INDENT = "    "
# top-level blocks that are LVS's alone: fastlvs serves them
_LVS_TOP = ("virtual_server", "virtual_server_group", "SSL")


def is_vrrp_block(keyword: str) -> bool:
    """True for a top-level keyword keepalived's VRRP process reads (vrrp_instance,
    vrrp_sync_group, vrrp_script, static_ipaddress, ...)."""
    return keyword in _VRRP_BLOCKS or keyword.startswith("vrrp_")


def _vrrp_global(keyword: str) -> bool:
    # lvs_* are IPVS's (lvs_sync_daemon above all), checker_* the checker process's; every
    # other global_defs item is common to keepalived's processes or VRRP's own
    return not keyword.startswith(("lvs_", "checker_"))


def _escaped(text: str) -> str:
    """`text` as a line keepalived reads back the same: a `#` or `!` outside quotes (written
    `\\#` in the source, which the reader unescaped) is escaped again."""
    out = []
    quote = False
    for c in text:
        if c == '"':
            quote = not quote
        elif c in "#!" and not quote:
            out.append("\\")
        out.append(c)
    return "".join(out)


def _emit(s: _Stmt, depth: int, out: list) -> None:
    pad = INDENT * depth
    if s.block is None:
        out.append(pad + _escaped(s.text))
        return
    out.append(f"{pad}{_escaped(s.text)} {{")
    for t in s.block:
        _emit(t, depth + 1, out)
    out.append(pad + "}")


def vrrp_conf(path, warnings: list | None = None) -> str:
    """The keepalived.conf text for `keepalived --vrrp` derived from the keepalived.conf at
    `path` (includes expanded): its global_defs without lvs_* and checker_* items, and its
    VRRP blocks in file order, values and quoting as written (comments are not kept). A file
    without VRRP blocks gives global_defs alone (keepalived then runs no instance).

    Raises KeepalivedError (`FILE:LINE: what is wrong`) for a file the reader refuses
    (unbalanced braces, a missing include, ...); OSError if the top file cannot be read.
    Lines the reader skips (`@`/`$` lines) are appended to `warnings`."""
    path = os.fspath(path)
    with open(path, "rb"):
        pass                           # the top file's own errors surface as OSError
    warnings = [] if warnings is None else warnings
    tree = _parse_tree(path, warnings)
    out = [f"# keepalived --vrrp configuration derived by fastlvs from {path}",
           "# (its VRRP part; fastlvs serves the virtual servers). Do not edit: edit the "
           "source file."]
    for s in tree:
        if s.kw == "global_defs":
            kept = [t for t in (s.block or []) if _vrrp_global(t.kw)]
            _emit(_Stmt(s.words, s.where, kept, s.text), 0, out)
        elif is_vrrp_block(s.kw):
            _emit(s, 0, out)
    return "\n".join(out) + "\n"


__all__ = ["is_vrrp_block", "vrrp_conf"]
