"""agent.rejected: refused ingest attempts, recorded without flooding the store.

A misconfigured or hostile agent retries a refused batch forever. Each
(certificate, claimed node, reason) gets at most one agent.rejected per
``window_s``; refusals inside the window are counted into the next event's
``batches``, and :meth:`Rejections.flush` (periodic, and at shutdown) records
counts still waiting, so every refused batch is counted exactly once.

The event's node is the certificate's first name (who tried), so a node's
status shows how many batches *it* had refused; ``claimed_node`` says whom it
claimed to be.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from collector.storage.base import Storage, StorageError
from gpuaudit.tls import PeerIdentity
from gpuaudit.v1 import events_pb2

log = logging.getLogger(__name__)

WINDOW_S = 10.0
"""At most one agent.rejected per (certificate, claimed node, reason) per window."""

_Key = tuple[tuple[str, ...], str, str]  # cert names, claimed node, reason


@dataclass
class _Pending:
    batches: int = 0           # refusals not yet in a stored event
    last_recorded: float = -1e18
    peer: str = ""             # latest client address


class Rejections:
    """Counts refused batches and stores them as agent.rejected events (thread-safe)."""

    def __init__(
        self,
        storage: Storage,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Record into ``storage``; ``clock`` (seconds) paces the window."""
        self._storage = storage
        self._window = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[_Key, _Pending] = {}

    def refused(
        self, identity: PeerIdentity, claimed_node: str, reason: str, peer: str
    ) -> events_pb2.Event | None:
        """Count one refused batch; store and return an event if the window allows.

        Blocking (writes to storage): call it from a worker thread.
        """
        key = (identity.names, claimed_node, reason)
        with self._lock:
            pending = self._pending.setdefault(key, _Pending())
            pending.batches += 1
            pending.peer = peer
            if self._clock() - pending.last_recorded < self._window:
                return None
            return self._record(key, pending)

    def flush(self, force: bool = False) -> list[events_pb2.Event]:
        """Record every waiting count whose window has passed (all with ``force``)."""
        stored = []
        with self._lock:
            for key, pending in list(self._pending.items()):
                due = force or self._clock() - pending.last_recorded >= self._window
                if pending.batches and due:
                    event = self._record(key, pending)
                    if event is not None:
                        stored.append(event)
                elif not pending.batches and self._clock() - pending.last_recorded >= self._window:
                    del self._pending[key]  # idle: forget, bounded memory
        return stored

    def _record(self, key: _Key, pending: _Pending) -> events_pb2.Event | None:
        names, claimed_node, reason = key
        event = self._storage.own.new("agent.rejected", names[0] if names else "<unnamed>")
        r = event.agent_rejected
        r.claimed_node, r.peer, r.reason = claimed_node, pending.peer, reason
        r.batches = pending.batches
        r.cert_names.extend(names)
        try:
            stored = self._storage.store_own(event)
        except StorageError as err:
            # Keep the count: the next attempt or flush tries again.
            log.error("could not record a refused batch from %s: %s", pending.peer, err)
            return None
        pending.batches = 0
        pending.last_recorded = self._clock()
        return stored
