"""The read side of the chunk store: EventQuery over chunks of events.

Same answers as the row store: filters (types, nodes, pid, uid, since) are
exact, results are oldest first by (event time, then storage order), and
``newest`` keeps the last N. Storage order is (chunk id, position in chunk),
which is the row store's insertion order, so both stores agree even on ties.

Candidate chunks come from SQL over small indexes (node, time, chunk_keys);
they are scanned in time order and decoded, and the scan stops as soon as no
later chunk can hold a better event than the N-th best found: chunks of
different nodes overlap in time, so "enough events" alone is not a stop.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from collector.storage.base import DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT
from collector.storage.common import time_ns
from gpuaudit.v1 import collector_pb2, events_pb2

KIND_TYPE, KIND_PID, KIND_UID = 0, 1, 2
"""``chunk_keys.kind``: what ``value`` is."""

ANY_VALUE = -1
"""pid/uid ``chunk_keys.value`` of a chunk with too many distinct ones to list (never a real id)."""

_Key = tuple[int, int, int]  # (time ns, chunk id, position): the total order of events


class _Filter(NamedTuple):
    """The per-event part of a query (node is a per-chunk property)."""

    types: frozenset[str]
    pid: int | None
    uid: int | None
    since: int | None

    def matches(self, ev: events_pb2.Event, t: int) -> bool:
        if self.since is not None and t < self.since:
            return False
        if self.types and ev.type not in self.types:
            return False
        if self.pid is None and self.uid is None:
            return True
        # Node-level events (no process) match no pid/uid filter, as in the row store.
        if not ev.HasField("process"):
            return False
        p = ev.process
        return (self.pid is None or p.pid == self.pid) and (self.uid is None or p.uid == self.uid)


def query_chunks(db: sqlite3.Connection, query: collector_pb2.EventQuery) -> list[events_pb2.Event]:
    """Events matching ``query`` from the chunk store on ``db``, oldest first."""
    limit = min(query.limit or DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT)
    flt = _filter(query)
    where, args = _where(query, flt)
    if query.newest:
        # Best = newest: keep the N largest keys; heap[0] is the N-th best.
        sql = f"SELECT id, max_time_ns FROM chunks{where} ORDER BY max_time_ns DESC"
        sign = 1
    else:
        # Best = oldest: keep the N smallest keys, negated in a min-heap.
        sql = f"SELECT id, min_time_ns FROM chunks{where} ORDER BY min_time_ns ASC"
        sign = -1
    best: list[tuple[int, int, int, events_pb2.Event]] = []
    for chunk, bound in db.execute(sql, args):
        if len(best) == limit and sign * bound < best[0][0]:
            break  # every event of this and later chunks ranks below the N-th best
        for key, ev in _matching(db, chunk, flt):
            item = (sign * key[0], sign * key[1], sign * key[2], ev)
            if len(best) < limit:
                heapq.heappush(best, item)
            elif item[:3] > best[0][:3]:
                heapq.heapreplace(best, item)
    best.sort(key=lambda item: item[:3], reverse=sign < 0)
    return [item[3] for item in best]


def _matching(
    db: sqlite3.Connection, chunk: int, flt: _Filter
) -> Iterator[tuple[_Key, events_pb2.Event]]:
    (body,) = db.execute("SELECT body FROM chunks WHERE id = ?", (chunk,)).fetchone()
    for pos, ev in enumerate(collector_pb2.EventBatch.FromString(body).events):
        t = ev.time
        t_ns = t.seconds * 1_000_000_000 + t.nanos
        if flt.matches(ev, t_ns):
            yield (t_ns, chunk, pos), ev


def _filter(query: collector_pb2.EventQuery) -> _Filter:
    return _Filter(
        types=frozenset(query.types),
        pid=query.pid if query.HasField("pid") else None,
        uid=query.uid if query.HasField("uid") else None,
        since=time_ns(query.since) if query.HasField("since") else None,
    )


def _where(query: collector_pb2.EventQuery, flt: _Filter) -> tuple[str, list[object]]:
    """SQL narrowing the candidate chunks: a superset of those holding a match."""
    clauses: list[str] = []
    args: list[object] = []
    if query.nodes:
        clauses.append(f"node IN ({', '.join('?' * len(query.nodes))})")
        args.extend(query.nodes)
    if flt.since is not None:
        clauses.append("max_time_ns >= ?")
        args.append(flt.since)
    keyed: list[tuple[int, Sequence[object]]] = [
        (KIND_TYPE, sorted(flt.types)),
        (KIND_PID, [] if flt.pid is None else [flt.pid, ANY_VALUE]),
        (KIND_UID, [] if flt.uid is None else [flt.uid, ANY_VALUE]),
    ]
    for kind, values in keyed:
        if values:
            marks = ", ".join("?" * len(values))
            clauses.append(
                f"id IN (SELECT chunk FROM chunk_keys WHERE kind = ? AND value IN ({marks}))"
            )
            args += [kind, *values]
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args
