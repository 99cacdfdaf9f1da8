"""Group commit: one writer thread stores the batches of all streams together.

An Ack lets the agent delete events, so every commit is fsynced
(``synchronous=FULL``). One transaction per batch caps ingest at one fsync per
batch; here the writer takes *every* batch waiting when it becomes free (up to
``max_group_events``) and stores them in one transaction, so under load many
batches share one fsync, while a lone batch still commits at once (no timer,
no added latency).

Each batch gets its own future, resolved only after the group's COMMIT, with
that batch's exact :class:`StoreResult`; a failed group (StorageError) fails
every future in it, and nothing of it was stored.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future

from collector.storage.base import Storage, StorageError, StoreResult
from gpuaudit.v1 import events_pb2

log = logging.getLogger(__name__)

DEFAULT_MAX_GROUP_EVENTS = 20_000
"""Most events one group transaction takes (bounds its time and memory)."""

_Pending = tuple[Sequence[events_pb2.Event], "Future[StoreResult]"]


class CommitterClosed(StorageError):
    """The collector is shutting down; the batch was not stored."""


class GroupCommitter:
    """The single writer thread; :meth:`submit` from any thread, then await the future."""

    def __init__(self, storage: Storage, max_group_events: int = DEFAULT_MAX_GROUP_EVENTS) -> None:
        """Write to ``storage``, at most ``max_group_events`` per transaction.

        A batch larger than the bound still goes alone in one group.
        """
        self._storage = storage
        self._max_events = max_group_events
        self._pending: deque[_Pending] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self.groups = 0   # transactions committed (for tests and benches)
        self.batches = 0  # batches in those transactions

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def submit(self, events: Sequence[events_pb2.Event]) -> Future[StoreResult]:
        """Queue one validated batch; the future holds its result after the commit.

        The future fails with StorageError if its group failed, and with
        :class:`CommitterClosed` if the committer is closing.
        """
        future: Future[StoreResult] = Future()
        with self._wake:
            if self._closing:
                future.set_exception(CommitterClosed("collector is shutting down"))
                return future
            self._pending.append((events, future))
            self._wake.notify()
        return future

    def close(self, timeout: float | None = None) -> None:
        """Stop taking batches, commit those already queued, stop the thread."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        # Only left if the thread never started or is stuck past ``timeout``:
        # answer them rather than leave their streams waiting forever.
        self._fail(self._take_all(), CommitterClosed("collector is shutting down"))

    def _run(self) -> None:
        while True:
            group = self._next_group()
            if not group:
                return  # closing and drained
            self._commit(group)

    def _next_group(self) -> list[_Pending]:
        with self._wake:
            while not self._pending and not self._closing:
                self._wake.wait()
            group: list[_Pending] = []
            size = 0
            while self._pending and (
                not group or size + len(self._pending[0][0]) <= self._max_events
            ):
                item = self._pending.popleft()
                group.append(item)
                size += len(item[0])
            return group

    def _commit(self, group: list[_Pending]) -> None:
        # A batch whose stream went away (its awaiting task was cancelled)
        # before the group started is skipped: nobody would get its Ack, and
        # the agent resends it. Once running, a future can no longer be cancelled.
        group = [item for item in group if item[1].set_running_or_notify_cancel()]
        if not group:
            return
        try:
            results = self._storage.store_batches([events for events, _ in group])
        except Exception as err:
            if len(group) > 1:
                # One bad batch must not fail the other nodes' batches with it:
                # commit them one by one so only the culprit gets the error.
                for item in group:
                    self._commit_alone(item)
                return
            self._fail(group, _as_storage_error(err))
            return
        self.groups += 1
        self.batches += len(group)
        for (_, future), result in zip(group, results, strict=True):
            future.set_result(result)

    def _commit_alone(self, item: _Pending) -> None:
        events, future = item
        try:
            result = self._storage.store_batches([events])[0]
        except Exception as err:
            self._fail([item], _as_storage_error(err))
            return
        self.groups += 1
        self.batches += 1
        future.set_result(result)

    def _take_all(self) -> list[_Pending]:
        with self._wake:
            taken = list(self._pending)
            self._pending.clear()
            return taken

    @staticmethod
    def _fail(group: list[_Pending], err: StorageError) -> None:
        for _, future in group:
            if not future.done():
                future.set_exception(err)


def _as_storage_error(err: Exception) -> StorageError:
    if isinstance(err, StorageError):
        return err
    # a bug must not kill the only writer, nor hide: log it in full once
    log.error("group commit failed", exc_info=err)
    return StorageError(f"internal error: {err}")
