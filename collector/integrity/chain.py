"""Each node's manifests form a hash chain, in the order the store received them.

A manifest (one per stored batch, see gpuaudit/integrity.py) says which
events a batch held and how they hash; the chain links every manifest of a
node to all earlier ones. Removing, inserting or editing a manifest changes
every chain value after it, and the collector's signed checkpoints
(:mod:`collector.integrity.checkpoint`), copied elsewhere, pin the chain's head
at moments in time -- so even someone who recomputes the chain in the
database cannot make it match a checkpoint signed before the change.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

CHAIN_MAGIC = b"gpuaudit-chain-v1\0"


@dataclass(frozen=True)
class Manifest:
    """One stored batch's manifest: what verify checks events against."""

    node: str
    boot_id: str
    first_seq: int
    last_seq: int
    leaves: bytes  # gpuaudit.integrity leaves: per event seq + SHA-256 of its bytes
    signature: bytes  # b"": unsigned (agent without TLS identity)
    signer: bytes  # SHA-256 of the signer's certificate DER / collector public key; b"" unsigned

    def entry_hash(self) -> bytes:
        """The hash the chain links: every field, length-prefixed (no ambiguity)."""
        h = hashlib.sha256()
        for part in (self.node.encode(), self.boot_id.encode(),
                     struct.pack(">QQ", self.first_seq, self.last_seq),
                     self.leaves, self.signature, self.signer):
            h.update(struct.pack(">I", len(part)))
            h.update(part)
        return h.digest()


def chain_seed(node: str) -> bytes:
    """The chain value before a node's first manifest."""
    return hashlib.sha256(CHAIN_MAGIC + node.encode()).digest()


def next_chain(prev: bytes, manifest: Manifest) -> bytes:
    return hashlib.sha256(prev + manifest.entry_hash()).digest()
