"""ExportHub: fans the collector's events and findings out to the sinks.

The collector calls :meth:`ExportHub.publish_event` for every stored event and
:meth:`ExportHub.publish_finding` for every new or updated finding. Both only
put a reference into each sink's bounded queue (:class:`SinkWorker`), so they
never block the ingest path and never raise; rendering and delivery happen on
one thread per sink. The hub keeps a reference to the published message: the
caller must not modify it afterwards.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from collector.export.base import KINDS, Item, Kind, Sink
from collector.export.worker import SinkWorker

log = logging.getLogger(__name__)


class ExportHub:
    """One :class:`SinkWorker` per sink; ``kinds`` picks events, findings or both;
    ``types`` (when given) the event types exported: ``gpu.open`` exactly, ``process.*``
    a whole family."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        queue_max: int = 10_000,
        batch_max: int = 100,
        policy: str = "drop_oldest",
        kinds: Iterable[Kind] = KINDS,
        types: Iterable[str] = (),
    ) -> None:
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"export sinks need unique names, got {names}")
        self._workers = [SinkWorker(s, queue_max, batch_max, policy) for s in sinks]
        self._kinds = frozenset(kinds)
        unknown = self._kinds - set(KINDS)
        if unknown:
            raise ValueError(f"unknown export kinds {sorted(unknown)}: use event, finding")
        patterns = list(types)
        self._types = frozenset(t for t in patterns if not t.endswith(".*"))
        self._families = tuple(t[:-1] for t in patterns if t.endswith(".*"))  # "process."
        self._all_types = not patterns

    def publish_event(self, event: Any) -> None:
        """Queue a gpuaudit.v1.Event for every sink. Never blocks, never raises."""
        if "event" in self._kinds and (self._all_types or self._wanted(event)):
            self._offer(Item("event", event=event))

    def publish_finding(self, finding: dict[str, Any]) -> None:
        """Queue a finding dict (the findings contract) for every sink; never blocks or raises."""
        if "finding" in self._kinds:
            self._offer(Item("finding", finding=finding))

    def start(self) -> None:
        """Start every sink's worker thread."""
        for w in self._workers:
            w.start()

    def close(self, drain_s: float = 5.0) -> None:
        """Deliver what is queued for up to ``drain_s`` seconds per sink (sinks drain in
        parallel), count the rest as dropped, close the sinks."""
        threads = [threading.Thread(target=w.close, args=(drain_s,)) for w in self._workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per sink name: queued, sent, retried, dropped (+ dropped_by), skipped, last_error."""
        return {w.sink.name: w.stats() for w in self._workers}

    @property
    def sink_names(self) -> list[str]:
        """The sinks' names, in order."""
        return [w.sink.name for w in self._workers]

    def _wanted(self, event: Any) -> bool:
        etype = getattr(event, "type", "")
        return etype in self._types or etype.startswith(self._families)

    def _offer(self, item: Item) -> None:
        for w in self._workers:
            try:
                w.offer(item)
            except Exception:  # offer does not raise; belt and braces
                log.exception("export: offer to %s failed", w.sink.name)
