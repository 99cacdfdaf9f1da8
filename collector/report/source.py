"""Reading a period's events from a collector, page by page.

``QueryEvents`` returns at most MAX_QUERY_LIMIT events per call, oldest
first; a report over 30 days needs more. Pages are chained by time: the next
page asks for events at or after the last time seen, and events already seen
at that exact time are skipped by their (node, boot_id, seq) key.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from collector.storage.base import MAX_QUERY_LIMIT
from gpuaudit.v1 import collector_pb2, events_pb2


class EventSource(Protocol):
    """What a report reads: the collector's Query service (a stub or a test double)."""

    def query(self, query: collector_pb2.EventQuery) -> list[events_pb2.Event]: ...

    def status(self) -> collector_pb2.StatusReply: ...


class StubSource:
    """An EventSource over a connected ``CollectorStub``."""

    def __init__(self, stub: object, timeout_s: float = 60.0) -> None:
        self._stub = stub
        self._timeout = timeout_s

    def query(self, query: collector_pb2.EventQuery) -> list[events_pb2.Event]:
        return list(self._stub.QueryEvents(query, timeout=self._timeout))  # type: ignore[attr-defined]

    def status(self) -> collector_pb2.StatusReply:
        return self._stub.GetStatus(  # type: ignore[attr-defined]
            collector_pb2.StatusRequest(), timeout=self._timeout)

    def findings(self, since_ns: int) -> list[dict[str, Any]]:
        """Findings last seen in the period, as their JSON dicts (docs/findings.md)."""
        from collector.findings.engine import finding_dict

        q = collector_pb2.FindingQuery(limit=MAX_QUERY_LIMIT)
        q.since.FromNanoseconds(since_ns)
        return [finding_dict(f) for f in
                self._stub.ListFindings(q, timeout=self._timeout)]  # type: ignore[attr-defined]


class PageLimitError(RuntimeError):
    """More events share one nanosecond than a page holds: paging cannot advance."""


def events_between(source: EventSource, types: Sequence[str], since_ns: int, until_ns: int,
                   nodes: Sequence[str] = (), page: int = MAX_QUERY_LIMIT,
                   ) -> Iterator[events_pb2.Event]:
    """Every event of ``types`` with since_ns <= time < until_ns, oldest first."""
    seen_at_cursor: set[tuple[str, str, int]] = set()
    cursor = since_ns
    while True:
        q = collector_pb2.EventQuery(types=types, nodes=nodes, limit=page)
        q.since.FromNanoseconds(cursor)
        batch = source.query(q)
        fresh = [ev for ev in batch if _key(ev) not in seen_at_cursor]
        for ev in fresh:
            if ev.time.ToNanoseconds() >= until_ns:
                return
            yield ev
        if len(batch) < page:
            return
        last = batch[-1].time.ToNanoseconds()
        if not fresh and last == cursor:
            raise PageLimitError(f"more than {page} events at one instant ({cursor} ns)")
        if last != cursor:
            seen_at_cursor = set()
        cursor = last
        seen_at_cursor |= {_key(ev) for ev in batch if ev.time.ToNanoseconds() == last}


def _key(ev: events_pb2.Event) -> tuple[str, str, int]:
    return ev.node, ev.boot_id, ev.seq
