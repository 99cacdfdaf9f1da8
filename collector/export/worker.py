"""A sink's bounded queue, worker thread, retries and drop accounting.

``offer`` never blocks and never raises: it runs on the collector's ingest path.
The worker thread takes up to ``batch_max`` items, renders them with the sink and
sends the batch, retrying the *same* batch with exponential backoff (capped,
jittered) for as long as the receiver fails, so nothing is lost while the
receiver is down as long as the queue holds. When the queue is full one item is
dropped per offer (``drop_oldest``: the oldest waiting one, so a SIEM catching up
gets the most recent activity; ``drop_newest``: the one offered) and counted.
Every drop has a reason; warnings about drops are rate-limited.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from collector.export.base import Item, Sink, SinkError

log = logging.getLogger(__name__)

POLICIES = ("drop_oldest", "drop_newest")
DROP_REASONS = ("queue_full", "render", "rejected", "shutdown", "closed")
"""queue_full: the bounded queue was full; render: the sink could not render the
item; rejected: the receiver refused the batch as invalid (not retryable);
shutdown: still queued or in flight when close() gave up; closed: offered after close()."""

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 30.0
WARN_EVERY_S = 10.0


class RateLimitedWarning:
    """Logs at most once per ``every_s``, summing what happened in between."""

    def __init__(self, every_s: float = WARN_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self._every = every_s
        self._clock = clock
        self._last = -every_s
        self._pending = 0

    def __call__(self, what: str, n: int = 1) -> None:
        self._pending += n
        now = self._clock()
        if now - self._last >= self._every:
            log.warning("%s (%d since the last warning)", what, self._pending)
            self._last, self._pending = now, 0


class SinkWorker:
    """Queue + thread for one sink. Thread-safe; counters read under the lock."""

    def __init__(
        self,
        sink: Sink,
        queue_max: int = 10_000,
        batch_max: int = 100,
        policy: str = "drop_oldest",
        backoff: tuple[float, float] = (BACKOFF_MIN_S, BACKOFF_MAX_S),
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"drop policy {policy!r}: use one of {', '.join(POLICIES)}")
        if queue_max < 1 or batch_max < 1:
            raise ValueError("queue_max and batch_max must be at least 1")
        self.sink = sink
        self._queue: collections.deque[Item] = collections.deque()
        self._max, self._batch_max, self._policy = queue_max, batch_max, policy
        self._backoff = backoff
        self._cond = threading.Condition()
        self._closing = False
        self._closed = False
        self._deadline = 0.0
        self._inflight = 0
        self._sent = self._retried = self._skipped = 0
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._last_error = ""
        self._thread: threading.Thread | None = None
        self._warn = RateLimitedWarning()

    # -- producer side (collector threads / event loop)

    def offer(self, item: Item) -> None:
        """Queue ``item``; when full, drop per policy and count. Never blocks or raises."""
        with self._cond:
            if self._closing:
                self._drop("closed", 1)
                return
            if len(self._queue) >= self._max:
                self._drop("queue_full", 1)
                if self._policy == "drop_newest":
                    return
                self._queue.popleft()
            self._queue.append(item)
            self._cond.notify()

    # -- lifecycle

    def start(self) -> None:
        """Start the worker thread (items offered before start wait in the queue)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"export-{self.sink.name}", daemon=True
            )
            self._thread.start()

    def close(self, drain_s: float) -> None:
        """Stop taking items, deliver what is queued for up to ``drain_s`` seconds,
        then count what is left as dropped (``shutdown``) and close the sink."""
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._deadline = time.monotonic() + max(0.0, drain_s)
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, drain_s) + 30.0)
        with self._cond:
            self._drop("shutdown", len(self._queue))
            self._queue.clear()
            self._closed = True
        try:
            self.sink.close()
        except Exception as err:  # closing must not raise into the collector
            log.warning("export sink %s: close failed: %s", self.sink.name, err)

    def stats(self) -> dict[str, Any]:
        """``queued`` (waiting or in flight), ``sent``, ``retried`` (failed attempts
        retried), ``dropped`` (total) and ``dropped_by``, ``skipped``, ``last_error``."""
        with self._cond:
            return {
                "queued": len(self._queue) + self._inflight,
                "sent": self._sent,
                "retried": self._retried,
                "dropped": sum(self._dropped.values()),
                "dropped_by": dict(self._dropped),
                "skipped": self._skipped,
                "last_error": self._last_error,
            }

    # -- worker thread

    def _run(self) -> None:
        while True:
            items = self._take()
            if items is None:
                return
            rendered = self._render(items)
            if rendered:
                self._deliver(rendered)
            with self._cond:
                self._inflight = 0

    def _take(self) -> list[Item] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            if self._closing and time.monotonic() >= self._deadline:
                return None
            n = min(self._batch_max, len(self._queue))
            items = [self._queue.popleft() for _ in range(n)]
            self._inflight = n
            return items

    def _render(self, items: list[Item]) -> list[Any]:
        out = []
        for item in items:
            try:
                r = self.sink.render(item)
            except Exception as err:  # one bad item must not stop the sink
                with self._cond:
                    self._drop("render", 1)
                    self._inflight -= 1
                    self._last_error = f"render: {err}"
                continue
            if r is None:
                with self._cond:
                    self._skipped += 1
                    self._inflight -= 1
            else:
                out.append(r)
        return out

    def _deliver(self, batch: list[Any]) -> None:
        delay = self._backoff[0]
        while True:
            try:
                self.sink.send(batch)
            except Exception as err:  # SinkError, OSError, anything: retry
                if not self._failed(err, len(batch)):
                    return
            else:
                with self._cond:
                    self._sent += len(batch)
                return
            if not self._sleep(delay):
                with self._cond:
                    self._drop("shutdown", len(batch))
                return
            delay = min(delay * 2, self._backoff[1])

    def _failed(self, err: Exception, n: int) -> bool:
        """Count a failed send; True when it should be retried."""
        retry = not isinstance(err, SinkError) or err.retryable
        with self._cond:
            self._last_error = f"{type(err).__name__}: {err}"
            if retry:
                self._retried += 1
            else:
                self._drop("rejected", n)
        log.debug("export sink %s: send failed (%s)", self.sink.name, err)
        return retry

    def _sleep(self, delay: float) -> bool:
        """Back off (jittered); False once close()'s drain deadline has passed.
        Waits on the condition so that close() cuts a long backoff short."""
        end = time.monotonic() + delay * random.uniform(0.5, 1.0)
        with self._cond:
            while True:
                now = time.monotonic()
                if self._closing and now >= self._deadline:
                    return False
                limit = min(end, self._deadline) if self._closing else end
                if now >= limit:
                    return True
                self._cond.wait(limit - now)

    def _drop(self, reason: str, n: int) -> None:
        # caller holds the lock
        if n <= 0:
            return
        self._dropped[reason] += n
        self._warn(f"export sink {self.sink.name}: dropped items ({reason})", n)
