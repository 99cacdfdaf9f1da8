"""net.connect/accept/listen decoding (agent.net.conn): the kernel record,
filled in from a fake /proc where the kernel could not see."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from agent.net import conn
from agent.net.cluster import ClusterNets
from agent.net.records import OP_NET_ACCEPT, OP_NET_CONNECT, OP_NET_LISTEN, NetConnRec
from agent.net.runtime import read_identity
from tests.fixtures.proc.builder import ProcTree

PID = 4242
TCP_HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
              "   uid  timeout inode\n")


def tcp_line(local: str, remote: str, inode: int) -> str:
    return (f"   0: {local} {remote} 01 00000000:00000000 00:00000000 00000000     0"
            f"        0 {inode} 1 0000000000000000 20 4 30 10 -1\n")


def proc_with_socket(tmp_path: Path, fd: int, inode: int, lines: str = "",
                     table: str = "tcp") -> str:
    tree = ProcTree(tmp_path / "proc")
    tree.add(PID, fds={fd: f"socket:[{inode}]"})
    (tree.root / str(PID) / "net").mkdir()
    for name in ("tcp", "tcp6", "udp", "udp6"):
        (tree.root / str(PID) / "net" / name).write_text(
            TCP_HEADER + (lines if name == table else ""))
    return str(tree.root)


def record(op: int, fd: int, *, family: int = 2, protocol: int = 0, local: str = "",
           lport: int = 0, remote: str = "", rport: int = 0, result: int = 0) -> NetConnRec:
    r = NetConnRec()
    r.h.op, r.h.pid, r.fd, r.family, r.protocol, r.result = op, PID, fd, family, protocol, result
    if local:
        r.have_local, r.local_port = 1, lport
        r.local_addr[:] = list(ipaddress.ip_address(local).packed.ljust(16, b"\0"))
    if remote:
        r.have_remote, r.remote_port = 1, rport
        r.remote_addr[:] = list(ipaddress.ip_address(remote).packed.ljust(16, b"\0"))
    return r


def test_complete_kernel_record_needs_no_proc(tmp_path: Path) -> None:
    r = record(OP_NET_CONNECT, 3, protocol=6, local="10.77.0.1", lport=40000,
               remote="10.77.0.2", rport=29500)
    c = conn.resolve(r, str(tmp_path / "no-proc"))
    assert c is not None
    msg = conn.payload(c, r.result, ClusterNets(["10.77.0.0/24"]))
    assert (msg.family, msg.protocol, msg.local_addr, msg.local_port, msg.remote_addr,
            msg.remote_port, msg.peer_in_cluster, msg.result) == (
        "ipv4", "tcp", "10.77.0.1", 40000, "10.77.0.2", 29500, True, 0)


def test_accept_without_peer_buffer_is_resolved_from_proc(tmp_path: Path) -> None:
    # 10.77.0.2:29500 <- 192.168.77.1:51000, as /proc/net/tcp prints them
    root = proc_with_socket(tmp_path, 7, 999, tcp_line("02004D0A:733C", "014DA8C0:C738", 999))
    c = conn.resolve(record(OP_NET_ACCEPT, 7, family=0, result=7), root)
    assert c is not None
    msg = conn.payload(c, 7, ClusterNets(["10.77.0.0/24"]))
    assert (msg.family, msg.protocol, msg.local_addr, msg.local_port, msg.remote_addr,
            msg.remote_port, msg.peer_in_cluster) == (
        "ipv4", "tcp", "10.77.0.2", 29500, "192.168.77.1", 51000, False)


def test_accept_of_a_unix_socket_is_dropped(tmp_path: Path) -> None:
    root = proc_with_socket(tmp_path, 7, 999)  # a socket, but in no tcp/udp table
    assert conn.resolve(record(OP_NET_ACCEPT, 7, family=0, result=7), root) is None


def test_accept_whose_socket_is_gone_keeps_what_the_kernel_knew(tmp_path: Path) -> None:
    c = conn.resolve(record(OP_NET_ACCEPT, 7, remote="10.0.0.9", rport=5, result=7),
                     str(tmp_path / "no-proc"))
    assert c is not None and (c.local.addr, c.remote.addr, c.protocol) == ("", "10.0.0.9", 0)


def test_udp_connect_gets_protocol_and_local_port_from_proc(tmp_path: Path) -> None:
    root = proc_with_socket(tmp_path, 5, 1234, tcp_line("0100007F:D431", "0100007F:0035", 1234),
                            table="udp")
    c = conn.resolve(record(OP_NET_CONNECT, 5, remote="127.0.0.1", rport=53), root)
    assert c is not None
    assert (c.protocol, c.local.addr, c.local.port, c.remote.port) == (17, "127.0.0.1",
                                                                        54321, 53)


def test_autobound_listen_port_comes_from_proc(tmp_path: Path) -> None:
    root = proc_with_socket(tmp_path, 4, 77, tcp_line("00000000:9C40", "00000000:0000", 77))
    c = conn.resolve(record(OP_NET_LISTEN, 4, protocol=6, local="0.0.0.0", lport=0), root)
    assert c is not None
    msg = conn.payload(c, 0, ClusterNets())
    assert (msg.local_addr, msg.local_port, msg.remote_addr, msg.remote_port) == (
        "0.0.0.0", 40000, "", 0)


def test_identity_for_the_last_flush_of_an_exited_process(tmp_path: Path) -> None:
    tree = ProcTree(tmp_path / "proc")
    tree.add(PID, comm="torchrun", ppid=7, uid=1001, gid=1002)
    ident = read_identity(PID, str(tree.root))
    assert ident is not None
    assert (ident.comm, ident.ppid, ident.uid, ident.gid) == ("torchrun", 7, 1001, 1002)
    assert read_identity(PID + 1, str(tree.root)) is None
