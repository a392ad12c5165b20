"""The control socket's wire schema, shared by the daemon (control.py) and its clients
(admin.py, the tests, later the health checker) and by nothing else, DPVS style.

Newline-delimited JSON over a Unix stream socket. A request is one object `{"op": OP, ...}`
on one line; the answer is one line, `{"ok": true, "result": ...}` or
`{"ok": false, "error": "<one line, ipvsadm's wording>", "code": <exit status>}` (with
`"errors": [...]` when one request failed in several places, e.g. -R). A connection may carry
any number of requests; answers come back in request order.

Streaming form: a "command" request with `"stream": true` may be answered in several lines,
`{"ok": true, "chunk": "<text>"}` any number of times (the text to print, in order), ended
by `{"ok": true, "done": true}`, or by an error answer when it failed midway (the chunks
before it stand). The daemon answers a connection listing (-Lc) so, made and sent a slice at
a time; any other request, and any request without "stream", gets the one-line answer.
Without "stream" a connection listing is still one line, written as it is made.
"""
from __future__ import annotations

import json
import os
import socket

DEFAULT_SOCKET = "/run/fastlvs/fastlvs.sock"
SOCKET_ENV = "FASTLVS_SOCKET"
MAX_LINE = 1 << 20            # bytes in one request line, newline excluded

# The ops the server knows, with the arguments each takes:
#   command  argv: [str, ...]  (one ipvsadm command line), stdin: str (-R's rules text)
#            -> result: str, exactly what ipvsadm would print on stdout ("" for a change)
#            stream: true (optional): the answer may come in the streaming form
#   counters -> result: Director.counters() (JSON object), with "sync": the engine's sync
#            counters and, under "daemons", the sync sockets' (sync/daemon.py)
#   reload   -> result: what the daemon's reload hook returns (a one-line summary)
#   ping     -> result: {"pid": int, "version": str}
#   sysctl   set: {name: int, ...} (optional; all checked before any is applied)
#            -> result: {name: value} of every IPVS sysctl (control/sysctl.py), after the set
#   health   -> result: HealthPolicy.status() (control/health.py): per virtual server its
#            quorum, per real server its state and checkers; an error when no health checks run
OPS = ("command", "counters", "reload", "ping", "sysctl", "health")

# Exit statuses, as ipvsadm 1.31 returns them: fail(2, ...) for what it refuses itself,
# exit(1) when a listing cannot be read (list_service of an absent service), and main()'s
# `return result` of -1 (status 255) when the kernel refuses a change.
EXIT_OK = 0
EXIT_LIST = 1
EXIT_SYNTAX = 2
EXIT_REFUSED = 255


class ProtocolError(ValueError):
    """A line that is not a well-formed request or response; str() is the one-line reason."""


def socket_path(explicit: str | None = None) -> str:
    """The control socket's path: `explicit` (--socket) if given, else $FASTLVS_SOCKET if
    set and non-empty, else /run/fastlvs/fastlvs.sock."""
    return explicit or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def encode(message: dict) -> bytes:
    """One message as its wire line (compact JSON, UTF-8, newline-terminated). JSON escapes
    newlines inside strings, so a message is always exactly one line."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def decode(line: bytes) -> dict:
    """The object on one wire line (trailing newline optional). ProtocolError if the line
    is longer than MAX_LINE, not UTF-8 JSON, or not a JSON object."""
    if len(line.rstrip(b"\n")) > MAX_LINE:
        raise ProtocolError(f"request longer than {MAX_LINE} bytes")
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"not a JSON line: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"not a JSON object: {type(obj).__name__}")
    return obj


def ok(result=None) -> dict:
    """A success answer."""
    return {"ok": True, "result": result}


def chunk(text: str) -> dict:
    """A piece of a streamed answer: text to print after the pieces before it."""
    return {"ok": True, "chunk": text}


def done() -> dict:
    """The end of a streamed answer that succeeded."""
    return {"ok": True, "done": True}


def error(message: str, code: int = EXIT_REFUSED, errors: list[str] | None = None) -> dict:
    """A failure answer. `message` is flattened to one line; `errors` lists every failure
    when there were several (the first is also `message`)."""
    out = {"ok": False, "error": " ".join(str(message).split("\n")), "code": int(code)}
    if errors:
        out["errors"] = [" ".join(str(e).split("\n")) for e in errors]
    return out


def check_request(obj: dict) -> tuple[str, dict]:
    """(op, arguments) of a decoded request; ProtocolError naming what is wrong with it."""
    op = obj.get("op")
    if not isinstance(op, str):
        raise ProtocolError('request has no "op" string')
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r} (valid: {', '.join(OPS)})")
    args = {k: v for k, v in obj.items() if k != "op"}
    if op == "command":
        argv = args.get("argv")
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ProtocolError('"command" needs "argv": a list of strings')
        if "stdin" in args and not isinstance(args["stdin"], str):
            raise ProtocolError('"stdin" must be a string')
        if "stream" in args and not isinstance(args["stream"], bool):
            raise ProtocolError('"stream" must be true or false')
    if op == "sysctl" and "set" in args:
        values = args["set"]
        if not isinstance(values, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in values.values()):
            raise ProtocolError('"set" must be an object of integers')
    return op, args


class Unreachable(OSError):
    """The daemon's socket cannot be reached; str() is `cannot reach the daemon at PATH:
    REASON`."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"cannot reach the daemon at {path}: {reason}")


class Client:
    """A blocking connection to the control socket, for one or many requests.

    `Client(path, timeout=30)` connects at once and raises Unreachable if it cannot (no
    socket, no daemon, not allowed); `call()` sends one request and returns the answer as
    a dict (`ok` true or false). A daemon that hangs up mid-answer is Unreachable too.
    """

    def __init__(self, path: str | None = None, timeout: float | None = 30.0):
        self.path = socket_path(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._buf = b""
        try:
            self._sock.connect(self.path)
        except OSError as e:
            self._sock.close()
            raise Unreachable(self.path, e.strerror or str(e)) from None

    def call(self, op: str, **args) -> dict:
        """Send `{"op": op, **args}` and return the daemon's answer."""
        self._send(op, args)
        return self._answer()

    def stream(self, op: str, **args):
        """Send `{"op": op, "stream": true, **args}` and yield the answer's lines as they
        come: the chunks (`{"ok": true, "chunk": text}`), then the last one (done, an error,
        or the one-line answer of a request the daemon does not stream)."""
        self._send(op, {**args, "stream": True})
        while True:
            answer = self._answer()
            yield answer
            if "chunk" not in answer or not answer["ok"]:
                return

    def _send(self, op: str, args: dict) -> None:
        try:
            self._sock.sendall(encode({"op": op, **args}))
        except BrokenPipeError:
            pass         # a refused peer is answered and dropped at once: read the answer
        except socket.timeout:
            raise Unreachable(self.path, "no answer (timed out)") from None
        except OSError as e:
            raise Unreachable(self.path, e.strerror or str(e)) from None

    def _answer(self) -> dict:
        buf = self._buf
        try:
            # look for the newline in what came last only: an answer may be megabytes long
            nl = buf.find(b"\n")
            parts = [buf]
            while nl < 0:
                chunk = self._sock.recv(1 << 16)
                if not chunk:
                    raise Unreachable(self.path, "the daemon closed the connection")
                parts.append(chunk)
                nl = chunk.find(b"\n")
                if nl >= 0:
                    nl += sum(map(len, parts)) - len(chunk)
            buf = b"".join(parts)
        except socket.timeout:
            raise Unreachable(self.path, "no answer (timed out)") from None
        except Unreachable:
            raise
        except OSError as e:
            raise Unreachable(self.path, e.strerror or str(e)) from None
        line, self._buf = buf[:nl], buf[nl + 1:]
        try:
            answer = decode(line)
        except ProtocolError as e:
            raise Unreachable(self.path, f"bad answer: {e}") from None
        if not isinstance(answer.get("ok"), bool):
            raise Unreachable(self.path, 'bad answer: no "ok" field')
        return answer

    def close(self) -> None:
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def call(op: str, path: str | None = None, timeout: float | None = 30.0, **args) -> dict:
    """One request on a fresh connection: `Client(path, timeout).call(op, **args)`."""
    with Client(path, timeout) as c:
        return c.call(op, **args)


__all__ = ["Client", "DEFAULT_SOCKET", "EXIT_LIST", "EXIT_OK", "EXIT_REFUSED", "EXIT_SYNTAX",
           "MAX_LINE", "OPS", "ProtocolError", "SOCKET_ENV", "Unreachable", "call",
           "check_request", "chunk", "decode", "done", "encode", "error", "ok", "socket_path"]
