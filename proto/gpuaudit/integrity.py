"""What a node signs for each batch, and how anyone checks it (agent and collector).

A batch *manifest* names the node, the agent run (boot_id) and, for every
event of the batch, its seq and the SHA-256 of the exact bytes the agent
serialized -- the bytes the collector stores. The node signs the manifest with
the private key of its own TLS certificate. Anyone holding the CA certificate
can later check, offline, that the stored events are the ones the node sent:
the collector holds no node key, so it cannot invent, alter or drop a node's
events without ``gpuaudit verify`` naming them.

Why the raw bytes and not a re-serialization: protobuf does not promise
byte-identical output across versions, and map fields (``preload``,
``nccl_env``) have no defined order. A signature over re-serialized events
would fail for reasons that are not tampering.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

MANIFEST_MAGIC = b"gpuaudit-batch-v1\0"
LEAF = struct.Struct(">Q32s")
"""One event in a manifest: seq (big-endian u64) and SHA-256 of its bytes."""


class WireError(ValueError):
    """Bytes that are not a well-formed EventBatch."""


def leaf(seq: int, body: bytes) -> bytes:
    """The manifest entry for the event with ``seq`` serialized as ``body``."""
    return LEAF.pack(seq, hashlib.sha256(body).digest())


def leaves_of(seqs: Sequence[int], bodies: Sequence[bytes]) -> bytes:
    return b"".join(leaf(s, b) for s, b in zip(seqs, bodies, strict=True))


def iter_leaves(blob: bytes) -> Iterator[tuple[int, bytes]]:
    """(seq, sha256 digest) of each entry of a manifest's leaves."""
    if len(blob) % LEAF.size:
        raise ValueError(f"manifest leaves of {len(blob)} bytes: not a multiple of {LEAF.size}")
    yield from LEAF.iter_unpack(blob)


def manifest_bytes(node: str, boot_id: str, leaves: bytes) -> bytes:
    """The exact bytes a node signs for one batch."""
    return MANIFEST_MAGIC + node.encode() + b"\0" + boot_id.encode() + b"\0" + leaves


def sign(private_key: Any, data: bytes) -> bytes:
    """Sign with an ECDSA (P-256, SHA-256) or Ed25519 private key."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(data)
    raise TypeError(f"cannot sign with a {type(private_key).__name__}")


def signature_valid(public_key: Any, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` over ``data`` verifies with ``public_key`` (ECDSA or Ed25519)."""
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


# -- the EventBatch wire format, walked without parsing the events ------------

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes")


def fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each top-level field of a message.

    Length-delimited values are returned as bytes slices of ``buf``; nothing
    inside them is parsed.
    """
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _WIRE_VARINT:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == _WIRE_LEN:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise WireError(f"field {number}: {size} bytes announced, {len(buf) - pos} left")
            yield number, wire, buf[pos:pos + size]
            pos += size
        elif wire in (_WIRE_I64, _WIRE_I32):
            width = 8 if wire == _WIRE_I64 else 4
            if pos + width > len(buf):
                raise WireError(f"field {number}: truncated fixed-width value")
            yield number, wire, buf[pos:pos + width]
            pos += width
        else:
            raise WireError(f"field {number}: unsupported wire type {wire}")


def event_bodies(raw_batch: bytes, events_field: int = 2) -> list[bytes]:
    """The serialized Events of an EventBatch, byte for byte as the agent sent them."""
    return [v for n, w, v in fields(raw_batch)
            if n == events_field and w == _WIRE_LEN and isinstance(v, bytes)]
