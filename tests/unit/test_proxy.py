"""The fault-test TCP proxy (tests/integration/proxy.py) over real loopback sockets."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.integration.proxy import TcpProxy, parse_address

# Generous: these bound waits for things that must happen, never a measured time.
WAIT_S = 10.0


class EchoServer:
    """Echoes every byte back; closes its side after the client's FIN."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self._threads: list[threading.Thread] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            t = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy(echo.address) as p:
        yield p


def connect(proxy: TcpProxy, timeout: float = WAIT_S) -> socket.socket:
    return socket.create_connection(parse_address(proxy.address), timeout=timeout)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` while reading the echo (a big payload would fill both buffers)."""
    sender = threading.Thread(target=sock.sendall, args=(payload,))
    sender.start()
    try:
        return recv_exactly(sock, len(payload))
    finally:
        sender.join()


def wait_for(pred: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S}s: {what}")
        time.sleep(0.01)


def is_cut(sock: socket.socket) -> bool:
    """The proxy reset this connection: the next read fails or sees EOF."""
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_bytes_pass_both_ways_and_are_counted(proxy: TcpProxy) -> None:
    payload = os.urandom(3 * 1024 * 1024)  # more than the proxy buffers at once
    with connect(proxy) as sock:
        assert roundtrip(sock, payload) == payload
        assert roundtrip(sock, b"ping") == b"ping"
    stats = proxy.stats()
    assert stats.connections == 1
    assert stats.bytes_up == stats.bytes_down == len(payload) + 4


def test_many_connections_at_once(proxy: TcpProxy, echo: EchoServer) -> None:
    socks = [connect(proxy) for _ in range(20)]
    for i, sock in enumerate(socks):
        sock.sendall(f"conn {i}".encode())
    for i, sock in enumerate(socks):
        assert recv_exactly(sock, len(f"conn {i}")) == f"conn {i}".encode()
    assert proxy.stats().active == 20
    assert echo.accepted == 20
    for sock in socks:
        sock.close()
    wait_for(lambda: proxy.stats().active == 0, "closed connections leave the proxy")


def test_a_clean_close_is_forwarded_after_the_data(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)  # FIN: the echo server answers, then closes
        assert recv_exactly(sock, 10) == b"last words"
        assert sock.recv(1) == b""
    wait_for(lambda: proxy.stats().active == 0, "the half-closed pair is closed")
    assert proxy.stats().resets == 0


def test_cut_resets_every_live_connection(proxy: TcpProxy) -> None:
    socks = [connect(proxy) for _ in range(3)]
    for sock in socks:
        assert roundtrip(sock, b"hello") == b"hello"
    assert proxy.cut() == 3
    for sock in socks:
        with pytest.raises(ConnectionResetError):  # RST, not a clean FIN
            sock.recv(1)
        sock.close()
    stats = proxy.stats()
    assert (stats.cuts, stats.resets, stats.active) == (1, 3, 0)


def test_new_connections_work_after_a_cut(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock, b"a") == b"a"
        proxy.cut()
    with connect(proxy) as sock:
        assert roundtrip(sock, b"b") == b"b"
    assert proxy.stats().connections == 2


def test_cut_with_no_connections_counts_the_cut(proxy: TcpProxy) -> None:
    assert proxy.cut() == 0
    assert (proxy.stats().cuts, proxy.stats().resets) == (1, 0)


def test_block_hangs_the_connection_and_unblock_delivers(proxy: TcpProxy) -> None:
    with connect(proxy, timeout=0.3) as sock:
        assert roundtrip(sock, b"before") == b"before"
        proxy.block()
        assert proxy.blocked
        sock.sendall(b"during")
        with pytest.raises(TimeoutError):  # nothing comes back, nothing closes
            sock.recv(1)
        proxy.unblock()
        sock.settimeout(WAIT_S)
        assert recv_exactly(sock, 6) == b"during"
    assert proxy.stats().resets == 0


def test_block_holds_new_connections_until_unblock(proxy: TcpProxy, echo: EchoServer) -> None:
    proxy.block()
    # The kernel completes the handshake (listen backlog); the proxy does not accept.
    with connect(proxy, timeout=0.3) as sock:
        sock.sendall(b"queued")
        with pytest.raises(TimeoutError):
            sock.recv(1)
        assert echo.accepted == 0
        proxy.unblock()
        sock.settimeout(WAIT_S)
        assert recv_exactly(sock, 6) == b"queued"
    assert echo.accepted == 1


def test_cut_every_keeps_cutting_until_stopped(proxy: TcpProxy) -> None:
    proxy.cut_every(0.05)
    for _ in range(3):  # each new connection is cut in turn
        with connect(proxy) as sock:
            wait_for(lambda s=sock: is_cut(s), "a timed cut")  # type: ignore[misc]
    proxy.cut_every(None)
    cuts = proxy.stats().cuts
    assert cuts >= 3 and proxy.stats().resets >= 3
    with connect(proxy) as sock:
        assert roundtrip(sock, b"calm again") == b"calm again"
    assert proxy.stats().cuts == cuts


def test_cut_every_rejects_a_non_positive_interval(proxy: TcpProxy) -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        proxy.cut_every(0)


def test_unreachable_target_resets_the_client_and_is_counted() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        dead = f"127.0.0.1:{placeholder.getsockname()[1]}"
    with TcpProxy(dead) as proxy, connect(proxy) as sock:
        wait_for(lambda: is_cut(sock), "the client is reset")
        assert proxy.stats().connect_failures == 1


def test_stop_resets_connections_and_stops_listening(echo: EchoServer) -> None:
    proxy = TcpProxy(echo.address).start()
    sock = connect(proxy)
    assert roundtrip(sock, b"x") == b"x"
    proxy.stop()
    assert is_cut(sock)
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        connect(proxy).close()
    with pytest.raises(RuntimeError, match="not running"):
        proxy.cut()


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_address("[::1]:443") == ("::1", 443)
    with pytest.raises(ValueError):
        parse_address("localhost")
