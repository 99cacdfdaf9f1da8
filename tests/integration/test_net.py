"""net.connect / net.accept / net.listen / net.flow end to end: real GPU
processes (they open a GPU-named device node first) make real TCP
connections, on loopback and across two network namespaces joined by a veth
pair; a real eBPF agent reports them over real gRPC into the collector."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.capabilities import require
from tests.integration.harness import Agent, Collector, null_device, ready_agent, settle, wait_for

pytestmark = [pytest.mark.bpf, pytest.mark.integration]

NODE = "net-node"
CLUSTER = "10.77.0.0/24"  # the veth test's inside network; 192.168.77.0/24 is outside
TO_SERVER = 1_000_003  # bytes each client sends (prime: no accidental multiple)
TO_CLIENT = 23 * 1009  # bytes the server answers with

# A process that first becomes a GPU process (argv[1]: a GPU node, or "-" for
# none), then serves or connects. Every exchange is exact: the client sends
# TO_SERVER bytes, the server reads all of them and answers TO_CLIENT bytes.
PEER = f"""
import os, socket, sys
TO_SERVER, TO_CLIENT = {TO_SERVER}, {TO_CLIENT}
node, role, host = sys.argv[1], sys.argv[2], sys.argv[3]
if node != "-":
    gpu = os.open(node, os.O_RDWR)

def read_exactly(s, n):
    got = 0
    while got < n:
        chunk = s.recv(min(65536, n - got))
        assert chunk, "peer closed early"
        got += len(chunk)

if role == "server":
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack
    srv.bind((host, 0))
    srv.listen(8)
    print(srv.getsockname()[1], flush=True)
    for _ in range(int(sys.argv[4])):
        conn, _ = srv.accept()
        read_exactly(conn, TO_SERVER)
        conn.sendall(b"s" * TO_CLIENT)
        conn.close()  # the kernel knows the accept's addresses: no /proc needed
else:
    for target in sys.argv[4:]:
        s = socket.create_connection((target, int(host)))
        print(s.getsockname()[1], flush=True)
        s.sendall(b"c" * TO_SERVER)
        read_exactly(s, TO_CLIENT)
        s.close()
"""


@pytest.fixture(scope="module")
def net_agent(collector: Collector, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """An eBPF agent with cluster CIDRs and a 1-second net.flow interval."""
    from tests.capabilities import require_bpf

    require_bpf()
    log = tmp_path_factory.mktemp("net-agent") / "agent.log"
    agent = ready_agent(collector, NODE, "ebpf", log, "--cluster-cidrs", CLUSTER,
                        "--net-flow-interval", "1")
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def gpu_node() -> Iterator[Path]:
    """A node of our own under the GPU prefix whose open succeeds (/dev/null's
    1:3): the shared null_gpu_node is removed by other modules' teardown."""
    with null_device(Path(f"/dev/nvidia-gpuaudit-net-{os.getpid()}")) as path:
        yield path


def _start(args: list[str], prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen([*prefix, sys.executable, "-c", PEER, *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _line(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip().isdigit(), f"peer failed (rc={proc.poll()})"
    return int(line)


def _finish(*procs: subprocess.Popen[str]) -> None:
    for p in procs:
        p.communicate("", timeout=60)
        assert p.returncode == 0


def _flows(col: Collector, pid: int) -> dict[tuple[str, int], tuple[int, int, bool]]:
    """(remote_addr, remote_port) -> summed (sent, received), peer_in_cluster."""
    out: dict[tuple[str, int], tuple[int, int, bool]] = {}
    for ev in col.query(types=["net.flow"], pid=pid):
        f = ev.net_flow
        sent, received, _ = out.get((f.remote_addr, f.remote_port), (0, 0, False))
        out[(f.remote_addr, f.remote_port)] = (sent + f.bytes_sent,
                                               received + f.bytes_received, f.peer_in_cluster)
    return out


def _wait_flows(col: Collector, pid: int, peers: int) -> dict[tuple[str, int],
                                                            tuple[int, int, bool]]:
    """The flows of ``pid`` once each of ``peers`` peers has its full byte count."""
    def done() -> bool:
        flows = _flows(col, pid)
        full = [f for f in flows.values() if f[0] + f[1] >= TO_SERVER + TO_CLIENT]
        return len(full) >= peers
    wait_for(done, timeout=60)
    return _flows(col, pid)


def _conn(ev: object) -> tuple[object, ...]:
    c = getattr(ev, ev.type.replace(".", "_"))  # type: ignore[attr-defined]
    return (c.family, c.protocol, c.local_addr, c.local_port, c.remote_addr, c.remote_port,
            c.peer_in_cluster, c.result)


@pytest.mark.parametrize(("bind", "connect", "family", "seen"), [
    ("127.0.0.1", "127.0.0.1", "ipv4", "127.0.0.1"),
    ("::1", "::1", "ipv6", "::1"),
    # a dual-stack server: the v4 client arrives v4-mapped and is named as v4
    ("::", "127.0.0.1", "ipv4", "127.0.0.1"),
])
def test_tcp_on_loopback_between_two_gpu_processes(collector: Collector, net_agent: Agent,
                                                   gpu_node: Path, bind: str,
                                                   connect: str, family: str,
                                                   seen: str) -> None:
    server = _start([str(gpu_node), "server", bind, "1"])
    port = _line(server)
    client = _start([str(gpu_node), "client", str(port), connect])
    cport = _line(client)
    _finish(client, server)

    flows = _wait_flows(collector, client.pid, 1)
    assert flows == {(seen, port): (TO_SERVER, TO_CLIENT, True)}  # loopback: inside
    flows = _wait_flows(collector, server.pid, 1)
    assert flows == {(seen, cport): (TO_CLIENT, TO_SERVER, True)}

    (conn,) = collector.query(types=["net.connect"], pid=client.pid)
    assert _conn(conn) == (family, "tcp", seen, cport, seen, port, True, 0)
    (listen,) = collector.query(types=["net.listen"], pid=server.pid)
    assert _conn(listen) == ("ipv4" if bind == "127.0.0.1" else "ipv6", "tcp", bind, port,
                             "", 0, False, 0)
    (accept,) = collector.query(types=["net.accept"], pid=server.pid)
    local = seen if bind == "::" else bind
    assert _conn(accept)[:7] == (family, "tcp", local, port, seen, cport, True)
    assert accept.net_accept.result >= 0  # the new fd
    assert conn.process.pid == client.pid and accept.process.pid == server.pid


def test_non_gpu_process_connections_yield_nothing(collector: Collector,
                                                   net_agent: Agent) -> None:
    server = _start(["-", "server", "127.0.0.1", "1"])
    port = _line(server)
    client = _start(["-", "client", str(port), "127.0.0.1"])
    _line(client)
    _finish(client, server)
    # a GPU process's exchange after theirs: once its flow is stored, theirs would be too
    settle(collector, NODE)
    for pid in (client.pid, server.pid):
        assert collector.query(types=["net.connect", "net.accept", "net.listen", "net.flow"],
                               pid=pid) == []


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def veth_netns(request: pytest.FixtureRequest) -> str:
    """A network namespace joined to this one by a veth pair carrying two
    networks: 10.77.0.0/24 (the cluster) and 192.168.77.0/24 (outside).
    Here: .1 on both; in the namespace: .2 on both."""
    from shutil import which

    require(which("ip") is not None, "needs iproute2's ip")
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"ga-net-{tag}", f"gah{tag}", f"gan{tag}"
    _ip("netns", "add", ns)
    request.addfinalizer(lambda: subprocess.run(["ip", "netns", "del", ns], check=False))
    _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
    request.addfinalizer(lambda: subprocess.run(["ip", "link", "del", host_if], check=False))
    _ip("link", "set", ns_if, "netns", ns)
    for addr in ("10.77.0.1/24", "192.168.77.1/24"):
        _ip("addr", "add", addr, "dev", host_if)
    _ip("link", "set", host_if, "up")
    for addr in ("10.77.0.2/24", "192.168.77.2/24"):
        _ip("-n", ns, "addr", "add", addr, "dev", ns_if)
    _ip("-n", ns, "link", "set", ns_if, "up")
    _ip("-n", ns, "link", "set", "lo", "up")
    return ns


def test_tcp_across_netns_peer_in_cluster_from_cidrs(collector: Collector, net_agent: Agent,
                                                     gpu_node: Path,
                                                     veth_netns: str) -> None:
    server = _start([str(gpu_node), "server", "0.0.0.0", "2"],
                    prefix=("ip", "netns", "exec", veth_netns))
    port = _line(server)
    client = _start([str(gpu_node), "client", str(port), "10.77.0.2", "192.168.77.2"])
    inside_port, outside_port = _line(client), _line(client)
    _finish(client, server)

    assert _wait_flows(collector, client.pid, 2) == {
        ("10.77.0.2", port): (TO_SERVER, TO_CLIENT, True),
        ("192.168.77.2", port): (TO_SERVER, TO_CLIENT, False),
    }
    assert _wait_flows(collector, server.pid, 2) == {
        ("10.77.0.1", inside_port): (TO_CLIENT, TO_SERVER, True),
        ("192.168.77.1", outside_port): (TO_CLIENT, TO_SERVER, False),
    }
    connects = sorted(_conn(e) for e in collector.query(types=["net.connect"], pid=client.pid))
    assert connects == [
        ("ipv4", "tcp", "10.77.0.1", inside_port, "10.77.0.2", port, True, 0),
        ("ipv4", "tcp", "192.168.77.1", outside_port, "192.168.77.2", port, False, 0),
    ]
    accepts = sorted(_conn(e)[:7] for e in collector.query(types=["net.accept"], pid=server.pid))
    assert accepts == [
        ("ipv4", "tcp", "10.77.0.2", port, "10.77.0.1", inside_port, True),
        ("ipv4", "tcp", "192.168.77.2", port, "192.168.77.1", outside_port, False),
    ]
    (listen,) = collector.query(types=["net.listen"], pid=server.pid)
    assert _conn(listen) == ("ipv4", "tcp", "0.0.0.0", port, "", 0, False, 0)


DATAGRAMS, DATAGRAM_SIZE = 23, 1201

# UDP and non-blocking TCP connects of a GPU process. It prints its ports and
# the connect's errno, then holds its sockets until stdin closes.
OTHER_CONNECTS = f"""
import os, socket, sys
gpu = os.open(sys.argv[1], os.O_RDWR)
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tx.connect(rx.getsockname())
for _ in range({DATAGRAMS}):
    tx.send(b"u" * {DATAGRAM_SIZE})
for _ in range({DATAGRAMS}):
    assert len(rx.recv(65536)) == {DATAGRAM_SIZE}
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
nb = socket.socket()
nb.setblocking(False)
err = nb.connect_ex(srv.getsockname())
print(tx.getsockname()[1], rx.getsockname()[1], nb.getsockname()[1], srv.getsockname()[1], err,
      flush=True)
sys.stdin.read()
"""


def test_udp_and_nonblocking_connects(collector: Collector, net_agent: Agent,
                                      gpu_node: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", OTHER_CONNECTS, str(gpu_node)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    tx, rx, nb, srv, err = (int(v) for v in proc.stdout.readline().split())
    try:
        wait_for(lambda: len(collector.query(types=["net.connect"], pid=proc.pid)) >= 2)
    finally:
        _finish(proc)
    udp, tcp = sorted((_conn(e) for e in collector.query(types=["net.connect"], pid=proc.pid)),
                      key=lambda c: c[1], reverse=True)
    # UDP: the protocol and local port come from /proc (no TCP state change to see)
    assert udp == ("ipv4", "udp", "127.0.0.1", tx, "127.0.0.1", rx, True, 0)
    # EINPROGRESS (or 0 if loopback completed it at once): the local port was
    # bound inside connect(2), after the kernel's SYN_SENT saw the socket
    assert tcp == ("ipv4", "tcp", "127.0.0.1", nb, "127.0.0.1", srv, True, -err)
    # UDP bytes are exact, but no tracepoint ties a UDP socket to its peer
    udp_total = DATAGRAMS * DATAGRAM_SIZE
    wait_for(lambda: _flows(collector, proc.pid).get(("", 0), (0, 0))[:2] >= (udp_total,
                                                                            udp_total))
    flows = collector.query(types=["net.flow"], pid=proc.pid)
    assert {(f.net_flow.family, f.net_flow.protocol) for f in flows
            if not f.net_flow.remote_addr} == {("ipv4", "udp")}
    assert _flows(collector, proc.pid)[("", 0)] == (udp_total, udp_total, False)


# listen(2) without bind(2) (the kernel picks the port after the state change
# the sensor sees) and accept(fd, NULL, NULL) (no peer address from the
# caller): both are completed from /proc while the sockets are held open.
AUTOBIND_SERVER = """
import ctypes, os, socket, sys
gpu = os.open(sys.argv[1], os.O_RDWR)
srv = socket.socket()
srv.listen(1)
print(srv.getsockname()[1], flush=True)
fd = ctypes.CDLL(None, use_errno=True).accept(srv.fileno(), None, None)
assert fd >= 0, ctypes.get_errno()
conn = socket.socket(fileno=fd)
print(conn.getpeername()[1], flush=True)
sys.stdin.read()
"""


def test_autobound_listen_and_accept_without_address(collector: Collector, net_agent: Agent,
                                                     gpu_node: Path) -> None:
    server = subprocess.Popen([sys.executable, "-c", AUTOBIND_SERVER, str(gpu_node)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = _line(server)
        # the test itself is the client (not a GPU process: its side is not reported)
        with socket.create_connection(("127.0.0.1", port)) as client:
            cport = client.getsockname()[1]
            assert _line(server) == cport
            wait_for(lambda: collector.query(types=["net.accept"], pid=server.pid))
    finally:
        _finish(server)
    (listen,) = collector.query(types=["net.listen"], pid=server.pid)
    assert _conn(listen) == ("ipv4", "tcp", "0.0.0.0", port, "", 0, False, 0)
    (accept,) = collector.query(types=["net.accept"], pid=server.pid)
    assert _conn(accept)[:7] == ("ipv4", "tcp", "127.0.0.1", port, "127.0.0.1", cport, True)
