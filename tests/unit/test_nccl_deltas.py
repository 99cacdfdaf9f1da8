"""nccl.collective reports from the kernel's cumulative counters: every call
counted once, the first call of each report taken from the kernel's mark."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.nccl.deltas import Counters, Ledger, Mark, trim, zero_hist

KEY = (100, 0, 7, 0xABC)


def counters(calls: int, elems: int, first: int, last: int, **buckets: int) -> Counters:
    hist = list(zero_hist())
    for b, n in buckets.items():
        hist[int(b[1:])] = n
    return Counters(calls, elems, first, last, tuple(hist))


def test_first_report_is_everything_since_the_first_call() -> None:
    d = Ledger().delta(KEY, counters(3, 30, 1000, 3000, b9=2), None, read_ns=5000)
    assert d is not None
    assert (d.calls, d.elems, d.first_ns, d.last_ns, d.hist, d.exact_first) == (
        3, 30, 1000, 3000, (0,) * 9 + (2,), True)


def test_no_call_since_the_last_read_gives_no_report() -> None:
    ledger = Ledger()
    ledger.delta(KEY, counters(3, 30, 1000, 3000), None, 5000)
    assert ledger.delta(KEY, counters(3, 30, 1000, 3000), Mark(3, 0, 0), 9000) is None


def test_a_report_is_the_difference_with_the_stamped_first_call() -> None:
    ledger = Ledger()
    ledger.delta(KEY, counters(3, 30, 1000, 3000, b9=2), None, 5000)
    d = ledger.delta(KEY, counters(7, 70, 1000, 9000, b9=2, b10=4), Mark(3, 6000, 4), 10_000)
    assert d is not None
    assert (d.calls, d.elems, d.first_ns, d.last_ns, d.exact_first) == (4, 40, 6000, 9000, True)
    assert d.hist == (0,) * 10 + (4,)


def test_a_call_that_slipped_before_the_mark_gives_a_lower_bound() -> None:
    ledger = Ledger()
    ledger.delta(KEY, counters(3, 30, 1000, 3000), None, read_ns=5000)
    # call 4 came between the read and the re-arming: the kernel stamped call 5
    d = ledger.delta(KEY, counters(6, 60, 1000, 9000), Mark(3, 7000, 5), 10_000)
    assert d is not None
    assert (d.calls, d.first_ns, d.exact_first) == (3, 5000, False)


def test_an_entry_created_anew_is_reported_whole() -> None:
    ledger = Ledger()
    ledger.delta(KEY, counters(9, 90, 1000, 3000), None, 5000)
    d = ledger.delta(KEY, counters(2, 20, 8000, 8500), None, 9000)
    assert d is not None and (d.calls, d.elems, d.first_ns) == (2, 20, 8000)


def test_forget_drops_only_that_process() -> None:
    ledger = Ledger()
    other = (101, 0, 7, 0xABC)
    ledger.delta(KEY, counters(1, 1, 1, 1), None, 2)
    ledger.delta(other, counters(1, 1, 1, 1), None, 2)
    ledger.forget(100)
    assert list(ledger.seen) == [other]


def test_trim_removes_trailing_zeros_only() -> None:
    assert trim([0, 3, 0, 1, 0, 0]) == (0, 3, 0, 1)
    assert trim([0, 0]) == ()


@settings(deadline=None)  # a loaded CI machine is no failure
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 10_000)), max_size=30))
def test_reports_add_up_to_exactly_the_calls_made(steps: list[tuple[int, int]]) -> None:
    """However calls fall between reads, the reports sum to the totals."""
    ledger = Ledger()
    calls = elems = 0
    seen_calls = seen_elems = 0
    for t, (n, per_call) in enumerate(steps, start=1):
        calls += n
        elems += n * per_call
        d = ledger.delta(KEY, counters(calls, elems, 1, t), None, t)
        if d is not None:
            seen_calls += d.calls
            seen_elems += d.elems
            assert d.calls > 0
    assert (seen_calls, seen_elems) == (calls, elems)
