"""Read a store's events, manifests, signers and checkpoints straight from its database.

``gpuaudit verify`` works offline, without the collector (which may be down
or the thing under suspicion), on every layout: SQLite rows, SQLite chunks and
PostgreSQL. Events come out per node, so memory stays bounded by one node's
events.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from collector.integrity.chain import Manifest
from collector.integrity.checkpoint import Checkpoint, Head
from collector.storage.common import pyformat
from collector.storage.schema import CHUNK_VERSION_BASE
from gpuaudit.integrity import event_bodies
from gpuaudit.v1 import events_pb2


@dataclass(frozen=True)
class StoredManifest:
    id: int
    manifest: Manifest
    chain: bytes
    received_ns: int


@dataclass(frozen=True)
class StoredEvent:
    boot_id: str
    seq: int
    time_ns: int
    body: bytes
    where: str  # how to find it: "events.id=12" or "chunks.id=3"


class StoreReader(Protocol):
    def nodes(self) -> list[str]: ...
    def manifests(self, node: str) -> list[StoredManifest]: ...
    def events(self, node: str) -> Iterator[StoredEvent]: ...
    def signers(self) -> dict[bytes, tuple[str, bytes]]: ...
    def checkpoints(self) -> list[Checkpoint]: ...
    def chain_bases(self) -> dict[str, Head]: ...
    def close(self) -> None: ...


class _SqlReader:
    """The queries every layout shares (manifests, signers, checkpoints)."""

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        raise NotImplementedError

    def nodes(self) -> list[str]:
        rows = self._all("SELECT DISTINCT node FROM manifests UNION SELECT DISTINCT node FROM "
                         f"{self._event_table()} ORDER BY 1")
        return [r[0] for r in rows]

    def _event_table(self) -> str:
        return "events"

    def manifests(self, node: str) -> list[StoredManifest]:
        rows = self._all(
            "SELECT id, boot_id, first_seq, last_seq, leaves, signature, signer, chain,"
            " received_ns FROM manifests WHERE node = ? ORDER BY id", (node,))
        return [StoredManifest(i, Manifest(node, b, f, last, bytes(lv), bytes(sig), bytes(sg)),
                               bytes(ch), rx) for i, b, f, last, lv, sig, sg, ch, rx in rows]

    def signers(self) -> dict[bytes, tuple[str, bytes]]:
        return {bytes(h): (k, bytes(d)) for h, k, d in
                self._all("SELECT sha256, kind, data FROM signers")}

    def checkpoints(self) -> list[Checkpoint]:
        return [Checkpoint(t, bytes(b), bytes(s)) for t, b, s in
                self._all("SELECT time_ns, body, signature FROM checkpoints ORDER BY id")]

    def chain_bases(self) -> dict[str, Head]:
        return {n: Head(i, bytes(c)) for n, i, c in
                self._all("SELECT node, manifest_id, chain FROM chain_bases")}

    def events(self, node: str) -> Iterator[StoredEvent]:
        for i, boot, seq, t, body in self._all(
                "SELECT id, boot_id, seq, time_ns, body FROM events WHERE node = ?"
                " ORDER BY boot_id, seq", (node,)):
            yield StoredEvent(boot, seq, t, bytes(body), f"events.id={i}")


class SqliteReader(_SqlReader):
    """A SQLite store of either layout, opened read-only."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such database")
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        self.chunks = version > CHUNK_VERSION_BASE
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        if "manifests" not in tables:
            raise ValueError(f"{path}: no manifests table (a store from before tamper evidence;"
                             " open it once with a current collector)")

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        return self._db.execute(sql, args).fetchall()

    def _event_table(self) -> str:
        return "chunks" if self.chunks else "events"

    def events(self, node: str) -> Iterator[StoredEvent]:
        if not self.chunks:
            yield from super().events(node)
            return
        for chunk, body in self._all("SELECT id, body FROM chunks WHERE node = ? ORDER BY id",
                                     (node,)):
            for raw in event_bodies(bytes(body)):
                ev = events_pb2.Event.FromString(raw)
                yield StoredEvent(ev.boot_id, ev.seq, ev.time.ToNanoseconds(), raw,
                                  f"chunks.id={chunk}")

    def close(self) -> None:
        self._db.close()


class PostgresReader(_SqlReader):
    def __init__(self, dsn: str) -> None:
        import psycopg

        self._conn = psycopg.connect(dsn, autocommit=True)

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._conn.cursor() as cur:
            cur.execute(pyformat(sql), args)
            return cur.fetchall()

    def close(self) -> None:
        self._conn.close()
