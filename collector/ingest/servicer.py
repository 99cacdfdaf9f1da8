"""Collector.Ingest: agents stream EventBatches in, get one Ack per committed batch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from collector.ingest.validate import DEFAULT_MAX_BATCH_EVENTS, batch_problem
from collector.storage.base import Storage, StorageError
from gpuaudit.v1 import collector_pb2

log = logging.getLogger(__name__)

IngestContext = grpc.aio.ServicerContext[collector_pb2.EventBatch, collector_pb2.Ack]


class InvalidBatch(ValueError):
    """A batch breaks the contract; the message says how."""


def commit_batch(
    storage: Storage, batch: collector_pb2.EventBatch, max_events: int
) -> collector_pb2.Ack:
    """Validate and store ``batch``; return its Ack once the transaction committed.

    Raises InvalidBatch (nothing stored) when the batch breaks the contract.
    """
    problem = batch_problem(batch, max_events)
    if problem:
        raise InvalidBatch(f"batch {batch.batch_id}: {problem}")
    result = storage.store_batch(batch.events)
    return collector_pb2.Ack(
        batch_id=batch.batch_id,
        boot_id=batch.events[0].boot_id,
        acked_seq=result.acked_seq,
        stored=result.stored,
        duplicates=result.duplicates,
    )


class IngestServicer:
    """The Ingest method of the Collector service, thin over :func:`commit_batch`."""

    def __init__(self, storage: Storage, max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS) -> None:
        """Serve Ingest from ``storage``, refusing batches over ``max_batch_events``."""
        self._storage = storage
        self._max_events = max_batch_events

    async def Ingest(
        self, request_iterator: AsyncIterator[collector_pb2.EventBatch], context: IngestContext
    ) -> AsyncIterator[collector_pb2.Ack]:
        """Answer each batch with an Ack after it is committed, in order."""
        async for batch in request_iterator:
            yield await self._commit(batch, context)

    async def _commit(
        self, batch: collector_pb2.EventBatch, context: IngestContext
    ) -> collector_pb2.Ack:
        try:
            # The commit (and its fsync) runs on a worker thread so one slow
            # disk write does not stall every other stream on the event loop.
            return await asyncio.to_thread(commit_batch, self._storage, batch, self._max_events)
        except InvalidBatch as err:
            log.warning("rejected batch from %s: %s", context.peer(), err)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except StorageError as err:
            # Disk full, database locked by another process...: nothing was
            # acked, so the agent keeps the batch and may retry.
            log.error("storing batch %d from %s failed: %s", batch.batch_id, context.peer(), err)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"collector could not store the batch: {err}"
            )
