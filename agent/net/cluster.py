"""peer_in_cluster: is a peer address inside the configured cluster networks?

Loopback (127.0.0.0/8, ::1) is always inside: the peer is this very node,
whatever the CIDRs say. With no CIDRs configured every other peer is outside.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from agent.net.addr import IpAddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidrs(cidrs: Iterable[str]) -> list[Network]:
    """Networks from CIDR texts; ValueError naming the bad entry otherwise.

    Host bits set (10.0.0.1/24) are refused rather than silently masked: the
    operator most likely meant something else.
    """
    nets: list[Network] = []
    for text in cidrs:
        try:
            nets.append(ipaddress.ip_network(text.strip(), strict=True))
        except ValueError as err:
            raise ValueError(f"cluster CIDR {text!r} is not a network: {err}") from None
    return nets


class ClusterNets:
    """Membership test against the cluster networks (both families)."""

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self.networks = parse_cidrs(cidrs)

    def contains(self, ip: IpAddress | None) -> bool:
        """True for loopback and for addresses inside a configured network."""
        if ip is None:
            return False
        if ip.is_loopback:
            return True
        return any(ip.version == net.version and ip in net for net in self.networks)
