"""EventBatch validation as a plain function (the servicer tests cover the wire)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from collector.ingest.validate import MAX_SEQ, batch_problem, payload_field
from tests.unit.test_collector_support import batch, gpu_open, health, process_exit


def test_payload_field_is_type_with_dots_as_underscores():
    assert payload_field("gpu.open") == "gpu_open"
    assert payload_field("agent.health") == "agent_health"


def test_valid_mixed_batch_passes():
    assert batch_problem(batch(1, gpu_open(1), process_exit(3), health(9)), 5000) is None


def test_batch_at_the_limit_passes_and_one_more_fails():
    events = [gpu_open(s) for s in range(1, 6)]
    assert batch_problem(batch(1, *events), 5) is None
    assert batch_problem(batch(1, *events, gpu_open(6)), 5) == (
        "batch has 6 events, more than the maximum of 5"
    )


@given(st.lists(st.integers(min_value=1, max_value=MAX_SEQ), min_size=1, max_size=30))
def test_seq_order_is_enforced(seqs):
    problem = batch_problem(batch(1, *[gpu_open(s) for s in seqs]), 5000)
    increasing = all(a < b for a, b in itertools.pairwise(seqs))
    if increasing:
        assert problem is None
    else:
        bad = next(i for i in range(1, len(seqs)) if seqs[i] <= seqs[i - 1])
        assert problem == (
            f"event {bad} (seq {seqs[bad]}): seq {seqs[bad]} is not greater than "
            f"the previous event's seq {seqs[bad - 1]}"
        )


def test_values_the_store_cannot_hold_are_refused():
    # uint64 in the proto, signed 64-bit in SQLite: refuse, don't fail the commit
    assert batch_problem(batch(1, gpu_open(MAX_SEQ + 1)), 5000) == (
        f"event 0 (seq {MAX_SEQ + 1}): seq {MAX_SEQ + 1} is above the maximum {MAX_SEQ}")
    late = gpu_open(1)
    late.time.seconds = 2**40
    assert "time is outside" in (batch_problem(batch(1, late), 5000) or "")
