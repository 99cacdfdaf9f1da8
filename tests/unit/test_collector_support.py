"""Builders shared by the collector, storage and CLI tests (no tests here).

Named test_collector_* only so it sits with the tests it serves.
"""

from __future__ import annotations

from gpuaudit.v1 import collector_pb2, events_pb2

T0_NS = 1_700_000_000 * 1_000_000_000  # 2023-11-14T22:13:20Z
S_NS = 1_000_000_000


class FakeClock:
    """A clock (ns since the epoch) that only moves when told to."""

    def __init__(self, now_ns: int = T0_NS) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * S_NS)


def gpu_open(
    seq, node="n1", boot_id="b1", t_s=0.0, pid=100, uid=1000, errno=0, path="/dev/nvidia0"
):
    """A gpu.open event at T0 + t_s seconds."""
    ev = _envelope("gpu.open", seq, node, boot_id, t_s)
    ev.process.pid, ev.process.uid, ev.process.user, ev.process.comm = pid, uid, "alice", "python3"
    ev.gpu_open.path, ev.gpu_open.errno, ev.gpu_open.source = path, errno, "ebpf"
    ev.gpu_open.fd = -1 if errno else 7
    return ev


def process_exec(seq, argv, node="n1", boot_id="b1", t_s=0.0, pid=100, uid=1000):
    """A process.exec event."""
    ev = _envelope("process.exec", seq, node, boot_id, t_s)
    ev.process.pid, ev.process.uid, ev.process.comm = pid, uid, argv[0].rsplit("/", 1)[-1]
    ev.process_exec.filename = argv[0]
    ev.process_exec.argv.extend(argv)
    return ev


def process_exit(seq, node="n1", boot_id="b1", t_s=0.0, pid=100, uid=1000, code=0, sig=0):
    """A process.exit event."""
    ev = _envelope("process.exit", seq, node, boot_id, t_s)
    ev.process.pid, ev.process.uid = pid, uid
    ev.process_exit.exit_code, ev.process_exit.signal = code, sig
    return ev


def health(seq, node="n1", boot_id="b1", t_s=0.0, interval_s=5, lost=(0, 0, 0), mode="ebpf"):
    """An agent.health event with (kernel_lost, queue_dropped, decode_errors)."""
    ev = _envelope("agent.health", seq, node, boot_id, t_s)
    h = ev.agent_health
    h.kernel_lost, h.queue_dropped, h.decode_errors = lost
    h.mode, h.interval_s, h.events_emitted, h.version = mode, interval_s, seq, "test"
    h.sensors.add(name="gpu_open", state="ok")
    h.sensors.add(name="exec", state="degraded", detail="no tracepoint")
    return ev


def batch(batch_id, *events):
    """An EventBatch."""
    return collector_pb2.EventBatch(batch_id=batch_id, events=list(events))


def _envelope(type_, seq, node, boot_id, t_s):
    ev = events_pb2.Event(type=type_, node=node, boot_id=boot_id, seq=seq)
    ev.time.FromNanoseconds(T0_NS + int(t_s * S_NS))
    return ev
