"""Socket addresses as the kernel side hands them over, turned into text.

net.c passes 16 raw bytes in network order: an IPv4 address in the first 4
(family AF_INET), an IPv6 address in all 16 (AF_INET6). A v4 peer of a
dual-stack IPv6 socket arrives v4-mapped (::ffff:a.b.c.d); it is reported as
the IPv4 peer it is, so that one peer has one name and IPv4 cluster CIDRs
match it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

AF_INET = 2
AF_INET6 = 10
PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp", 262: "mptcp"}

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Endpoint:
    """One end of a socket: family ("ipv4"/"ipv6", "" unknown), address text, port."""

    family: str
    addr: str
    port: int

    @property
    def ip(self) -> IpAddress | None:
        return ipaddress.ip_address(self.addr) if self.addr else None


UNKNOWN = Endpoint("", "", 0)


def ip_from_raw(family: int, raw: bytes) -> IpAddress | None:
    """The address in ``raw`` (16 bytes, network order); None for another family."""
    if family == AF_INET:
        return ipaddress.IPv4Address(bytes(raw[:4]))
    if family == AF_INET6:
        v6 = ipaddress.IPv6Address(bytes(raw[:16]))
        return v6.ipv4_mapped or v6
    return None


def endpoint(family: int, raw: bytes, port: int) -> Endpoint:
    """An Endpoint from the kernel's (family, raw address, host-order port)."""
    ip = ip_from_raw(family, raw)
    if ip is None:
        return UNKNOWN
    return Endpoint(family_name(ip), str(ip), port)


def family_name(ip: IpAddress) -> str:
    return "ipv4" if ip.version == 4 else "ipv6"


def family_name_of(family: int) -> str:
    """"ipv4" for AF_INET, "ipv6" for AF_INET6, "" otherwise."""
    return {AF_INET: "ipv4", AF_INET6: "ipv6"}.get(family, "")


def protocol_name(number: int) -> str:
    """"tcp" for 6, "udp" for 17, ...; "" for 0 (unknown) or another protocol."""
    return PROTOCOLS.get(number, "")
