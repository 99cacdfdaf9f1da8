"""`gpuaudit verify` on a real store: intact it exits 0; every edit is named.

A real agent (procfs mode: the signing path does not depend on the sensors)
ships signed batches over mutual TLS to a real collector, which also signs
checkpoints and copies them to a directory. Then, on copies of the database
file, rows are edited, deleted and inserted directly with sqlite3, and a
manifest is removed (once naively, once with the chain recomputed to hide it):
`verify` must name each change, by kind, node, run and seq.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.integrity.chain import Manifest, chain_seed, next_chain
from gpuaudit.v1 import events_pb2
from tests.integration.harness import Collector, TestPki, ready_agent, settle

pytestmark = pytest.mark.integration

NODE = "verify-node"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[Path]:
    """The database and checkpoint copies of a collector that stored a signed agent run."""
    root = tmp_path_factory.mktemp("verify")
    col = Collector(root / "events.db", "--checkpoint-dir", str(root / "copies"),
                    "--checkpoint-interval", "1", pki=pki)
    agent = ready_agent(col, NODE, "procfs", root / "agent.log", "--mode", "procfs")
    try:
        settle(col, NODE)
        settle(col, NODE)  # a few batches, and checkpoints between them
    finally:
        agent.stop()
        col.stop()  # writes the last checkpoint
    yield root


def verify(db: Path, root: Path, pki: TestPki, *extra: str) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "collector.cli", "verify", "--db", str(db),
           "--ca", str(pki.root / "ca" / "ca.crt"), "--checkpoints", str(root / "copies"), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, done.stdout


def copy_of(root: Path, name: str) -> Path:
    dest = root / f"{name}.db"
    shutil.copy(root / "events.db", dest)
    return dest


def agent_rows(db: sqlite3.Connection) -> list[tuple[int, str, int, bytes]]:
    return db.execute("SELECT id, boot_id, seq, body FROM events WHERE node = ? AND boot_id NOT"
                      " LIKE 'collector-%' ORDER BY seq", (NODE,)).fetchall()


def test_intact_store_verifies(store: Path, pki: TestPki) -> None:
    rc, out = verify(store / "events.db", store, pki)
    assert rc == 0, out
    assert out.startswith("intact:") and " 0 tampering problems" in out
    assert "NOT anchored" not in out and "0 events from unsigned batches" in out


def test_modified_deleted_and_inserted_rows_are_each_named(store: Path, pki: TestPki) -> None:
    db_path = copy_of(store, "tampered")
    with sqlite3.connect(db_path) as db:
        rows = agent_rows(db)
        (mod_id, boot, mod_seq, body), (del_id, _, del_seq, _) = rows[1], rows[3]
        ev = events_pb2.Event.FromString(body)
        ev.process.user = "somebody-else"  # rewrite who did it
        db.execute("UPDATE events SET body = ? WHERE id = ?", (ev.SerializeToString(), mod_id))
        db.execute("DELETE FROM events WHERE id = ?", (del_id,))
        forged = events_pb2.Event(type="gpu.open", node=NODE, boot_id=boot, seq=10**6)
        db.execute("INSERT INTO events (node, boot_id, seq, type, time_ns, body) VALUES"
                   " (?, ?, ?, 'gpu.open', 1, ?)", (NODE, boot, 10**6, forged.SerializeToString()))
    rc, out = verify(db_path, store, pki)
    assert rc == 1
    lines = out.splitlines()
    assert f"modified: node {NODE} {boot} seq {mod_seq}: events.id={mod_id}" in "\n".join(lines)
    assert f"deleted: node {NODE} {boot} seq {del_seq}: in a manifest" in out
    assert f"inserted: node {NODE} {boot} seq {10**6}" in out
    assert sum(line.startswith(("modified", "deleted", "inserted")) for line in lines) == 3
    assert out.splitlines()[-1].startswith("TAMPERED:")


def test_a_removed_batch_breaks_the_chain(store: Path, pki: TestPki) -> None:
    db_path = copy_of(store, "no-manifest")
    with sqlite3.connect(db_path) as db:
        (mid, first, last) = db.execute(
            "SELECT id, first_seq, last_seq FROM manifests WHERE node = ? AND signature != x''"
            " AND boot_id NOT LIKE 'collector-%' ORDER BY id LIMIT 1 OFFSET 1", (NODE,)).fetchone()
        db.execute("DELETE FROM manifests WHERE id = ?", (mid,))
        db.execute("DELETE FROM events WHERE node = ? AND seq BETWEEN ? AND ?"
                   " AND boot_id NOT LIKE 'collector-%'", (NODE, first, last))
    rc, out = verify(db_path, store, pki)
    assert rc == 1 and f"chain_broken: node {NODE}" in out
    assert f"missing: node {NODE}" in out  # its seqs now look never received


def test_recomputing_the_chain_does_not_fool_the_checkpoints(store: Path, pki: TestPki) -> None:
    db_path = copy_of(store, "rechained")
    with sqlite3.connect(db_path) as db:
        first_manifest = db.execute("SELECT MIN(id) FROM manifests WHERE node = ?",
                                    (NODE,)).fetchone()[0]
        db.execute("DELETE FROM manifests WHERE id = ?", (first_manifest,))
        value = chain_seed(NODE)
        for row in db.execute("SELECT id, boot_id, first_seq, last_seq, leaves, signature, signer"
                              " FROM manifests WHERE node = ? ORDER BY id", (NODE,)).fetchall():
            value = next_chain(value, Manifest(NODE, *row[1:]))
            db.execute("UPDATE manifests SET chain = ? WHERE id = ?", (value, row[0]))
        db.execute("DELETE FROM checkpoints")  # and the database's own checkpoints with it
    rc, out = verify(db_path, store, pki)
    assert rc == 1
    assert "chain_broken" not in out  # the chain itself is consistent again...
    assert f"checkpoint_mismatch: node {NODE}" in out  # ...but not with what was signed
    assert "checkpoint_missing" in out
