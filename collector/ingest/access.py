"""Who may do what, from the client certificate (mutual TLS).

* Ingest needs a node certificate (``OU=gpuaudit-node``) that names the node
  the batch claims (CN or a SAN); anything else is PERMISSION_DENIED and is
  recorded as an agent.rejected event (:mod:`collector.ingest.rejections`).
* QueryEvents and GetStatus need a reader certificate (``OU=gpuaudit-reader``):
  an agent's certificate can ingest but not read the audit trail.

In plaintext mode (``--insecure``) there is no identity, and no checks: the
operator chose a trusted network.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import grpc

from gpuaudit.tls import PeerIdentity, peer_identity

NODE_MISMATCH = "node_mismatch"
NOT_A_NODE_CERTIFICATE = "not_a_node_certificate"


class Refusal(NamedTuple):
    """Why an ingest batch is refused: the agent.rejected reason and the status text."""

    reason: str   # NODE_MISMATCH or NOT_A_NODE_CERTIFICATE
    message: str  # the PERMISSION_DENIED details


class AccessDenied(Exception):
    """A call is not allowed; ``code`` and ``str()`` are the gRPC status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        """Deny with ``code`` and ``message``."""
        super().__init__(message)
        self.code = code


def describe(identity: PeerIdentity) -> str:
    """The certificate's names for messages, e.g. ``'node-1' (node-1, 10.0.0.7)``."""
    return ", ".join(identity.names) or "<no names>"


def caller(context: Any, tls: bool) -> PeerIdentity | None:
    """The verified caller of an RPC; None in plaintext mode.

    Raises AccessDenied(UNAUTHENTICATED) if ``tls`` but the connection carries
    no client certificate (cannot happen while the server demands one).
    """
    if not tls:
        return None
    identity = peer_identity(context)
    if identity is None:
        raise AccessDenied(
            grpc.StatusCode.UNAUTHENTICATED, "a client certificate from the cluster CA is required"
        )
    return identity


def require_reader(identity: PeerIdentity | None) -> None:
    """Raise AccessDenied(PERMISSION_DENIED) unless ``identity`` may query (None: plaintext)."""
    if identity is not None and identity.role != "reader":
        raise AccessDenied(
            grpc.StatusCode.PERMISSION_DENIED,
            f"certificate {describe(identity)} is not a reader certificate "
            "(OU=gpuaudit-reader); node certificates may ingest but not query "
            "(make one with `gpuaudit certs`)",
        )


def ingest_refusal(identity: PeerIdentity | None, claimed_node: str) -> Refusal | None:
    """Why ``identity`` may not ingest a batch claiming ``claimed_node``; None if it may."""
    if identity is None:
        return None
    if identity.role != "node":
        return Refusal(
            NOT_A_NODE_CERTIFICATE,
            f"certificate {describe(identity)} is not a node certificate "
            "(OU=gpuaudit-node); batch refused",
        )
    if not identity.may_claim(claimed_node):
        return Refusal(
            NODE_MISMATCH,
            f"batch claims node {claimed_node!r} but the certificate names "
            f"{describe(identity)}; batch refused (the node name must be the certificate's "
            "CN or a SAN)",
        )
    return None
