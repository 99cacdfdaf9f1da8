"""agent.gap: what a newly stored agent batch reveals about missing events.

Two causes, both judged only on events stored *for the first time* (a replayed
or duplicate event reveals nothing new), inside the transaction that stores
them, so each gap is raised exactly once:

``seq_skip``
    For the batch's (node N, boot_id B), ``prev`` is the highest seq stored
    before the batch (0 if none). Walking the new events in seq order with
    ``expected = prev + 1``: a seq above ``expected`` raises a gap of
    ``expected .. seq - 1``; then ``expected = max(expected, seq + 1)``. A
    late event filling an older hole (seq below ``expected``) raises nothing.

``reported``
    Every new agent.loss raises one gap copying its figures, with
    ``report_seq`` = the agent.loss event's seq.
"""

from __future__ import annotations

from collections.abc import Sequence

from collector.storage.own import OwnEvents
from gpuaudit.v1 import events_pb2

SEQ_SKIP = "seq_skip"
REPORTED = "reported"


def gaps_in(
    prev_seq: int, new_events: Sequence[events_pb2.Event], own: OwnEvents
) -> list[events_pb2.Event]:
    """The agent.gap events (seq unassigned) revealed by storing ``new_events``.

    ``new_events`` are the events of one batch that were not stored before,
    in increasing seq order; ``prev_seq`` is the highest seq stored for their
    (node, boot_id) before the batch.
    """
    if not new_events:
        return []
    gaps = _seq_skips(prev_seq, new_events, own)
    gaps.extend(_reported(ev, own) for ev in new_events if ev.type == "agent.loss")
    return gaps


def missing_count(gap: events_pb2.AgentGap) -> int:
    """How many events ``gap`` adds to a node's ``missing_events``.

    A reported loss of *numbered* events (first_seq > 0) also shows up as a
    seq skip once the agent sends anything after it, so only the skip is
    counted; a reported loss of events that never got a seq (kernel, queue or
    decode drops) can show up nowhere else and is counted in full.
    """
    if gap.cause == REPORTED and gap.first_seq > 0:
        return 0
    return int(gap.count)


def _seq_skips(
    prev_seq: int, new_events: Sequence[events_pb2.Event], own: OwnEvents
) -> list[events_pb2.Event]:
    first, last = new_events[0].seq, new_events[-1].seq
    if first == prev_seq + 1 and last - first == len(new_events) - 1:
        return []  # the common case: contiguous and right after prev
    gaps = []
    expected = prev_seq + 1
    for ev in new_events:
        if ev.seq > expected:
            gaps.append(_gap(own, ev, SEQ_SKIP, expected, ev.seq - 1))
        expected = max(expected, ev.seq + 1)
    return gaps


def _gap(
    own: OwnEvents, ev: events_pb2.Event, cause: str, first_seq: int, last_seq: int
) -> events_pb2.Event:
    gap = own.new("agent.gap", ev.node)
    g = gap.agent_gap
    g.cause, g.lost_boot_id = cause, ev.boot_id
    g.first_seq, g.last_seq, g.count = first_seq, last_seq, last_seq - first_seq + 1
    return gap


def _reported(ev: events_pb2.Event, own: OwnEvents) -> events_pb2.Event:
    loss = ev.agent_loss
    gap = own.new("agent.gap", ev.node)
    g = gap.agent_gap
    g.cause, g.reason, g.report_seq = REPORTED, loss.reason, ev.seq
    g.lost_boot_id, g.first_seq, g.last_seq = loss.lost_boot_id, loss.first_seq, loss.last_seq
    g.count = loss.count
    return gap
