"""Collector.Ingest: agents stream EventBatches in, get one Ack per committed batch.

Each batch passes, in order: the caller's certificate (TLS mode: a node
certificate naming the batch's node, else PERMISSION_DENIED and an
agent.rejected record), the contract (INVALID_ARGUMENT), the node's rate
limit (RESOURCE_EXHAUSTED with a ``retry-after-ms`` trailer), and then goes to
the group committer; its Ack is sent only after the group's transaction
committed (UNAVAILABLE if that failed). A refused batch ends the stream and
nothing of it is stored; batches acked before it stay stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from collector.ingest.access import AccessDenied, Refusal, caller, ingest_refusal
from collector.ingest.group import GroupCommitter
from collector.ingest.ratelimit import NodeRateLimiter
from collector.ingest.received import RawBatch, peer_cert_der
from collector.ingest.rejections import Rejections
from collector.ingest.validate import DEFAULT_MAX_BATCH_EVENTS, batch_problem
from collector.storage.base import StorageError
from gpuaudit.tls import PeerIdentity
from gpuaudit.v1 import collector_pb2

log = logging.getLogger(__name__)

IngestContext = grpc.aio.ServicerContext[collector_pb2.EventBatch, collector_pb2.Ack]

RETRY_AFTER_KEY = "retry-after-ms"
"""Trailing metadata on RESOURCE_EXHAUSTED: milliseconds until the batch would fit."""


class InvalidBatch(ValueError):
    """A batch breaks the contract; the message says how."""


def check_batch(batch: collector_pb2.EventBatch, max_events: int) -> None:
    """Raise InvalidBatch (prefixed with the batch id) unless ``batch`` may be stored."""
    problem = batch_problem(batch, max_events)
    if problem:
        raise InvalidBatch(f"batch {batch.batch_id}: {problem}")


@dataclass(frozen=True)
class IngestPolicy:
    """The checks every batch passes before it is committed."""

    max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS
    tls: bool = False                        # identify callers by client certificate
    limiter: NodeRateLimiter | None = None   # None: no rate limit


class IngestServicer:
    """The Ingest method of the Collector service, over a :class:`GroupCommitter`."""

    def __init__(
        self,
        committer: GroupCommitter,
        policy: IngestPolicy = IngestPolicy(),
        rejections: Rejections | None = None,
    ) -> None:
        """Commit through ``committer``; ``rejections`` records refused TLS callers."""
        self._committer = committer
        self._policy = policy
        self._rejections = rejections

    async def Ingest(
        self, request_iterator: AsyncIterator[RawBatch | collector_pb2.EventBatch],
        context: IngestContext,
    ) -> AsyncIterator[collector_pb2.Ack]:
        """Answer each batch with an Ack after it is committed, in order."""
        try:
            identity = caller(context, self._policy.tls)
        except AccessDenied as err:
            await context.abort(err.code, str(err))
        cert_der = peer_cert_der(context) if self._policy.tls else b""
        try:
            async for item in request_iterator:
                yield await self._ack(item, identity, context, cert_der)
        except DecodeError:
            # Garbage from the network must cost a line in the log at most
            # every few seconds, not a traceback per request.
            _undecodable.note(context.peer())
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "request is not a valid gpuaudit.v1.EventBatch "
                                "(protobuf decoding failed); nothing stored")

    async def _ack(
        self,
        item: RawBatch | collector_pb2.EventBatch,
        identity: PeerIdentity | None,
        context: IngestContext,
        cert_der: bytes = b"",
    ) -> collector_pb2.Ack:
        # Over gRPC every request is a RawBatch (collector.ingest.received);
        # tests may hand parsed batches straight to the servicer.
        batch = item.batch if isinstance(item, RawBatch) else item
        claimed = batch.events[0].node if batch.events else ""
        refusal = ingest_refusal(identity, claimed)
        if refusal is not None and identity is not None:
            await self._refuse(identity, claimed, refusal, context)
        try:
            check_batch(batch, self._policy.max_batch_events)
        except InvalidBatch as err:
            log.warning("rejected batch from %s: %s", context.peer(), err)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        await self._admit(claimed, batch, context)
        try:
            events = item.received(cert_der) if isinstance(item, RawBatch) else batch.events
            result = await asyncio.wrap_future(self._committer.submit(events))
        except StorageError as err:
            # Disk full, database locked by another process, shutting down...:
            # nothing was acked, so the agent keeps the batch and may retry.
            log.error("storing batch %d from %s failed: %s", batch.batch_id, context.peer(), err)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"collector could not store the batch: {err}"
            )
        return collector_pb2.Ack(
            batch_id=batch.batch_id,
            boot_id=batch.events[0].boot_id,
            acked_seq=result.acked_seq,
            stored=result.stored,
            duplicates=result.duplicates,
        )

    async def _refuse(
        self, identity: PeerIdentity, claimed: str, refusal: Refusal, context: IngestContext
    ) -> None:
        log.warning("refused batch from %s: %s", context.peer(), refusal.message)
        if self._rejections is not None:
            await asyncio.to_thread(
                self._rejections.refused, identity, claimed, refusal.reason, context.peer()
            )
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal.message)

    async def _admit(
        self, node: str, batch: collector_pb2.EventBatch, context: IngestContext
    ) -> None:
        limiter = self._policy.limiter
        wait_s = limiter.admit(node, len(batch.events)) if limiter else None
        if wait_s is None or limiter is None:
            return
        retry_ms = max(1, int(wait_s * 1000 + 0.999))
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"batch {batch.batch_id}: node {node!r} is over its ingest rate limit of "
            f"{limiter.rate:g} events/s (burst {limiter.burst:g}); nothing stored, "
            f"retry in {retry_ms} ms",
            trailing_metadata=((RETRY_AFTER_KEY, str(retry_ms)),),
        )


class _RateLimitedWarning:
    """Counts undecodable requests; warns at most every ``every_s`` seconds."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.count = 0
        self._every_s = every_s
        self._last = -every_s

    def note(self, peer: str) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._last >= self._every_s:
            self._last = now
            log.warning("undecodable Ingest request from %s (%d so far)", peer, self.count)


_undecodable = _RateLimitedWarning()
