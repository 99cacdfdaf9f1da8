"""net.flow deltas (agent.net.flows.FlowLedger): cumulative kernel counters
in, exact per-flush differences out; exited processes reported once more."""

from __future__ import annotations

from agent.net.flows import FlowDelta, FlowKey, FlowLedger

A = FlowKey(100, 2, 6, 8080, bytes([10, 77, 0, 2]) + b"\0" * 12)
B = FlowKey(100, 2, 6, 443, bytes([1, 1, 1, 1]) + b"\0" * 12)
C = FlowKey(200, 10, 6, 22, b"\0" * 15 + b"\1")


def nobody_dead(_tgid: int) -> bool:
    return False  # nobody dies unless a test says so


def test_first_flush_reports_the_whole_count() -> None:
    ledger = FlowLedger()
    deltas, done = ledger.deltas([(A, 1000, 7)], dead=nobody_dead)
    assert deltas == [FlowDelta(A, 1000, 7)] and done == []


def test_later_flushes_report_only_the_difference() -> None:
    ledger = FlowLedger()
    ledger.deltas([(A, 1000, 7), (B, 5, 5)], dead=nobody_dead)
    deltas, _ = ledger.deltas([(A, 1500, 7), (B, 5, 5)], dead=nobody_dead)
    assert deltas == [FlowDelta(A, 500, 0)]  # B did not move: nothing to say
    deltas, _ = ledger.deltas([(A, 1500, 9), (B, 5, 5)], dead=nobody_dead)
    assert deltas == [FlowDelta(A, 0, 2)]


def test_sum_of_deltas_is_the_cumulative_count() -> None:
    ledger = FlowLedger()
    total = [0, 0]
    for sent, received in [(3, 0), (3, 0), (17, 4), (1_000_003, 23_207)]:
        for d in ledger.deltas([(A, sent, received)], dead=nobody_dead)[0]:
            total[0] += d.sent
            total[1] += d.received
    assert total == [1_000_003, 23_207]


def test_exited_process_is_reported_once_more_then_forgotten() -> None:
    ledger = FlowLedger()
    ledger.deltas([(A, 10, 10), (C, 1, 1)], dead=nobody_dead)
    deltas, done = ledger.deltas([(A, 12, 10), (C, 1, 1)], dead=lambda t: t == 100)
    assert deltas == [FlowDelta(A, 2, 0)]
    assert done == [A]  # the caller deletes it from the kernel map
    assert A not in ledger.reported and C in ledger.reported


def test_exited_process_without_new_bytes_is_still_deleted() -> None:
    ledger = FlowLedger()
    ledger.deltas([(C, 4, 4)], dead=nobody_dead)
    assert ledger.deltas([(C, 4, 4)], dead=lambda t: True) == ([], [C])


def test_an_entry_made_anew_starts_from_zero() -> None:
    ledger = FlowLedger()
    ledger.deltas([(A, 100, 100)], dead=nobody_dead)
    ledger.deltas([], dead=nobody_dead)  # gone from the map: forgotten
    assert ledger.reported == {}
    assert ledger.deltas([(A, 3, 0)], dead=nobody_dead)[0] == [FlowDelta(A, 3, 0)]


def test_counter_below_reported_restarts_instead_of_going_negative() -> None:
    ledger = FlowLedger()
    ledger.deltas([(A, 100, 100)], dead=nobody_dead)
    assert ledger.deltas([(A, 40, 0)], dead=nobody_dead)[0] == [FlowDelta(A, 40, 0)]
