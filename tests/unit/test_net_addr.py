"""Address decoding (agent.net.addr, agent.net.procnet) and cluster CIDRs
(agent.net.cluster): what the kernel hands over -> what events say."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from agent.net.addr import AF_INET, AF_INET6, UNKNOWN, Endpoint, endpoint, protocol_name
from agent.net.cluster import ClusterNets, parse_cidrs
from agent.net.procnet import connected, decode_hex_endpoint


def raw(text: str) -> bytes:
    """16 bytes as net.c fills them: v4 in the first 4, v6 in all 16."""
    return ipaddress.ip_address(text).packed.ljust(16, b"\0")


def test_ipv4_from_first_four_bytes() -> None:
    # the rest of the buffer is ignored for AF_INET, whatever it holds
    assert endpoint(AF_INET, socket.inet_aton("10.77.0.2") + b"\xff" * 12, 8080) == Endpoint(
        "ipv4", "10.77.0.2", 8080)


def test_ipv6_compressed_text() -> None:
    assert endpoint(AF_INET6, raw("fd00:77::2"), 443) == Endpoint("ipv6", "fd00:77::2", 443)
    assert endpoint(AF_INET6, raw("::1"), 1) == Endpoint("ipv6", "::1", 1)


def test_v4_mapped_ipv6_is_reported_as_the_ipv4_peer() -> None:
    assert endpoint(AF_INET6, raw("::ffff:192.168.77.2"), 22) == Endpoint(
        "ipv4", "192.168.77.2", 22)


def test_unknown_family_is_unknown() -> None:
    assert endpoint(0, b"\0" * 16, 0) == UNKNOWN
    assert endpoint(1, raw("10.0.0.1"), 5) == UNKNOWN  # AF_UNIX never has an IP
    assert UNKNOWN.ip is None


def test_protocol_names() -> None:
    assert [protocol_name(n) for n in (6, 17, 0, 99)] == ["tcp", "udp", "", ""]


@pytest.mark.parametrize(("text", "family", "want"), [
    # /proc/net/tcp prints 32-bit words in host order (little-endian here)
    ("0100007F:1F90", AF_INET, Endpoint("ipv4", "127.0.0.1", 8080)),
    ("00000000:0000", AF_INET, Endpoint("ipv4", "0.0.0.0", 0)),
    ("00000000000000000000000001000000:0016", AF_INET6, Endpoint("ipv6", "::1", 22)),
    ("0000000000000000FFFF00000200A8C0:01BB", AF_INET6, Endpoint("ipv4", "192.168.0.2", 443)),
])
def test_proc_net_hex_endpoints(text: str, family: int, want: Endpoint) -> None:
    assert struct.pack("=I", 1) == b"\x01\0\0\0", "fixtures written for little-endian"
    assert decode_hex_endpoint(text, family) == want


def test_unconnected_wildcard_is_no_peer() -> None:
    assert connected(Endpoint("ipv4", "0.0.0.0", 0)) == UNKNOWN
    assert connected(Endpoint("ipv6", "::", 0)) == UNKNOWN
    assert connected(Endpoint("ipv4", "10.0.0.1", 80)) == Endpoint("ipv4", "10.0.0.1", 80)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_no_cidrs_every_peer_outside_but_loopback() -> None:
    nets = ClusterNets([])
    assert not nets.contains(ip("10.0.0.1"))
    assert not nets.contains(ip("fd00::1"))
    assert nets.contains(ip("127.0.0.1")) and nets.contains(ip("127.8.9.10"))
    assert nets.contains(ip("::1"))
    assert not nets.contains(None)  # no peer known: not claimed inside


def test_cidrs_of_both_families() -> None:
    nets = ClusterNets(["10.77.0.0/24", " fd00:77::/64 "])
    assert nets.contains(ip("10.77.0.255"))
    assert not nets.contains(ip("10.77.1.0"))
    assert nets.contains(ip("fd00:77::abcd"))
    assert not nets.contains(ip("fd00:78::1"))
    assert not nets.contains(ip("192.168.77.2"))


@pytest.mark.parametrize("bad", ["10.77.0.1/24", "10.77.0.0/33", "cluster", ""])
def test_bad_cidr_is_refused_with_its_text(bad: str) -> None:
    with pytest.raises(ValueError, match="cluster CIDR"):
        parse_cidrs([bad])
