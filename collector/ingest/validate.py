"""Checks an incoming EventBatch against the contract in collector.proto.

Each check returns the first problem as a sentence an agent developer can act
on, or None. Nothing here raises: a bad batch is the agent's bug, and the
servicer turns the sentence into INVALID_ARGUMENT.
"""

from __future__ import annotations

from gpuaudit.v1 import collector_pb2, events_pb2

DEFAULT_MAX_BATCH_EVENTS = 5000
"""Most events one batch may carry (keeps one transaction and one Ack bounded)."""

COLLECTOR_ONLY_TYPES = frozenset({"agent.silent", "agent.gap", "agent.rejected"})
"""Types only the collector raises; an agent sending one is an error."""


def payload_field(event_type: str) -> str:
    """The oneof field name the contract requires for ``event_type``."""
    return event_type.replace(".", "_")


def batch_problem(batch: collector_pb2.EventBatch, max_events: int) -> str | None:
    """What is wrong with ``batch``, or None if it may be stored."""
    if not batch.events:
        return "batch has no events"
    if len(batch.events) > max_events:
        return f"batch has {len(batch.events)} events, more than the maximum of {max_events}"
    first = batch.events[0]
    previous_seq = 0
    for index, event in enumerate(batch.events):
        problem = event_problem(event) or _envelope_problem(event, first, previous_seq)
        if problem:
            return f"event {index} (seq {event.seq}): {problem}"
        previous_seq = event.seq
    return None


MAX_SEQ = 2**63 - 1
"""Largest seq the store can hold (SQLite integers are signed 64-bit)."""

MAX_TIME_S = (2**63 - 1) // 1_000_000_000
"""Latest event time whose nanoseconds fit a signed 64-bit integer (year 2262)."""


def event_problem(event: events_pb2.Event) -> str | None:
    """What is wrong with one event on its own, or None."""
    if not event.node:
        return "node is empty"
    if not event.boot_id:
        return "boot_id is empty"
    if event.seq <= 0:
        return "seq must be greater than 0"
    if event.seq > MAX_SEQ:
        return f"seq {event.seq} is above the maximum {MAX_SEQ}"
    if not event.HasField("time"):
        return "time is not set"
    if not 0 <= event.time.seconds <= MAX_TIME_S or not 0 <= event.time.nanos < 1_000_000_000:
        return "time is outside 1970-01-01 .. 2262-04-11 or has invalid nanos"
    return _payload_problem(event)


def _payload_problem(event: events_pb2.Event) -> str | None:
    if not event.type:
        return "type is empty"
    if event.type in COLLECTOR_ONLY_TYPES:
        return f"type {event.type!r} is raised by the collector; agents must not send it"
    expected = payload_field(event.type)
    actual = event.WhichOneof("payload")
    if actual is None:
        return f"type {event.type!r} but no payload is set (expected {expected!r})"
    if actual != expected:
        return f"type {event.type!r} but payload {actual!r} is set (expected {expected!r})"
    return None


def _envelope_problem(
    event: events_pb2.Event, first: events_pb2.Event, previous_seq: int
) -> str | None:
    if event.node != first.node:
        return f"node {event.node!r} differs from the batch's node {first.node!r}"
    if event.boot_id != first.boot_id:
        return f"boot_id {event.boot_id!r} differs from the batch's boot_id {first.boot_id!r}"
    if event.seq <= previous_seq:
        return f"seq {event.seq} is not greater than the previous event's seq {previous_seq}"
    return None
