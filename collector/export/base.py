"""What flows through the export hub, and the one interface every sink implements.

An :class:`Item` is what the collector published (an event or a finding). A
sink turns items into its wire form (:meth:`Sink.render`) on its own worker
thread, and delivers a batch of rendered items (:meth:`Sink.send`). Queuing,
batching, retries with backoff and drop accounting live in
:mod:`collector.export.worker`, once for all sinks (Falco ``outputs.h``: output
channels share one small interface, one module each).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from gpuaudit import jsonform
from gpuaudit.v1 import events_pb2

Kind = Literal["event", "finding"]
KINDS: tuple[Kind, ...] = ("event", "finding")

PRODUCT = "gpuaudit"
VERSION = "0.1.0"  # the collector's version, as agent/health.py reports the agent's

FINDING_SEVERITIES = ("info", "low", "medium", "high", "critical")


@dataclass(frozen=True, slots=True)
class Item:
    """One published thing: an event (protobuf, converted lazily) or a finding dict."""

    kind: Kind
    event: events_pb2.Event | None = None
    finding: dict[str, Any] | None = None
    # protobuf -> dict costs ~100 us: done once, on the first sink thread that needs it
    _native: list[dict[str, Any]] = field(default_factory=list, compare=False, repr=False)

    def native(self) -> dict[str, Any]:
        """The gpuaudit JSON form: the event's public JSON, or the finding dict as given.
        Shared by every sink: read it, never modify it."""
        if not self._native:
            d = jsonform.to_dict(self.event) if self.event is not None else self.finding or {}
            self._native.append(d)  # two threads racing both append an equal dict: harmless
        return self._native[0]

    def envelope(self) -> dict[str, Any]:
        """``{"kind": "event", "event": {...}}`` or ``{"kind": "finding", "finding": {...}}``."""
        return {"kind": self.kind, self.kind: self.native()}


class SinkError(Exception):
    """A delivery failed. ``retryable=False``: the receiver refused this batch for
    what it contains (HTTP 400/413/422...), so sending it again cannot succeed and
    the batch is dropped (counted as ``rejected``) instead of blocking the queue."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Sink(Protocol):
    """An export destination. Both methods run on the sink's own worker thread."""

    name: str
    """Short unique name: ``ocsf_file``, ``syslog``, ``hec``, ``webhook``."""

    def render(self, item: Item) -> Any | None:
        """The wire form of ``item`` (bytes, str or a JSON-ready dict), or None when
        this sink does not export it (counted as ``skipped``). May raise on bad input:
        the item is then dropped and counted (reason ``render``)."""
        ...

    def send(self, batch: Sequence[Any]) -> None:
        """Deliver rendered items in order; raise :class:`SinkError` (or OSError) on
        failure. Returning means the receiver took the whole batch."""
        ...

    def close(self) -> None:
        """Release connections and files; called once, after the last send."""
        ...


def dumps(obj: Any) -> str:
    """Compact JSON, UTF-8 kept as is (the wire forms are UTF-8)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
