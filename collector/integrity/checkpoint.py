"""Signed checkpoints: the collector vouches for every node's chain head at a moment.

A checkpoint's body is canonical JSON::

    {"version": 1, "time_ns": ..., "collector_key": "<hex raw Ed25519 public key>",
     "heads": {"<node>": {"manifest_id": N, "chain": "<hex>"}, ...},
     "pruned_before_ns": 0}

signed with the collector's key. It is stored in the database and, when a
copy directory is configured, appended to ``DIR/checkpoints.jsonl`` (fsynced):
a copy outside the database is what makes rewriting the database detectable,
so keep that directory on other storage (another host, WORM storage).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from collector.integrity.keys import CollectorKey, public_key
from gpuaudit.integrity import signature_valid

log = logging.getLogger(__name__)

COPY_FILE = "checkpoints.jsonl"


@dataclass(frozen=True)
class Head:
    """A node's chain head: its newest manifest's id and chain value."""

    manifest_id: int
    chain: bytes


@dataclass(frozen=True)
class Checkpoint:
    time_ns: int
    body: bytes
    signature: bytes

    def parsed(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    def heads(self) -> dict[str, Head]:
        return _heads(self.parsed()["heads"])

    def bases(self) -> dict[str, Head]:
        """Chain bases after retention (the newest removed manifest per node)."""
        return _heads(self.parsed().get("bases", {}))

    def signed_by(self) -> bytes:
        return bytes.fromhex(self.parsed()["collector_key"])

    def valid(self, trusted_keys: set[bytes] | None = None) -> bool:
        """Signature good, by its own key (and that key trusted, when a set is given)."""
        key = self.signed_by()
        if trusted_keys is not None and key not in trusted_keys:
            return False
        return signature_valid(public_key(key), self.signature, self.body)

    def to_line(self) -> str:
        return json.dumps({"body": self.body.decode(), "signature": self.signature.hex()}) + "\n"

    @classmethod
    def from_line(cls, line: str) -> Checkpoint:
        data = json.loads(line)
        body = data["body"].encode()
        return cls(int(json.loads(body)["time_ns"]), body, bytes.fromhex(data["signature"]))


def make_checkpoint(key: CollectorKey, time_ns: int, heads: dict[str, Head],
                    bases: dict[str, Head] | None = None,
                    pruned_before_ns: int = 0) -> Checkpoint:
    body = json.dumps({
        "version": 1, "time_ns": time_ns, "collector_key": key.public_raw.hex(),
        "heads": _heads_json(heads),
        "bases": _heads_json(bases or {}),
        "pruned_before_ns": pruned_before_ns,
    }, sort_keys=True, separators=(",", ":")).encode()
    return Checkpoint(time_ns, body, key.sign(body))


def _heads_json(heads: dict[str, Head]) -> dict[str, dict[str, Any]]:
    return {n: {"manifest_id": h.manifest_id, "chain": h.chain.hex()}
            for n, h in sorted(heads.items())}


def _heads(data: dict[str, Any]) -> dict[str, Head]:
    return {node: Head(int(h["manifest_id"]), bytes.fromhex(h["chain"]))
            for node, h in data.items()}


def read_copies(directory: Path) -> list[Checkpoint]:
    """The checkpoints copied to ``directory``; a damaged line is an error, not skipped."""
    path = directory / COPY_FILE
    if not path.exists():
        return []
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            out.append(Checkpoint.from_line(line))
        except (ValueError, KeyError) as err:
            raise ValueError(f"{path}:{number}: not a checkpoint ({err})") from None
    return out


class CheckpointStore(Protocol):
    """What the writer needs from storage."""

    def chain_heads(self) -> dict[str, Head]: ...

    def chain_bases(self) -> dict[str, Head]: ...

    def store_checkpoint(self, checkpoint: Checkpoint) -> None: ...


class CheckpointWriter:
    """Signs a checkpoint every ``every_s`` seconds (and at stop) while the collector runs."""

    def __init__(self, store: CheckpointStore, key: CollectorKey, copy_dir: Path | None,
                 every_s: float, clock: Callable[[], int]) -> None:
        self._store, self._key, self._copy_dir = store, key, copy_dir
        self._every_s, self._clock = every_s, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoints", daemon=True)
        self.written = 0
        self.failures = 0

    def start(self) -> None:
        self._thread.start()

    def write_now(self, pruned_before_ns: int = 0) -> Checkpoint | None:
        """One checkpoint now; None (logged, counted) when it could not be stored."""
        try:
            cp = make_checkpoint(self._key, self._clock(), self._store.chain_heads(),
                                 self._store.chain_bases(), pruned_before_ns)
            self._store.store_checkpoint(cp)
            if self._copy_dir is not None:
                _append_copy(self._copy_dir, cp)
        except Exception as err:  # storage or copy location down: next round retries
            self.failures += 1
            log.error("checkpoint not written: %s", err)
            return None
        self.written += 1
        return cp

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.write_now()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            self.write_now()


def _append_copy(directory: Path, cp: Checkpoint) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / COPY_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, cp.to_line().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
