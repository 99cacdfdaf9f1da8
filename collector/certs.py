"""A small PKI for a test or small deployment: one CA, a collector, nodes and readers.

Layout written by :func:`init_pki` (each leaf directory is a ``TlsFiles.from_dir``)::

    DIR/ca/ca.crt, ca.key          the CA; keep ca.key off the nodes
    DIR/collector/                 serverAuth; SANs localhost, 127.0.0.1, ::1, host name
    DIR/nodes/<NAME>/              clientAuth, OU=gpuaudit-node, CN=NAME, DNS SAN=NAME
    DIR/readers/<NAME>/            clientAuth, OU=gpuaudit-reader, CN=NAME

Keys are ECDSA P-256, signatures SHA-256: small, fast handshakes, and
supported by every TLS stack gRPC builds with. Validity is taken as ``days``
from now, or exact ``not_before``/``not_after`` (tests mint expired and
not-yet-valid certificates that way).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gpuaudit.tls import CA_FILE, NODE_OU, READER_OU, TlsFiles, is_ip

DEFAULT_CA_DAYS = 3650
DEFAULT_LEAF_DAYS = 825  # the longest leaf lifetime browsers ever accepted; renew yearly
CA_KEY_FILE = "ca.key"
ORG = "gpuaudit"
# Backdate a little so a node whose clock is slightly behind accepts a fresh cert.
CLOCK_SKEW = datetime.timedelta(minutes=5)


class PkiError(Exception):
    """The PKI directory cannot be written or read as asked; says what to do."""


@dataclass(frozen=True)
class Validity:
    """A certificate's validity window (UTC)."""

    not_before: datetime.datetime
    not_after: datetime.datetime

    @classmethod
    def days(cls, days: float, now: datetime.datetime | None = None) -> Validity:
        """From a few minutes ago until ``days`` from ``now``."""
        now = now or datetime.datetime.now(datetime.UTC)
        return cls(now - CLOCK_SKEW, now + datetime.timedelta(days=days))


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate and signing key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    def cert_pem(self) -> bytes:
        """The CA certificate as PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Pki:
    """What :func:`init_pki` wrote."""

    root: Path
    ca_dir: Path
    collector: TlsFiles
    nodes: dict[str, TlsFiles]
    readers: dict[str, TlsFiles]


# -- the CA


def new_ca(common_name: str = "gpuaudit CA", validity: Validity | None = None) -> Authority:
    """A fresh self-signed CA (each call is unrelated to every other)."""
    validity = validity or Validity.days(DEFAULT_CA_DAYS)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _builder(name, name, key.public_key(), validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def write_ca(ca: Authority, ca_dir: Path, overwrite: bool = False) -> None:
    """Write ``ca_dir/ca.crt`` and ``ca_dir/ca.key`` (0600); refuse to replace a CA."""
    if (ca_dir / CA_KEY_FILE).exists() and not overwrite:
        raise PkiError(
            f"{ca_dir} already holds a CA; every certificate it issued would stop working "
            "if it were replaced. Add certificates with `gpuaudit certs node|reader NAME "
            "--pki DIR`, or pass --force to start over"
        )
    _private_dir(ca_dir)
    _write(ca_dir / CA_FILE, ca.cert_pem(), 0o644)
    _write(ca_dir / CA_KEY_FILE, _key_pem(ca.key), 0o600)


def load_ca(ca_dir: Path) -> Authority:
    """The CA that :func:`write_ca` wrote to ``ca_dir``."""
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / CA_FILE).read_bytes())
        key = serialization.load_pem_private_key((ca_dir / CA_KEY_FILE).read_bytes(), None)
    except (OSError, ValueError) as err:
        raise PkiError(
            f"cannot load the CA from {ca_dir} ({err}); make one with "
            "`gpuaudit certs init --out DIR`"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{ca_dir / CA_KEY_FILE} is not an ECDSA key written by gpuaudit certs")
    return Authority(cert, key)


# -- leaf certificates


def collector_names(extra: Iterable[str] = ()) -> list[str]:
    """SANs of the collector certificate: loopback, the host name, then ``extra``."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *extra]
    return list(dict.fromkeys(n for n in names if n))


def issue_collector(
    ca: Authority, out: Path, extra_names: Sequence[str] = (), validity: Validity | None = None
) -> TlsFiles:
    """A collector server certificate (serverAuth) into ``out``; SANs per collector_names."""
    sans = collector_names(extra_names)
    subject = _subject("gpuaudit collector")
    return _issue(ca, out, subject, sans, ExtendedKeyUsageOID.SERVER_AUTH, validity)


def issue_node(
    ca: Authority, name: str, out: Path, validity: Validity | None = None
) -> TlsFiles:
    """An agent certificate for node ``name``: clientAuth, OU=gpuaudit-node, CN and SAN = name."""
    check_name(name)
    subject = _subject(name, NODE_OU)
    return _issue(ca, out, subject, [name], ExtendedKeyUsageOID.CLIENT_AUTH, validity)


def issue_reader(
    ca: Authority, name: str, out: Path, validity: Validity | None = None
) -> TlsFiles:
    """A query-client certificate: clientAuth, OU=gpuaudit-reader, CN = name."""
    check_name(name)
    subject = _subject(name, READER_OU)
    return _issue(ca, out, subject, [], ExtendedKeyUsageOID.CLIENT_AUTH, validity)


def check_name(name: str) -> None:
    """ValueError unless ``name`` works as a certificate name and a directory name."""
    if not name or name in (".", "..") or "/" in name or not name.isascii() or \
            not name.isprintable() or " " in name:
        raise ValueError(
            f"{name!r} is not a usable node/reader name: use ASCII letters, digits, '.', '-' "
            "(the node name the agent reports, usually the host name)"
        )


# -- the whole layout


def init_pki(
    root: Path,
    nodes: Sequence[str] = (),
    readers: Sequence[str] = (),
    extra_collector_names: Sequence[str] = (),
    days: float = DEFAULT_LEAF_DAYS,
    overwrite: bool = False,
) -> Pki:
    """Make a CA and the collector, node and reader certificates under ``root``."""
    for name in [*nodes, *readers]:
        check_name(name)
    ca = new_ca()
    write_ca(ca, root / "ca", overwrite)
    validity = Validity.days(days)
    collector = issue_collector(ca, root / "collector", extra_collector_names, validity)
    return Pki(
        root, root / "ca", collector,
        {n: issue_node(ca, n, node_dir(root, n), validity) for n in nodes},
        {r: issue_reader(ca, r, reader_dir(root, r), validity) for r in readers},
    )


def node_dir(root: Path, name: str) -> Path:
    """Where ``init_pki``/``gpuaudit certs node`` put node ``name``'s files."""
    return root / "nodes" / name


def reader_dir(root: Path, name: str) -> Path:
    """Where ``init_pki``/``gpuaudit certs reader`` put reader ``name``'s files."""
    return root / "readers" / name


# -- helpers


def _subject(common_name: str, ou: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG)]
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName([
        x509.IPAddress(ipaddress.ip_address(n)) if is_ip(n) else x509.DNSName(n) for n in names
    ])


def _issue(
    ca: Authority, out: Path, subject: x509.Name, sans: Sequence[str],
    usage: x509.ObjectIdentifier, validity: Validity | None,
) -> TlsFiles:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(subject, ca.cert.subject, key.public_key(), validity or Validity.days(
            DEFAULT_LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(_san(sans), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return _write_leaf(out, ca, cert, key)


def _write_leaf(
    out: Path, ca: Authority, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> TlsFiles:
    files = TlsFiles.from_dir(out)
    _private_dir(out)
    _write(files.ca, ca.cert_pem(), 0o644)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(files.key, _key_pem(key), 0o600)
    return files


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
    validity: Validity,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity.not_before)
        .not_valid_after(validity.not_after)
    )


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _private_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as err:
        raise PkiError(f"cannot create {path}: {err.strerror or err}") from None


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file and rename, with ``mode`` from the start (no window
    in which a key is readable by others), so a crash leaves no half-written key."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, mode)  # an old tmp file keeps its mode; O_CREAT's mode is umasked
            f.write(data)
            f.flush()
            os.fsync(fd)
        os.replace(tmp, path)
    except OSError as err:
        raise PkiError(f"cannot write {path}: {err.strerror or err}") from None
