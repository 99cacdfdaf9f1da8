"""Per-node ingest rate limit: one token bucket (events/s) per node.

A flooding node is refused with RESOURCE_EXHAUSTED and a ``retry-after-ms``
hint; its events wait in its own spool, and other nodes' buckets are
untouched. The bucket is keyed by the *authenticated* node (over TLS the
certificate has already been matched with the claimed node).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_TRACKED_NODES = 100_000
"""Buckets kept before full (idle) ones are forgotten: a client inventing node
names (plaintext mode) must not grow memory without bound."""


@dataclass
class _Bucket:
    tokens: float
    updated: float


class NodeRateLimiter:
    """Token buckets of ``rate`` events/s holding at most ``burst`` events, per node.

    ``rate`` 0 turns limiting off. ``burst`` 0 means two seconds' worth. A
    batch larger than the burst is admitted when the bucket is full, leaving
    it in debt, so the largest allowed batch never starves.
    """

    def __init__(
        self, rate: float, burst: int = 0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Limit to ``rate`` events/s with bursts of ``burst``; ``clock`` gives seconds."""
        if rate < 0 or burst < 0:
            raise ValueError(f"rate ({rate}) and burst ({burst}) must not be negative")
        self.rate = rate
        self.burst = float(burst or 2 * rate)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def admit(self, node: str, events: int) -> float | None:
        """Take ``events`` tokens from ``node``'s bucket.

        Returns None when admitted, else the seconds to wait before the batch
        would fit (nothing is taken then).
        """
        if self.rate <= 0:
            return None
        bucket = self._refilled(node)
        need = min(float(events), self.burst)
        if bucket.tokens >= need:
            bucket.tokens -= events
            return None
        return (need - bucket.tokens) / self.rate

    def _refilled(self, node: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(node)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_NODES:
                self._forget_full(now)
            bucket = self._buckets[node] = _Bucket(self.burst, now)
            return bucket
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        return bucket

    def _forget_full(self, now: float) -> None:
        # A bucket that has refilled is the same as a new one: dropping it
        # changes nothing for its node.
        for node, b in list(self._buckets.items()):
            if b.tokens + (now - b.updated) * self.rate >= self.burst:
                del self._buckets[node]
