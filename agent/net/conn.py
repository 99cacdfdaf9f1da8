"""net.connect / net.accept / net.listen: a kernel record -> NetConnection.

The kernel fills what the syscall and TCP's state tracepoint told it; the
rest is looked up in /proc through the fd (agent.net.procnet). A field that
neither knows stays empty ("" / 0), as the contract says.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.net.addr import UNKNOWN, Endpoint, endpoint, protocol_name
from agent.net.cluster import ClusterNets
from agent.net.procnet import SocketInfo, connected, find_socket, socket_inode
from agent.net.records import OP_NET_ACCEPT, OP_NET_CONNECT, OP_NET_LISTEN, NetConnRec
from gpuaudit.v1 import net_pb2

TYPES = {OP_NET_CONNECT: "net.connect", OP_NET_ACCEPT: "net.accept", OP_NET_LISTEN: "net.listen"}



@dataclass
class Conn:
    """One socket event, as far as it is known."""

    protocol: int
    local: Endpoint
    remote: Endpoint


def from_kernel(r: NetConnRec) -> Conn:
    """What the kernel record itself says."""
    local = endpoint(r.family, bytes(r.local_addr), r.local_port) if r.have_local else UNKNOWN
    remote = endpoint(r.family, bytes(r.remote_addr), r.remote_port) if r.have_remote else UNKNOWN
    return Conn(r.protocol, local, remote)


def needs_proc(op: int, c: Conn) -> bool:
    """Whether /proc must fill in something the kernel did not see."""
    if op == OP_NET_LISTEN:
        return c.local.port == 0  # listen(2) autobound the port after the state change
    return c.protocol == 0 or c.local.port == 0 or c.remote.family == ""


def merge(c: Conn, found: SocketInfo) -> Conn:
    """Fill the unknown parts of ``c`` from the socket found in /proc."""
    remote = c.remote if c.remote.family else connected(found.remote)
    local = c.local if c.local.port else found.local
    return Conn(c.protocol or found.protocol, local, remote)


def resolve(r: NetConnRec, proc_root: str = "/proc") -> Conn | None:
    """The event's sockets; None for one that turned out not to be TCP/UDP.

    A socket /proc does not list under tcp/udp but that still exists is a
    unix (or other non-IP) socket: accept(2) without an address buffer
    cannot tell them apart in the kernel. A socket already closed when we
    look is reported with what the kernel knew.
    """
    op = r.h.op
    c = from_kernel(r)
    if not needs_proc(op, c) or r.fd < 0:
        return c
    found = find_socket(r.h.pid, r.fd, proc_root)
    if found is not None:
        return merge(c, found)
    if (op == OP_NET_ACCEPT and c.remote.family == ""
            and socket_inode(r.h.pid, r.fd, proc_root) is not None):
        return None
    return c


def payload(c: Conn, result: int, cluster: ClusterNets) -> net_pb2.NetConnection:
    """The NetConnection message for ``c``."""
    family = c.remote.family or c.local.family
    return net_pb2.NetConnection(
        family=family, protocol=protocol_name(c.protocol),
        local_addr=c.local.addr, local_port=c.local.port,
        remote_addr=c.remote.addr, remote_port=c.remote.port,
        peer_in_cluster=cluster.contains(c.remote.ip), result=result,
    )
