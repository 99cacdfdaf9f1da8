"""Retention: removing a period's oldest batches without breaking verification.

Pruning goes by manifest (one per stored batch): a manifest received before
the cut goes, with exactly the events it covers, so what remains is still
whole batches that ``gpuaudit verify`` can check. For each node the newest
removed manifest's id and chain value become the node's chain *base*, from
which the remaining chain continues; the signed checkpoint written after each
prune lists the bases, so the cut is vouched for by the collector's key.
Events of agent runs that never had manifests (stored before tamper evidence)
go by event time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from collector.integrity.checkpoint import Head

PRUNE_BATCH = 5000
"""Manifests removed per transaction: bounds how long one prune holds the writer."""

DeleteEvents = Callable[[Any, str, str, int, int], int]
"""(db, node, boot_id, first_seq, last_seq) -> events removed (a layout's own tables)."""


@dataclass
class Pruned:
    manifests: int = 0
    events: int = 0
    bases: dict[str, Head] = field(default_factory=dict)  # node -> newest removed manifest


def prune_batch(db: Any, sql: Callable[[str], str], cut_ns: int, delete_events: DeleteEvents,
                limit: int = PRUNE_BATCH) -> Pruned:
    """Remove up to ``limit`` of the oldest manifests received before ``cut_ns``, in one
    transaction (``db``), with their events; record each node's new chain base."""
    out = Pruned()
    rows = db.execute(sql(
        "SELECT id, node, boot_id, first_seq, last_seq, chain FROM manifests"
        " WHERE received_ns < ? ORDER BY id LIMIT ?"), (cut_ns, limit)).fetchall()
    for mid, node, boot_id, first, last, chain in rows:
        out.events += delete_events(db, node, boot_id, first, last)
        out.bases[node] = Head(mid, bytes(chain))
    if rows:
        db.execute(sql("DELETE FROM manifests WHERE received_ns < ? AND id <= ?"),
                   (cut_ns, rows[-1][0]))
        out.manifests = len(rows)
    for node, head in out.bases.items():
        db.execute(sql("INSERT INTO chain_bases (node, manifest_id, chain) VALUES (?, ?, ?)"
                       " ON CONFLICT (node) DO UPDATE SET manifest_id = excluded.manifest_id,"
                       " chain = excluded.chain"), (node, head.manifest_id, head.chain))
    return out


def chain_bases(db: Any, sql: Callable[[str], str]) -> dict[str, Head]:
    return {node: Head(mid, bytes(chain)) for node, mid, chain in
            db.execute(sql("SELECT node, manifest_id, chain FROM chain_bases")).fetchall()}


UNMANIFESTED_BEFORE = (
    "DELETE FROM events WHERE time_ns < ? AND NOT EXISTS (SELECT 1 FROM manifests m"
    " WHERE m.node = events.node AND m.boot_id = events.boot_id)"
)
"""Events of runs stored before tamper evidence, by their time."""
