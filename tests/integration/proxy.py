"""A TCP proxy for fault tests: cut connections, hang them, or cut them on a timer.

One I/O thread owns every socket (a ``selectors`` loop); the public methods
only post a command to it and wait until it is done, so when ``cut()`` returns
every connection that was live has been reset, and no socket is ever touched
from two threads.

    with TcpProxy("127.0.0.1:50051") as proxy:
        agent = Agent(proxy.address, ...)     # the agent talks to the proxy
        proxy.cut()                           # RST both sides of every connection
        proxy.block(); ...; proxy.unblock()   # a partition: nothing moves, nothing closes
        proxy.cut_every(0.5)                  # a flaky network, until cut_every(None)

A blocked proxy neither reads, writes nor accepts. The kernel still completes
the TCP handshake of new connections (up to the listen backlog), so a client
sees a connection that never answers, as behind a partition that drops
packets rather than one that refuses them.
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

CHUNK = 64 * 1024
# Stop reading from one side while this much is waiting to be written to the
# other: a slow reader slows the writer down (TCP backpressure end to end)
# instead of growing the proxy's memory.
MAX_PENDING = 1024 * 1024
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ProxyStats:
    """Counters since start; a snapshot."""

    connections: int = 0       # client connections accepted
    active: int = 0            # connections open now
    cuts: int = 0              # cut() calls and timed cuts
    resets: int = 0            # connections reset by a cut
    connect_failures: int = 0  # the target refused or did not answer
    bytes_up: int = 0          # client -> target
    bytes_down: int = 0        # target -> client


class _Side:
    """One socket of a proxied connection and what waits to be written to it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = bytearray()   # bytes read from the other side, not yet sent here
        self.eof = False         # this side sent FIN (recv returned b"")
        self.shut_wr = False     # we forwarded the other side's FIN here


class _Conn:
    """A client connection and its connection to the target."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = _Side(client)
        self.upstream = _Side(upstream)

    def other(self, side: _Side) -> _Side:
        return self.upstream if side is self.client else self.client

    def done(self) -> bool:
        """Both directions closed and flushed."""
        return self.client.shut_wr and self.upstream.shut_wr


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) into a (host, port) pair."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class TcpProxy:
    """Forwards TCP connections from ``listen`` to ``target`` until stopped."""

    def __init__(self, target: str, listen: str = "127.0.0.1:0") -> None:
        """Prepare a proxy to ``target`` (``HOST:PORT``); :meth:`start` binds ``listen``."""
        self.target = parse_address(target)
        self._listen_at = parse_address(listen)
        self._sel = selectors.DefaultSelector()
        self._commands: queue.Queue[tuple[Callable[[], object], threading.Event, list[object]]]
        self._commands = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._conns: dict[socket.socket, tuple[_Conn, _Side]] = {}
        self._blocked = False
        self._running = False
        self._cut_interval: float | None = None
        self._next_cut = 0.0
        self._stats = ProxyStats()
        self.port = 0

    # -- public API (any thread) ----------------------------------------------

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: where clients should connect."""
        return f"{self._listen_at[0]}:{self.port}"

    def start(self) -> TcpProxy:
        """Bind, start the I/O thread, return self."""
        self._listener = socket.create_server(self._listen_at, backlog=128)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="tcp-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Reset every connection, close the listener and end the I/O thread."""
        if self._thread is None:
            return
        if self._thread.is_alive():
            self._call(self._shutdown)
            self._thread.join(10)
        self._thread = None
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cut(self) -> int:
        """Reset (RST) both sides of every live connection now; returns how many."""
        result = self._call(self._cut_all)
        assert isinstance(result, int)
        return result

    def block(self) -> None:
        """Stop forwarding and accepting; connections stay open but nothing moves."""
        self._call(lambda: self._set_blocked(True))

    def unblock(self) -> None:
        """Resume forwarding what waited, and accept the connections that queued."""
        self._call(lambda: self._set_blocked(False))

    def cut_every(self, interval_s: float | None) -> None:
        """Cut all connections every ``interval_s`` seconds; None stops it."""
        if interval_s is not None and interval_s <= 0:
            raise ValueError("interval_s must be greater than 0")
        self._call(lambda: self._set_cut_interval(interval_s))

    @property
    def blocked(self) -> bool:
        """True between block() and unblock()."""
        return self._blocked

    def stats(self) -> ProxyStats:
        """The counters, as of the last finished I/O step."""
        return self._stats

    # -- commands run on the I/O thread ----------------------------------------

    def _call(self, fn: Callable[[], object]) -> object:
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("proxy is not running (call start())")
        done = threading.Event()
        result: list[object] = []
        self._commands.put((fn, done, result))
        with contextlib.suppress(BlockingIOError):
            self._wake_w.send(b"x")
        if not done.wait(10):
            raise RuntimeError("proxy I/O thread did not answer within 10 s")
        return result[0] if result else None

    def _run_commands(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)
        while True:
            try:
                fn, done, result = self._commands.get_nowait()
            except queue.Empty:
                return
            result.append(fn())
            done.set()

    def _set_blocked(self, blocked: bool) -> None:
        self._blocked = blocked

    def _set_cut_interval(self, interval_s: float | None) -> None:
        self._cut_interval = interval_s
        if interval_s is not None:
            self._next_cut = time.monotonic() + interval_s

    def _cut_all(self) -> int:
        conns = {conn for conn, _ in self._conns.values()}
        for conn in conns:
            self._close(conn, reset=True)
        self._count(cuts=1, resets=len(conns))
        return len(conns)

    def _shutdown(self) -> None:
        for conn in {conn for conn, _ in self._conns.values()}:
            self._close(conn, reset=True)
        assert self._listener is not None
        self._listener.close()
        self._running = False

    # -- the I/O loop ------------------------------------------------------------

    def _loop(self) -> None:
        while self._running:
            self._update_interest()
            for key, events in self._sel.select(self._select_timeout()):
                self._dispatch(key.fileobj, events)  # type: ignore[arg-type]
            self._maybe_timed_cut()

    def _select_timeout(self) -> float | None:
        if self._cut_interval is None:
            return None
        return max(0.0, self._next_cut - time.monotonic())

    def _maybe_timed_cut(self) -> None:
        if self._cut_interval is not None and time.monotonic() >= self._next_cut:
            self._cut_all()
            self._next_cut = time.monotonic() + self._cut_interval

    def _dispatch(self, sock: socket.socket, events: int) -> None:
        if sock is self._wake_r:
            self._run_commands()
        elif sock is self._listener:
            self._accept()
        elif sock in self._conns:
            conn, side = self._conns[sock]
            if events & selectors.EVENT_WRITE:
                self._flush(conn, side)
            if events & selectors.EVENT_READ and sock in self._conns:
                self._pump(conn, side)

    def _update_interest(self) -> None:
        """(Re)register every socket for what it can do now; O(connections) per step."""
        if self._listener is not None and self._running:
            self._want(self._listener, 0 if self._blocked else selectors.EVENT_READ)
        for sock, (conn, side) in self._conns.items():
            mask = 0
            if not self._blocked:
                if not side.eof and len(conn.other(side).out) < MAX_PENDING:
                    mask |= selectors.EVENT_READ
                if side.out:
                    mask |= selectors.EVENT_WRITE
            self._want(sock, mask)

    def _want(self, sock: socket.socket, mask: int) -> None:
        try:
            key = self._sel.get_key(sock)
        except KeyError:
            if mask:
                self._sel.register(sock, mask)
            return
        if not mask:
            self._sel.unregister(sock)
        elif key.events != mask:
            self._sel.modify(sock, mask)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            # Blocking connect on purpose: the target is a local test server,
            # and a refused connect must reset the client right away.
            upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT_S)
        except OSError:
            # count first: the client may look at the counters the moment it is reset
            self._count(connect_failures=1)
            _reset(client)
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(client, upstream)
        self._conns[client] = (conn, conn.client)
        self._conns[upstream] = (conn, conn.upstream)
        self._count(connections=1)

    def _pump(self, conn: _Conn, side: _Side) -> None:
        """Read what ``side`` sent and queue it for the other side."""
        try:
            data = side.sock.recv(CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn, reset=True)  # pass a reset on as a reset
            return
        other = conn.other(side)
        if not data:
            side.eof = True
        else:
            other.out += data
            self._count_bytes(side is conn.client, len(data))
        self._flush(conn, other)

    def _flush(self, conn: _Conn, side: _Side) -> None:
        """Write what waits for ``side``; forward a FIN once everything before it went."""
        try:
            while side.out:
                sent = side.sock.send(side.out)
                del side.out[:sent]
        except BlockingIOError:
            return
        except OSError:
            self._close(conn, reset=True)
            return
        if conn.other(side).eof and not side.shut_wr:
            with contextlib.suppress(OSError):
                side.sock.shutdown(socket.SHUT_WR)
            side.shut_wr = True
        if conn.done():
            self._close(conn, reset=False)

    def _close(self, conn: _Conn, reset: bool) -> None:
        for side in (conn.client, conn.upstream):
            if self._conns.pop(side.sock, None) is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(side.sock)
            if reset:
                _reset(side.sock)
            else:
                side.sock.close()
        self._stats = replace(self._stats, active=len(self._conns) // 2)

    def _count(self, **deltas: int) -> None:
        values = {k: getattr(self._stats, k) + v for k, v in deltas.items()}
        self._stats = replace(self._stats, **values, active=len(self._conns) // 2)

    def _count_bytes(self, up: bool, n: int) -> None:
        self._count(**{"bytes_up" if up else "bytes_down": n})


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()

