"""The daemon's side of the control socket: THE control API (admin command, tests, health
checker). `run_command()` carries out one ipvsadm command line against a Director;
`ControlServer` serves the wire protocol of fastlvs.control.ctl on a Unix socket, non-blocking,
from the daemon's own loop (no thread ever touches the Director beside the engine's).
"""
from __future__ import annotations

import errno
import logging
import os
import select
import socket
import stat
import struct
import time
from typing import Callable, Iterator

from fastlvs import __version__
from fastlvs.control import ctl
from fastlvs.control.director import describe_noroute
from fastlvs.control.model import NoRoute
from fastlvs.control.listing import format_timeout
from fastlvs.control.model import ControlError
from fastlvs.control.ipvsadm import CommandError, parse_command
from fastlvs.control.rules import RulesError
from fastlvs.control.sysctl import SysctlError
from fastlvs.sync.daemon import SyncError

log = logging.getLogger("fastlvs.control")

MAX_PENDING_OUTPUT = 64 << 20   # answers queued for a client that does not read them
_RECV = 1 << 16
# A -Lc listing is made a slice per loop turn (_ConnStream): at most this many engine slots
# and about this long per turn, shared by every listing in progress, and only while less
# than STREAM_LOW_WATER bytes wait for the client, so forwarding goes on between two slices
# and a client that does not read stops the listing instead of growing its queue.
STREAM_TURN_SLOTS = 4096
STREAM_TURN_SECONDS = 0.001
STREAM_PIECE_SLOTS = 128
STREAM_LOW_WATER = 1 << 20


class Later(Exception):
    """Not answerable yet: a new real server's next hop is being resolved by the kernel.
    The server parks the request and asks again each turn of the loop, until it is
    answered or its wait is over, so forwarding never waits for ARP."""


class CommandFailed(Exception):
    """A command the daemon refused: `message` (one line, ipvsadm's wording), `code` (the
    exit status ipvsadm would give: ctl.EXIT_SYNTAX, EXIT_LIST or EXIT_REFUSED) and
    `errors` (every refusal, for -R; [message] otherwise)."""

    def __init__(self, message: str, code: int, errors: list[str] | None = None):
        self.message = message
        self.code = code
        self.errors = errors or [message]
        super().__init__(message)


def run_command(director, argv: list[str], stdin: str | None = None,
                final: bool = True, sync=None) -> str:
    """Carry out one ipvsadm command line on `director`; return what ipvsadm prints on
    stdout for it ("" for a table change). Raises CommandFailed.

    - Table changes (-A -E -D -C -a -e -d -Z --set) go through Director.execute: refusals
      are the model's ControlError (exit 255, as ipvsadm's `return -1`), and a new real
      server without a next hop is refused with "No route to host" and leaves no trace.
    - -L/-l: the service listing (--stats --rate --thresholds --persistent-conn --tun-info
      --exact --nosort), one service (-t/-u; "No such service" exits 1, as list_service
      does), -c (connection entries), --timeout, --daemon (the running sync daemons).
    - --start-daemon/--stop-daemon: `sync` (sync.daemon.SyncDaemons) starts or stops one;
      its refusals exit 255 with ipvsadm's line ("Daemon has already run", ...). Without
      `sync` they are refused and -L --daemon prints nothing.
    - -S [-n]: ipvsadm-save text. -R: `stdin` is the rules text, ADDED to the current table
      (ipvsadm -R does not clear first); a syntax error anywhere applies nothing (exit 2);
      refused lines are skipped and reported, the others applied (exit 255).
    - -h/-v are the admin command's own business: refused here.
    - `final=False`: a real server whose next hop the kernel is still resolving raises
      Later (nothing changed) instead of the refusal; the caller asks again.
    The argv is parsed again here whatever the client checked: the daemon trusts no client.
    """
    try:
        cmd = parse_command(argv)
    except CommandError as e:
        raise CommandFailed(str(e), ctl.EXIT_SYNTAX) from None
    if cmd.name in ("help", "version"):
        raise CommandFailed(f"{cmd.flag}: ask the admin command, not the daemon",
                            ctl.EXIT_SYNTAX)
    if cmd.name == "list":
        if cmd.connection:
            return director.list_conns(numeric=cmd.numeric,
                                       persistent_conn=cmd.persistent_conn)
        if cmd.list_timeout:
            return format_timeout(director.table)
        if cmd.daemon:
            return sync.listing() if sync is not None else ""
        options = dict(stats=cmd.stats, rate=cmd.rate, exact=cmd.exact, numeric=cmd.numeric,
                       thresholds=cmd.thresholds, persistent_conn=cmd.persistent_conn,
                       tun_info=cmd.tun_info, sort=not cmd.nosort)
        if cmd.service is not None:
            try:
                return director.list(service=cmd.service, **options)
            except ControlError as e:
                raise CommandFailed(str(e), ctl.EXIT_LIST) from None
        return director.list(**options)
    if cmd.name in ("start-daemon", "stop-daemon"):
        return _sync_command(sync, cmd)
    if cmd.name == "save":
        return director.save(cmd.numeric)
    if cmd.name == "restore":
        try:
            errors = director.restore(stdin or "", "-", final)
        except RulesError as e:
            raise CommandFailed(str(e), ctl.EXIT_SYNTAX) from None
        except NoRoute:
            raise Later() from None
        if errors:
            raise CommandFailed(errors[0], ctl.EXIT_REFUSED, errors)
        return ""
    try:
        director.execute(cmd)
    except ControlError as e:
        raise CommandFailed(str(e), ctl.EXIT_REFUSED) from None
    except NoRoute as e:
        if e.pending and not final:
            raise Later() from None
        raise CommandFailed(describe_noroute(cmd, e), ctl.EXIT_REFUSED) from None
    return ""


def _sync_command(sync, cmd) -> str:
    """--start-daemon / --stop-daemon on the process's sync daemons."""
    if sync is None:
        raise CommandFailed(f"{cmd.flag}: this daemon runs no connection sync",
                            ctl.EXIT_REFUSED)
    try:
        if cmd.name == "start-daemon":
            sync.start(cmd.sync)
        else:
            sync.stop(cmd.sync.state)
    except SyncError as e:
        raise CommandFailed(str(e), ctl.EXIT_REFUSED) from None
    return ""


class _Conn:
    __slots__ = ("sock", "rbuf", "wbuf", "closing", "eof", "skipping", "uid", "stream",
                 "parked")

    def __init__(self, sock: socket.socket, uid: int):
        self.sock = sock
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.closing = False     # close once wbuf is flushed
        self.eof = False         # the client has shut down its sending side
        self.skipping = False    # inside a line already refused as too long
        self.uid = uid
        self.stream = None       # a _ConnStream being answered; later requests wait for it
        self.parked = None       # (request line, deadline) waiting for ARP; later ones wait


def _peer_uid(sock: socket.socket) -> int:
    # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
    _pid, uid, _gid = struct.unpack("iII", sock.getsockopt(socket.SOL_SOCKET,
                                                          socket.SO_PEERCRED, 12))
    return uid


class ControlServer:
    """The control socket, serviced from the daemon's loop.

    `ControlServer(director, path=None, reload=None)` binds `path` (ctl.socket_path():
    --socket, $FASTLVS_SOCKET, /run/fastlvs/fastlvs.sock) at once: its directory is
    created with mode 0700 when missing, the socket is created with mode 0600 (umask held
    around bind, so there is no moment when others may connect), a stale socket file left
    by a dead daemon is replaced, and a live one (something answers on it) is OSError
    EADDRINUSE. Peers are accepted only when their SO_PEERCRED uid is 0 or the daemon's
    own; others get one error answer and are disconnected.

    Nothing blocks and no thread is started: `fileno()` is an epoll descriptor that turns
    readable when any client needs service; the loop then calls `handle_ready()`, or calls
    `poll_once(timeout)` itself. Requests are answered in order, each completely, between
    two packet batches. `reload` (settable later as `.reload`) is the "reload" op's hook:
    called as `reload(final)`, it returns a one-line summary, raises to refuse, or raises
    Later when not `final` and the kernel is still resolving a real server.
    A request that raises Later is parked and asked again each turn (later requests of the
    same client wait behind it) until it is answered or `resolve_wait` seconds have passed;
    the last attempt is final. `health` (settable later as `.health`) answers the "health"
    op: called with no argument, it returns the health listing (HealthPolicy.status);
    None: this daemon checks nothing.
    `close()` disconnects every client and removes the socket file (only if it is still
    the one this server made).
    """

    def __init__(self, director, path: str | None = None,
                 reload: Callable[[bool], str | None] | None = None,
                 health: Callable[[], dict] | None = None, resolve_wait: float = 3.0,
                 sync=None):
        self.director = director
        self.sync = sync
        self.path = ctl.socket_path(path)
        self.reload = reload
        self.health = health
        self.resolve_wait = resolve_wait
        self._allowed = {0, os.geteuid()}
        self._conns: dict[int, _Conn] = {}
        self._listen = self._bind(self.path)
        self._ino = os.stat(self.path).st_ino
        self._ep = select.epoll()
        self._ep.register(self._listen.fileno(), select.EPOLLIN)

    @staticmethod
    def _bind(path: str) -> socket.socket:
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        if os.path.lexists(path):
            st = os.lstat(path)
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(errno.EEXIST, f"{path}: exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)          # nobody listens: a dead daemon's socket
            else:
                raise OSError(errno.EADDRINUSE,
                              f"{path}: another fastlvs daemon is listening there")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(path)
        except OSError as e:
            sock.close()
            raise OSError(e.errno, f"{path}: {e.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(path, 0o600)            # in case the umask was ignored (some filesystems)
        sock.listen(64)
        sock.setblocking(False)
        return sock

    # -- the loop's side ---------------------------------------------------------------------
    def fileno(self) -> int:
        """A descriptor that polls readable whenever handle_ready() has work."""
        return self._ep.fileno()

    def handle_ready(self) -> int:
        """Service every client that is ready now, without blocking; returns the number of
        requests answered."""
        return self.poll_once(0)

    def poll_once(self, timeout: float | None = 0) -> int:
        """Wait up to `timeout` seconds (None: forever, 0: not at all) for clients, service
        the ready ones, and return the number of requests answered."""
        answered = 0
        for fd, events in self._ep.poll(-1 if timeout is None else timeout):
            if fd == self._listen.fileno():
                self._accept()
                continue
            conn = self._conns.get(fd)
            if conn is None:
                continue
            if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                answered += self._read(conn)
            if fd in self._conns:
                self._write(conn)
            if fd in self._conns and conn.stream is not None:
                answered += self._advance(conn)
        for conn in [c for c in self._conns.values() if c.parked is not None]:
            answered += self._unpark(conn)
        return answered

    @property
    def waiting(self) -> bool:
        """True while a request waits for the kernel (the loop then comes back soon)."""
        return any(c.parked is not None for c in self._conns.values())

    @property
    def streaming(self) -> bool:
        """True while a connection listing is being answered (the loop may then come
        back sooner: each turn adds one slice)."""
        return any(c.stream is not None for c in self._conns.values())

    def close(self) -> None:
        """Disconnect every client, stop listening and remove the socket file."""
        for conn in list(self._conns.values()):
            self._drop(conn)
        if self._listen.fileno() >= 0:
            self._ep.unregister(self._listen.fileno())
            self._listen.close()
            try:
                if os.stat(self.path).st_ino == self._ino:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
        self._ep.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- connections -------------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:         # EMFILE and the like: try again on the next poll
                log.warning("control socket: accept: %s", e.strerror)
                return
            sock.setblocking(False)
            uid = _peer_uid(sock)
            if uid not in self._allowed:
                try:
                    sock.send(ctl.encode(ctl.error(
                        f"permission denied: uid {uid} may not use the control socket",
                        ctl.EXIT_SYNTAX)))
                except OSError:
                    pass
                sock.close()
                log.warning("control socket: refused a client with uid %d", uid)
                continue
            conn = _Conn(sock, uid)
            self._conns[sock.fileno()] = conn
            self._ep.register(sock.fileno(), select.EPOLLIN)

    def _read(self, conn: _Conn) -> int:
        answered = 0
        try:
            data = conn.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            self._drop(conn)
            return 0
        if not data:
            conn.eof = True
        if conn.closing:
            return 0                     # a client we are hanging up on: ignore the rest
        conn.rbuf += data
        return self._lines(conn)

    def _lines(self, conn: _Conn) -> int:
        answered = 0
        while not conn.closing and conn.stream is None and conn.parked is None:
            nl = conn.rbuf.find(b"\n")
            if conn.skipping:
                # The rest of an over-long line: discard up to its newline, then resume.
                if nl < 0:
                    conn.rbuf.clear()
                    break
                del conn.rbuf[:nl + 1]
                conn.skipping = False
                continue
            if nl < 0:
                if len(conn.rbuf) > ctl.MAX_LINE:
                    # Answered once, now, so the client is not kept waiting; the line is
                    # then skipped and never buffered beyond the limit.
                    conn.wbuf += ctl.encode(ctl.error(
                        f"request longer than {ctl.MAX_LINE} bytes", ctl.EXIT_SYNTAX))
                    answered += 1
                    conn.rbuf.clear()
                    conn.skipping = True
                break
            line = bytes(conn.rbuf[:nl])
            del conn.rbuf[:nl + 1]
            answered += self._answer(conn, line)
        if conn.eof and conn.stream is None and conn.parked is None:
            if conn.rbuf.strip() and not conn.closing and not conn.skipping:
                answered += self._answer(conn, bytes(conn.rbuf))   # last line without "\n"
            conn.rbuf.clear()
            conn.closing = True
        return answered

    def _answer(self, conn: _Conn, line: bytes) -> int:
        if not line.strip():
            return 0
        stream = _ConnStream.of(self.director, line)
        if stream is not None:
            conn.stream = stream         # answered a slice per turn by _advance
            return 1
        try:
            answer = self.handle_request(line, final=False)
        except Later:
            conn.parked = (line, time.monotonic() + self.resolve_wait)
            return 0
        conn.wbuf += ctl.encode(answer)
        if len(conn.wbuf) > MAX_PENDING_OUTPUT:
            log.warning("control socket: dropping a client that does not read its answers")
            conn.wbuf.clear()
            conn.closing = True
        return 1

    def _write(self, conn: _Conn) -> None:
        while conn.wbuf:
            try:
                n = conn.sock.send(conn.wbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(conn)
                return
            del conn.wbuf[:n]
        if not conn.wbuf and conn.closing and conn.stream is None:
            self._drop(conn)
            return
        # After the client's EOF, EPOLLIN would fire for ever: wait for writability only.
        # During a listing, its next slice waits for writability and later requests wait in
        # the socket, unread.
        want = ((0 if conn.eof or conn.stream or conn.parked else select.EPOLLIN)
                | (select.EPOLLOUT if conn.wbuf or conn.stream else 0))
        self._ep.modify(conn.sock.fileno(), want)

    def _advance(self, conn: _Conn) -> int:
        # One slice of a listing, when its client has taken most of the last one: the turn's
        # budget is shared by the listings in progress, so each gets a share every turn.
        # Returns the number of requests answered that waited behind the listing.
        answered = 0
        if len(conn.wbuf) >= STREAM_LOW_WATER:
            return 0
        share = max(1, sum(1 for c in self._conns.values() if c.stream is not None))
        data, finished = conn.stream.advance(max(STREAM_PIECE_SLOTS, STREAM_TURN_SLOTS // share),
                                             STREAM_TURN_SECONDS / share)
        conn.wbuf += data
        if finished:
            conn.stream = None
            answered = self._lines(conn)     # requests that came behind the listing
        self._write(conn)
        return answered

    def _unpark(self, conn: _Conn) -> int:
        line, deadline = conn.parked
        try:
            answer = self.handle_request(line, final=time.monotonic() >= deadline)
        except Later:
            return 0
        conn.parked = None
        conn.wbuf += ctl.encode(answer)
        answered = 1 + self._lines(conn)     # requests that came behind it
        self._write(conn)
        return answered

    def _drop(self, conn: _Conn) -> None:
        conn.stream = None
        fd = conn.sock.fileno()
        if self._conns.pop(fd, None) is not None:
            self._ep.unregister(fd)
        conn.sock.close()

    # -- requests ----------------------------------------------------------------------------
    def handle_request(self, line: bytes, final: bool = True) -> dict:
        """The answer (a ctl response dict) to one request line. Never raises, but Later
        when not `final` (see the class): a malformed request, an unknown op or a failure
        inside the director is an error answer."""
        try:
            op, args = ctl.check_request(ctl.decode(line))
        except ctl.ProtocolError as e:
            return ctl.error(str(e), ctl.EXIT_SYNTAX)
        except RecursionError:          # JSON nested deeper than the interpreter's stack
            return ctl.error("not a JSON line: nested too deeply", ctl.EXIT_SYNTAX)
        try:
            if op == "command":
                return ctl.ok(run_command(self.director, args["argv"], args.get("stdin"),
                                          final, self.sync))
            if op == "counters":
                counters = self.director.counters()
                if self.sync is not None:
                    counters["sync"] = self._sync_counters()
                return ctl.ok(counters)
            if op == "ping":
                return ctl.ok({"pid": os.getpid(), "version": __version__})
            if op == "sysctl":
                try:
                    if "set" in args:
                        self.director.apply_sysctls(args["set"])
                except SysctlError as e:
                    return ctl.error(str(e), ctl.EXIT_REFUSED)
                return ctl.ok(self.director.sysctls())
            if op == "health":
                if self.health is None:
                    return ctl.error("health: this daemon runs no health checks (no "
                                     "keepalived.conf)", ctl.EXIT_SYNTAX)
                return ctl.ok(self.health())
            if op == "reload":
                if self.reload is None:
                    return ctl.error("reload: this daemon has no configuration to reload",
                                     ctl.EXIT_SYNTAX)
                try:
                    return ctl.ok(self.reload(final))
                except Later:
                    raise
                except Exception as e:   # the hook's refusal, shown to the admin as is
                    return ctl.error(f"reload: {e}", ctl.EXIT_LIST)
        except CommandFailed as e:
            return ctl.error(e.message, e.code, e.errors if len(e.errors) > 1 else None)
        except Later:
            raise
        except Exception as e:           # a bug must not take the daemon down
            log.exception("control socket: %s request failed", op)
            return ctl.error(f"internal error: {type(e).__name__}: {e}", ctl.EXIT_LIST)
        return ctl.error(f"unknown op {op!r}", ctl.EXIT_SYNTAX)   # pragma: no cover

    def _sync_counters(self) -> dict:
        """The "sync" part of the counters: the engine's sync counters (sent, received,
        installed, drop_*, ...) and the sockets' (messages, bytes, errors, lag) under
        "daemons"."""
        out = dict(self.director.sync_stats())
        out["daemons"] = self.sync.stats()
        return out


class _ConnStream:
    """One `-Lc` answer in the making (Director.iter_conns), a slice per loop turn.

    A request with `"stream": true` is answered in the streaming form of ctl (chunk lines,
    then a done line); any other gets the one answer line of old clients, written as it is
    made: `{"result":"` then the JSON-escaped text slice by slice, then `","ok":true}`. An
    error midway ends either with ok false and the error (the text so far stays with
    the client, who is told it is incomplete).
    """

    __slots__ = ("pieces", "chunked", "started")

    def __init__(self, pieces: Iterator[str], chunked: bool):
        self.pieces = pieces
        self.chunked = chunked
        self.started = False

    @classmethod
    def of(cls, director, line: bytes) -> "_ConnStream | None":
        """The stream answering `line` if it is a well-formed -Lc command, else None (the
        request then takes the usual path, which also answers what is wrong with it)."""
        try:
            op, args = ctl.check_request(ctl.decode(line))
            if op != "command":
                return None
            cmd = parse_command(args["argv"])
        except (ctl.ProtocolError, CommandError):
            return None
        if cmd.name != "list" or not cmd.connection:
            return None
        return cls(director.iter_conns(persistent_conn=cmd.persistent_conn,
                                       slice_size=STREAM_PIECE_SLOTS),
                   args.get("stream") is True)

    def advance(self, slots: int, seconds: float) -> tuple[bytes, bool]:
        """(wire bytes, finished) for up to `slots` engine slots or about `seconds`."""
        text = []
        finished = False
        error = None
        deadline = time.monotonic() + seconds
        try:
            for _ in range(max(1, slots // STREAM_PIECE_SLOTS) + (0 if self.started else 1)):
                text.append(next(self.pieces))
                if time.monotonic() >= deadline:
                    break
        except StopIteration:
            finished = True
        except Exception as e:           # a bug must not take the daemon down
            log.exception("control socket: connection listing failed")
            finished = True
            error = f"internal error: {type(e).__name__}: {e} (the listing is incomplete)"
        body = "".join(text)
        out = []
        if self.chunked:
            if body:
                out.append(ctl.encode(ctl.chunk(body)))
            if finished:
                out.append(ctl.encode(ctl.error(error, ctl.EXIT_LIST) if error else ctl.done()))
        else:
            if not self.started:
                out.append(b'{"result":"')
            out.append(ctl.encode(body)[1:-2])     # the string's JSON escape, no quotes
            if finished:
                tail = ctl.error(error, ctl.EXIT_LIST) if error else {"ok": True}
                out.append(b'",' + ctl.encode(tail)[1:])   # joined to the open object
        self.started = True
        return b"".join(out), finished


__all__ = ["CommandFailed", "ControlServer", "run_command"]
