"""Collector.QueryEvents, GetStatus and ListFindings: reads for the CLI and tools."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from collector.ingest.access import AccessDenied, caller, require_reader
from collector.storage.base import Storage, StorageError
from collector.storage.common import SEVERITIES
from gpuaudit.v1 import collector_pb2, events_pb2

log = logging.getLogger(__name__)

MAX_FILTER_VALUES = 1000
"""Most values one ``types`` or ``nodes`` filter may list (bounds the SQL)."""

QueryContext = grpc.aio.ServicerContext[collector_pb2.EventQuery, events_pb2.Event]
StatusContext = grpc.aio.ServicerContext[collector_pb2.StatusRequest, collector_pb2.StatusReply]
FindingsContext = grpc.aio.ServicerContext[collector_pb2.FindingQuery, collector_pb2.Finding]


def query_problem(query: collector_pb2.EventQuery) -> str | None:
    """What is wrong with ``query``, or None. ``limit`` is clamped, not refused."""
    for name, values in (("types", query.types), ("nodes", query.nodes)):
        if len(values) > MAX_FILTER_VALUES:
            return f"{name} lists {len(values)} values, more than the maximum {MAX_FILTER_VALUES}"
    if query.HasField("since") and query.since.seconds < 0:
        return "since is before 1970"
    return None


class QueryServicer:
    """The read methods of the Collector service, thin over a :class:`Storage`.

    With ``tls``, callers need a reader certificate (PERMISSION_DENIED otherwise).
    """

    def __init__(self, storage: Storage, tls: bool = False) -> None:
        """Serve reads from ``storage``; ``tls``: check the caller's certificate."""
        self._storage = storage
        self._tls = tls

    async def _authorize(self, context: QueryContext | StatusContext | FindingsContext) -> None:
        try:
            require_reader(caller(context, self._tls))
        except AccessDenied as err:
            log.warning("refused query from %s: %s", context.peer(), err)
            await context.abort(err.code, str(err))

    async def QueryEvents(
        self, request: collector_pb2.EventQuery, context: QueryContext
    ) -> AsyncIterator[events_pb2.Event]:
        """Stream the stored events that match ``request``, oldest first."""
        await self._authorize(context)
        problem = query_problem(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            events = await asyncio.to_thread(self._storage.query, request)
        except StorageError as err:
            log.error("query failed: %s", err)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"collector storage failed: {err}")
        for event in events:
            yield event

    async def GetStatus(
        self, request: collector_pb2.StatusRequest, context: StatusContext
    ) -> collector_pb2.StatusReply:
        """Per-node heartbeat, sequence, count and loss figures."""
        await self._authorize(context)
        try:
            return await asyncio.to_thread(self._storage.status)
        except StorageError as err:
            log.error("status failed: %s", err)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"collector storage failed: {err}")

    async def ListFindings(
        self, request: collector_pb2.FindingQuery, context: FindingsContext
    ) -> AsyncIterator[collector_pb2.Finding]:
        """Stream the stored findings that match ``request``, most recently seen last."""
        await self._authorize(context)
        if request.min_severity and request.min_severity not in SEVERITIES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"min_severity {request.min_severity!r} is not one of "
                                f"{', '.join(SEVERITIES)}")
        if request.HasField("since") and request.since.seconds < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "since is before 1970")
        try:
            findings = await asyncio.to_thread(self._storage.findings, request)
        except StorageError as err:
            log.error("findings query failed: %s", err)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"collector storage failed: {err}")
        for finding in findings:
            yield finding
