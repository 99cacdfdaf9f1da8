"""Writing manifests and the chain, in the transaction that stores the events.

Shared by every storage layout (SQLite rows and chunks, PostgreSQL): the SQL
is standard (``ON CONFLICT`` works in both), written with ``?`` and converted
to the driver's placeholder by ``sql`` (collector.storage.common.pyformat).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from collector.integrity.chain import Manifest, chain_seed, next_chain
from collector.integrity.keys import CollectorKey
from gpuaudit import integrity
from gpuaudit.v1 import collector_pb2

# received_ns: the collector clock at storage; chain: next_chain(previous of the
# node, this manifest). UNIQUE (node, entry): a batch resent unchanged is not
# recorded twice; one resent in other pieces is, and verify accepts either.
MANIFEST_TABLES = """
CREATE TABLE IF NOT EXISTS manifests (
    id          {id},
    node        TEXT    NOT NULL,
    boot_id     TEXT    NOT NULL,
    first_seq   BIGINT  NOT NULL,
    last_seq    BIGINT  NOT NULL,
    leaves      {blob}  NOT NULL,
    signature   {blob}  NOT NULL,
    signer      {blob}  NOT NULL,
    entry       {blob}  NOT NULL,
    chain       {blob}  NOT NULL,
    received_ns BIGINT  NOT NULL,
    UNIQUE (node, entry)
);
CREATE INDEX IF NOT EXISTS manifests_node ON manifests (node, id);
CREATE INDEX IF NOT EXISTS manifests_run  ON manifests (node, boot_id, first_seq);
CREATE TABLE IF NOT EXISTS signers (
    sha256 {blob} PRIMARY KEY,
    kind   TEXT   NOT NULL,
    data   {blob} NOT NULL
);
CREATE TABLE IF NOT EXISTS chain_bases (
    node        TEXT   PRIMARY KEY,
    manifest_id BIGINT NOT NULL,
    chain       {blob} NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id        {id},
    time_ns   BIGINT NOT NULL,
    body      {blob} NOT NULL,
    signature {blob} NOT NULL
);
"""
"""``signers``: kind "node_cert" (data = certificate DER) or "collector" (raw
Ed25519 public key); ``sha256`` is what manifests name as ``signer``.
``chain_bases``: per node, the newest manifest retention removed, with its chain
value: the remaining chain continues from it (a signed checkpoint lists it)."""

SQLITE_TYPES = {"id": "INTEGER PRIMARY KEY", "blob": "BLOB"}
POSTGRES_TYPES = {"id": "BIGSERIAL PRIMARY KEY", "blob": "BYTEA"}

_INSERT = (
    "INSERT INTO manifests (node, boot_id, first_seq, last_seq, leaves, signature, signer,"
    " entry, chain, received_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (node, entry) DO NOTHING"
)
_LAST_CHAIN = "SELECT chain FROM manifests WHERE node = ? ORDER BY id DESC LIMIT 1"
_SIGNER = "INSERT INTO signers (sha256, kind, data) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"


class ManifestWriter:
    """Records one manifest per stored batch, and one per collector-raised event."""

    def __init__(self, key: CollectorKey | None, clock: Callable[[], int],
                 sql: Callable[[str], str] = lambda text: text) -> None:
        self.key = key
        self._clock = clock
        self._sql = sql  # SQLite's ? placeholders to the driver's (common.pyformat)
        self._collector_known = False

    def record_batch(self, db: Any, events: Sequence[Any], bodies: Sequence[bytes],
                     signature: collector_pb2.BatchSignature | None, cert_der: bytes) -> None:
        """The manifest of a node's batch as received (signed or not)."""
        first = events[0]
        sig = signer = b""
        if signature is not None:
            sig, signer = signature.signature, signature.cert_sha256
            if cert_der:
                db.execute(self._sql(_SIGNER), (signer, "node_cert", cert_der))
        leaves = integrity.leaves_of([ev.seq for ev in events], bodies)
        self._insert(db, Manifest(first.node, first.boot_id, events[0].seq, events[-1].seq,
                                  leaves, sig, signer))

    def record_own(self, db: Any, node: str, boot_id: str, seq: int, body: bytes) -> None:
        """The manifest of one collector-raised event, signed with the collector's key."""
        leaves = integrity.leaf(seq, body)
        sig = signer = b""
        if self.key is not None:
            sig = self.key.sign(integrity.manifest_bytes(node, boot_id, leaves))
            signer = self.key.key_id
            if not self._collector_known:
                db.execute(self._sql(_SIGNER), (signer, "collector", self.key.public_raw))
                self._collector_known = True
        self._insert(db, Manifest(node, boot_id, seq, seq, leaves, sig, signer))

    def forget_cache(self) -> None:
        """After a rollback: the collector's signer row may not have been committed."""
        self._collector_known = False

    def _insert(self, db: Any, m: Manifest) -> None:
        row = db.execute(self._sql(_LAST_CHAIN), (m.node,)).fetchone()
        prev = bytes(row[0]) if row else chain_seed(m.node)
        db.execute(self._sql(_INSERT), (
            m.node, m.boot_id, m.first_seq, m.last_seq, m.leaves, m.signature, m.signer,
            m.entry_hash(), next_chain(prev, m), self._clock()))
