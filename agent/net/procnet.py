"""Find a process's socket in /proc: fd -> socket inode -> /proc/PID/net/*.

The kernel side cannot read struct sock, so whatever the syscall arguments
did not carry (accept's local address, the peer when accept was given no
buffer, the protocol of a non-TCP connect, the port listen(2) autobound) is
looked up here, at decode time, while the process normally still holds the
fd. /proc/PID/net shows the tables of the process's own network namespace.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from agent.net.addr import AF_INET, AF_INET6, UNKNOWN, Endpoint, endpoint

# table file -> (family, protocol number)
TABLES = (("tcp", AF_INET, 6), ("tcp6", AF_INET6, 6), ("udp", AF_INET, 17),
          ("udp6", AF_INET6, 17))
INODE_COLUMN = 9


@dataclass(frozen=True)
class SocketInfo:
    """A socket found in /proc/PID/net/<table>."""

    protocol: int  # IPPROTO_*
    local: Endpoint
    remote: Endpoint  # UNKNOWN-like (port 0, 0.0.0.0 or ::) when not connected


def socket_inode(pid: int, fd: int, proc_root: str = "/proc") -> int | None:
    """The inode of the socket fd ``fd`` of ``pid`` names; None if not a socket or gone."""
    try:
        target = os.readlink(f"{proc_root}/{pid}/fd/{fd}")
    except OSError:
        return None
    if not (target.startswith("socket:[") and target.endswith("]")):
        return None
    return int(target[8:-1])


def decode_hex_endpoint(text: str, family: int) -> Endpoint:
    """"0100007F:1F90" (as /proc/net/tcp prints it) -> 127.0.0.1:8080.

    The kernel prints the address as 32-bit words in host byte order.
    """
    addr_hex, port_hex = text.split(":")
    raw = bytes.fromhex(addr_hex)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return endpoint(family, raw.ljust(16, b"\0"), int(port_hex, 16))


def find_socket(pid: int, fd: int, proc_root: str = "/proc") -> SocketInfo | None:
    """The TCP/UDP socket behind ``fd`` of ``pid``; None for others (unix...) or when gone."""
    inode = socket_inode(pid, fd, proc_root)
    if inode is None:
        return None
    for table, family, protocol in TABLES:
        found = _scan(f"{proc_root}/{pid}/net/{table}", inode, family, protocol)
        if found is not None:
            return found
    return None


def _scan(path: str, inode: int, family: int, protocol: int) -> SocketInfo | None:
    wanted = str(inode)
    try:
        with open(path) as f:
            next(f, None)  # header
            for line in f:
                cols = line.split()
                if len(cols) > INODE_COLUMN and cols[INODE_COLUMN] == wanted:
                    return SocketInfo(protocol, decode_hex_endpoint(cols[1], family),
                                      decode_hex_endpoint(cols[2], family))
    except OSError:
        return None
    return None


def connected(ep: Endpoint) -> Endpoint:
    """``ep``, or UNKNOWN for the unconnected wildcard (0.0.0.0:0, [::]:0)."""
    return UNKNOWN if ep.port == 0 and ep.ip is not None and ep.ip.is_unspecified else ep
