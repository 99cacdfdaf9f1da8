"""Mutual TLS for gpuaudit: the files a process needs and who is on the other end.

Every gpuaudit process (collector, agent, query client) holds a directory like::

    ca.crt   the CA (or a bundle of CAs) it trusts for the other side
    tls.crt  its own certificate (leaf first, then any intermediates)
    tls.key  the private key of tls.crt (PEM, unencrypted, mode 0600)

Roles travel in the certificate subject's organizational unit (OU): an agent's
certificate says ``OU=gpuaudit-node`` and names its node in the CN or a SAN; a
query client's says ``OU=gpuaudit-reader``. The collector asks
:func:`peer_identity` who called and decides from that.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

NODE_OU = "gpuaudit-node"
"""OU of agent certificates: may ingest for the node the certificate names."""
READER_OU = "gpuaudit-reader"
"""OU of query-client certificates: may query, may not ingest."""

CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "tls.crt", "tls.key"
PEER_CERT_KEY = "x509_pem_cert"
"""The auth-context property where gRPC puts the peer's PEM certificate."""

_REISSUE = "re-issue it (`gpuaudit certs node|reader NAME --pki DIR`) or fix the path"


class TlsConfigError(ValueError):
    """TLS files are missing, unreadable or do not fit together; says which and what to do."""


@dataclass(frozen=True)
class TlsFiles:
    """Paths of one process's CA, certificate and private key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_dir(cls, d: str | Path) -> TlsFiles:
        """``d/ca.crt``, ``d/tls.crt``, ``d/tls.key`` (what ``gpuaudit certs`` writes)."""
        d = Path(d)
        return cls(ca=d / CA_FILE, cert=d / CERT_FILE, key=d / KEY_FILE)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client credentials: present cert/key, trust only ``ca`` for the server."""
        ca, cert, key = self._read_all()
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that demand a client certificate issued by ``ca``."""
        ca, cert, key = self._read_all()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )

    def check(self, now: datetime.datetime | None = None) -> None:
        """Raise TlsConfigError unless the three files form a usable, valid identity.

        Checks, in order: each file readable and PEM; the key belongs to the
        certificate; the certificate chains to a CA in ``ca``; every
        certificate involved is valid at ``now`` (default: the current time).
        """
        now = now or datetime.datetime.now(datetime.UTC)
        cas = _load_certs(self.ca, "CA certificate")
        chain = _load_certs(self.cert, "certificate")
        key = _load_key(self.key)
        if _public_der(key.public_key()) != _public_der(chain[0].public_key()):
            raise TlsConfigError(
                f"{self.key} is not the private key of {self.cert}: use the key the "
                f"certificate was issued with, or {_REISSUE}"
            )
        _verify_chain(chain, cas, self.cert, self.ca)
        for path, cert in [(self.cert, c) for c in chain] + [(self.ca, c) for c in cas]:
            _check_validity(cert, path, now)

    def _read_all(self) -> tuple[bytes, bytes, bytes]:
        return _read(self.ca), _read(self.cert), _read(self.key)


@dataclass(frozen=True)
class PeerIdentity:
    """Who is on the other end of a mutual-TLS connection, from its certificate."""

    names: tuple[str, ...]  # subject CN, then DNS SANs, then IP SANs; no repeats
    role: str  # "node", "reader", or "" (neither OU, or both)

    def may_claim(self, node: str) -> bool:
        """True if this peer is an agent certificate that names ``node``."""
        return self.role == "node" and bool(node) and node in self.names


def peer_identity(context: Any) -> PeerIdentity | None:
    """The verified client identity of a gRPC call; None on a plaintext connection.

    ``context`` is a (sync or asyncio) ServicerContext. gRPC has already
    verified the certificate against the server's CA when this is called.
    """
    auth: Mapping[str, Sequence[bytes]] = context.auth_context() or {}
    pems = auth.get(PEER_CERT_KEY)
    if not pems:
        return None
    return identity_from_pem(bytes(pems[0]))


@functools.lru_cache(maxsize=1024)
def identity_from_pem(pem: bytes) -> PeerIdentity:
    """The PeerIdentity of one PEM certificate (cached: agents reconnect with the same one)."""
    cert = x509.load_pem_x509_certificate(pem)
    return PeerIdentity(names=_names(cert), role=_role(cert))


# -- helpers


def _names(cert: x509.Certificate) -> tuple[str, ...]:
    names = [_attr(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    names += san.get_values_for_type(x509.DNSName)
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return tuple(dict.fromkeys(n for n in names if n))


def _role(cert: x509.Certificate) -> str:
    ous = {
        _attr(a.value)
        for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    }
    # A certificate carrying both OUs is ambiguous: it gets neither role.
    if NODE_OU in ous and READER_OU not in ous:
        return "node"
    if READER_OU in ous and NODE_OU not in ous:
        return "reader"
    return ""


def _attr(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise TlsConfigError(
            f"cannot read {path}: {err.strerror or err}; check the path and permissions "
            "(make a test PKI with `gpuaudit certs init --out DIR`)"
        ) from None


def _load_certs(path: Path, what: str) -> list[x509.Certificate]:
    data = _read(path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TlsConfigError(f"{path} holds no PEM {what}: point the flag at a PEM file")
    return certs


def _load_key(path: Path) -> Any:
    data = _read(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise TlsConfigError(
            f"{path} is not an unencrypted PEM private key ({err}): "
            "pass the key file that belongs to the certificate"
        ) from None


def _public_der(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ))


def _verify_chain(
    chain: list[x509.Certificate], cas: list[x509.Certificate], cert_path: Path, ca_path: Path
) -> None:
    """Each certificate in ``chain`` is issued by the next; the last by one of ``cas``."""
    for child, parent in itertools.pairwise(chain):
        if not _issued_by(child, parent):
            raise TlsConfigError(
                f"{cert_path}: {child.subject.rfc4514_string()} is not issued by the next "
                "certificate in the file; put the leaf first, then its intermediates in order"
            )
    if not any(_issued_by(chain[-1], ca) for ca in cas):
        raise TlsConfigError(
            f"{cert_path} was not issued by the CA in {ca_path} (its issuer is "
            f"{chain[-1].issuer.rfc4514_string()!r}): use certificates from the same CA, "
            f"or {_REISSUE}"
        )


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_validity(cert: x509.Certificate, path: Path, now: datetime.datetime) -> None:
    subject = cert.subject.rfc4514_string()
    if now > cert.not_valid_after_utc:
        raise TlsConfigError(
            f"{path}: certificate {subject!r} expired on {_when(cert.not_valid_after_utc)}; "
            f"{_REISSUE}"
        )
    if now < cert.not_valid_before_utc:
        raise TlsConfigError(
            f"{path}: certificate {subject!r} is not valid until "
            f"{_when(cert.not_valid_before_utc)}; check this host's clock, or {_REISSUE}"
        )


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def is_ip(text: str) -> bool:
    """True if ``text`` is an IPv4 or IPv6 address (a SAN of type IP, not DNS)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
