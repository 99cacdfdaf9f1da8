"""Report building blocks: paging through a period, GPU sessions, CSV safety.

The end-to-end report (real collector, real browser) is
tests/integration/test_report.py; these pin the edge cases: many events at
one instant across a page boundary, a pid reused after its exit, a process
NVML saw leave the GPU, an open of only the control device.
"""

from __future__ import annotations

import pytest

from collector.report.build import Scope, build_report
from collector.report.source import PageLimitError, events_between
from collector.report.tabular import render_csv
from collector.report.usage import UNIDENTIFIED, UsageModel
from gpuaudit.v1 import collector_pb2, events_pb2

S = 10**9


def ev(seq: int, type_: str, t: int, pid: int = 0, user: str = "u") -> events_pb2.Event:
    e = events_pb2.Event(type=type_, node="n", boot_id="b", seq=seq)
    e.time.FromNanoseconds(t)
    if pid:
        e.process.pid, e.process.user = pid, user
    getattr(e, type_.replace(".", "_")).SetInParent()
    return e


class ListSource:
    """An EventSource over a list, answering like the collector's QueryEvents."""

    def __init__(self, events: list[events_pb2.Event]) -> None:
        self.events = sorted(events, key=lambda e: (e.time.ToNanoseconds(), e.seq))
        self.queries = 0

    def query(self, q: collector_pb2.EventQuery) -> list[events_pb2.Event]:
        self.queries += 1
        since = q.since.ToNanoseconds()
        hits = [e for e in self.events
                if (not q.types or e.type in q.types) and (not q.nodes or e.node in q.nodes)
                and (not q.HasField("pid") or e.process.pid == q.pid)
                and e.time.ToNanoseconds() >= since]
        return hits[: q.limit or 100]

    def status(self) -> collector_pb2.StatusReply:
        return collector_pb2.StatusReply()


def test_paging_keeps_every_event_when_a_page_ends_inside_one_instant() -> None:
    events = [ev(i, "gpu.open", 5 * S if 3 <= i <= 5 else i * S) for i in range(1, 12)]
    got = list(events_between(ListSource(events), ["gpu.open"], 0, 100 * S, page=4))
    assert sorted(e.seq for e in got) == list(range(1, 12))


def test_paging_refuses_to_loop_on_more_events_than_a_page_at_one_instant() -> None:
    events = [ev(i, "gpu.open", 5 * S) for i in range(1, 7)]
    with pytest.raises(PageLimitError):
        list(events_between(ListSource(events), ["gpu.open"], 0, 100 * S, page=4))


def opened(seq: int, t: int, pid: int, path: str = "/dev/nvidia0") -> events_pb2.Event:
    e = ev(seq, "gpu.open", t, pid)
    e.gpu_open.path, e.gpu_open.fd = path, 3
    return e


def test_a_reused_pid_starts_a_new_session_after_the_exit() -> None:
    exits = {100: 20 * S}
    model = UsageModel(lambda node, pid, since: exits[pid] if exits[pid] >= since else None)
    model.feed([opened(1, 10 * S, 100), opened(2, 30 * S, 100)])
    first, second = model.sessions(until_ns=60 * S)
    assert (first.start_ns, first.end_ns, first.ended) == (10 * S, 20 * S, True)
    assert (second.start_ns, second.end_ns, second.ended) == (30 * S, 60 * S, False)


def test_nvml_leaving_ends_a_session_and_control_nodes_identify_no_gpu() -> None:
    left = ev(2, "gpu.process", 25 * S, 7)
    left.gpu_process.state, left.gpu_process.gpu_uuid = "left", "GPU-1"
    model = UsageModel(lambda *_: None)
    ctl = "/dev/nvidiactl"
    model.feed([opened(1, 10 * S, 7, ctl), left, opened(3, 12 * S, 8, ctl)])
    by_pid = {s.pid: s for s in model.sessions(until_ns=60 * S)}
    assert (by_pid[7].end_ns, by_pid[7].ended, by_pid[7].gpus) == (25 * S, True, {"n GPU-1"})
    assert by_pid[8].gpus == set() and not by_pid[8].ended


def test_csv_cells_cannot_become_spreadsheet_formulas() -> None:
    e = opened(1, 10 * S, 9)
    e.process.exe = "=HYPERLINK(\"http://x\")"
    report = build_report(ListSource([e]), Scope(0, 60 * S), generated_ns=60 * S)
    text = render_csv(report)
    assert "'=HYPERLINK" in text and UNIDENTIFIED not in text
