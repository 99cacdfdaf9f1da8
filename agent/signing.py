"""Signs every batch the agent sends with the key of its own TLS certificate.

The collector stores the signature with the events (proto/gpuaudit/integrity.py
says what is signed). Verification needs only the CA certificate, so a
collector -- or anyone with write access to its database -- cannot alter, add
or drop this node's events without ``gpuaudit verify`` noticing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gpuaudit import integrity
from gpuaudit.tls import TlsFiles
from gpuaudit.v1 import collector_pb2


class BatchSigner:
    """Signs (boot_id, seqs, event bytes) as ``node`` with one private key."""

    def __init__(self, node: str, private_key: Any, cert_der: bytes) -> None:
        self.node = node
        self._key = private_key
        self._cert_sha256 = hashlib.sha256(cert_der).digest()

    @classmethod
    def from_tls(cls, node: str, files: TlsFiles) -> BatchSigner:
        """The signer of a node whose TLS identity is ``files`` (its cert's key)."""
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificates(files.cert.read_bytes())[0]
        return cls(node, key, cert.public_bytes(serialization.Encoding.DER))

    def sign(self, boot_id: str, seqs: Sequence[int], bodies: Sequence[bytes]) -> bytes:
        """The serialized BatchSignature (EventBatch field 3) for one batch."""
        manifest = integrity.manifest_bytes(self.node, boot_id,
                                            integrity.leaves_of(seqs, bodies))
        sig = collector_pb2.BatchSignature(signature=integrity.sign(self._key, manifest),
                                           cert_sha256=self._cert_sha256)
        return sig.SerializeToString()
