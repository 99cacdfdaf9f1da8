"""Fuzzing the collector's decode + validate path in-process (hypothesis).

Whatever bytes arrive on the Ingest stream, ``EventBatch.FromString`` either
raises DecodeError or yields a message, and ``batch_problem`` then answers
with a sentence or None, never an exception (an exception there would become
an INTERNAL error and hide the reason from the agent). A batch it lets through
must satisfy the contract, checked here by an independent reference
(:func:`contract_violations`), so the validator cannot drift into accepting
forged or malformed events.

The same builders and reference serve tests/integration/test_collector_bad_input.py.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.ingest.validate import batch_problem
from gpuaudit.v1 import collector_pb2, events_pb2

MAX_EVENTS = 50
T0_NS = 1_763_750_000 * 1_000_000_000
AGENT_TYPES = ("gpu.open", "process.exec", "process.exit", "agent.health", "agent.loss")
COLLECTOR_ONLY = ("agent.silent", "agent.gap", "agent.rejected")
PAYLOADS = tuple(f.name for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- realistic events, as the agent sends them ----------------------------------


def process(pid: int, uid: int = 1042) -> events_pb2.Process:
    """A Process block like the agent's enrichment fills in (Slurm job, alice)."""
    return events_pb2.Process(
        pid=pid, tid=pid + 1, ppid=pid - 23, uid=uid, gid=uid, user="alice", comm="python",
        exe="/home/alice/venvs/llm/bin/python3.11",
        cmdline=["python", "train.py", "--config", "cfg/7b.yaml"],
        cgroup=f"/system.slice/slurmstepd.scope/job_{pid}/step_0/user/task_0",
        slurm_job=str(pid),
    )  # fmt: skip


def agent_event(seq: int, node: str = "n1", boot_id: str = "b" * 32) -> events_pb2.Event:
    """Event ``seq`` of a run: mostly gpu.open, every fourth a process.exec."""
    ev = events_pb2.Event(node=node, boot_id=boot_id, seq=seq, process=process(40000 + seq % 97))
    ev.time.FromNanoseconds(T0_NS + seq * 1000)
    if seq % 4:
        ev.type = "gpu.open"
        ev.gpu_open.CopyFrom(events_pb2.GpuOpen(
            path=f"/dev/nvidia{seq % 8}", flags=524290, fd=27, errno=0, source="ebpf"))
    else:
        ev.type = "process.exec"
        ev.process_exec.CopyFrom(events_pb2.ProcessExec(
            filename="/home/alice/venvs/llm/bin/python",
            argv=["python", "train.py", "--config", "cfg/7b.yaml"], source="ebpf"))
    return ev


def agent_batch(
    first_seq: int, count: int, node: str = "n1", boot_id: str = "b" * 32, batch_id: int = 1
) -> collector_pb2.EventBatch:
    """A well-formed batch: ``count`` events from ``first_seq`` on, no gaps."""
    events = [agent_event(s, node, boot_id) for s in range(first_seq, first_seq + count)]
    return collector_pb2.EventBatch(batch_id=batch_id, events=events)


# -- the contract, written independently of collector.ingest.validate -------------


def contract_violations(batch: collector_pb2.EventBatch, max_events: int) -> list[str]:
    """Every way ``batch`` breaks collector.proto's contract (empty: it may be stored)."""
    events = list(batch.events)
    if not 0 < len(events) <= max_events:
        return [f"{len(events)} events (allowed 1..{max_events})"]
    wrong: list[str] = []
    for i, ev in enumerate(events):
        wrong += [f"event {i}: {w}" for w in _event_violations(ev)]
        if (ev.node, ev.boot_id) != (events[0].node, events[0].boot_id):
            wrong.append(f"event {i}: another node or boot_id than event 0")
        if i and ev.seq <= events[i - 1].seq:
            wrong.append(f"event {i}: seq does not increase")
    return wrong


def _event_violations(ev: events_pb2.Event) -> list[str]:
    wrong = []
    if not ev.node or not ev.boot_id:
        wrong.append("empty node or boot_id")
    if ev.seq == 0:
        wrong.append("seq 0")
    if not ev.HasField("time"):
        wrong.append("no time")
    if ev.type in COLLECTOR_ONLY:
        wrong.append(f"collector-only type {ev.type}")
    if not ev.type or ev.WhichOneof("payload") != ev.type.replace(".", "_"):
        wrong.append(f"type {ev.type!r} with payload {ev.WhichOneof('payload')}")
    return wrong


def check_decode_and_validate(data: bytes) -> collector_pb2.EventBatch | None:
    """The collector's path for ``data``: None if it cannot decode, else the batch.

    Fails the test if validation raises or lets a contract breach through.
    """
    try:
        batch = collector_pb2.EventBatch.FromString(data)
    except DecodeError:
        return None
    problem = batch_problem(batch, MAX_EVENTS)  # must not raise
    assert problem is None or (isinstance(problem, str) and problem)
    if problem is None:
        assert contract_violations(batch, MAX_EVENTS) == []
    return batch


# -- strategies ----------------------------------------------------------------------

VALID_ENCODINGS = [
    agent_batch(1, 1).SerializeToString(),
    agent_batch(7, 5, node="gpu-a17", batch_id=3).SerializeToString(),
    agent_batch(100, 12, boot_id="3f9c1e0b7a4d4e2f8b6a5c1d2e3f4a5b").SerializeToString(),
]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes] = VALID_ENCODINGS) -> bytes:
    """A valid EventBatch encoding with a few byte-level mutations."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(("flip", "set", "insert", "delete", "truncate", "dup")))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and at < len(data):
            data[at] = draw(st.sampled_from((0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0A, 0x12)))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[at:]
        elif op == "dup":
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


@st.composite
def structured_events(draw: st.DrawFn) -> events_pb2.Event:
    """Events with every envelope field drawn from valid and invalid values."""
    ev = events_pb2.Event(
        type=draw(st.sampled_from(AGENT_TYPES + COLLECTOR_ONLY + ("", "gpu.close", "gpu_open"))),
        node=draw(st.sampled_from(("n1", "n2", ""))),
        boot_id=draw(st.sampled_from(("b1", "b2", ""))),
        seq=draw(st.integers(0, 6)),
    )
    if draw(st.booleans()):
        ev.time.FromNanoseconds(T0_NS)
    payload = draw(st.sampled_from((*PAYLOADS, None)))
    if payload is not None:
        getattr(ev, payload).SetInParent()
    return ev


@st.composite
def one_field_changed(draw: st.DrawFn) -> collector_pb2.EventBatch:
    """A realistic batch with one field of one event set to a drawn (often bad) value.

    Far likelier than fully random batches to reach a breach that is otherwise
    valid, e.g. a consistent agent.gap event among good ones.
    """
    batch = agent_batch(1, draw(st.integers(1, 5)))
    ev = batch.events[draw(st.integers(0, len(batch.events) - 1))]
    change = draw(st.sampled_from(("retype", "node", "boot_id", "seq", "time", "payload")))
    if change == "retype":
        ev.type = draw(st.sampled_from(AGENT_TYPES + COLLECTOR_ONLY))
        getattr(ev, ev.type.replace(".", "_")).SetInParent()
    elif change in ("node", "boot_id"):
        setattr(ev, change, draw(st.sampled_from(("", "n1", "n2", "b" * 32, "b1"))))
    elif change == "seq":
        ev.seq = draw(st.integers(0, 2**64 - 1))
    elif change == "time":
        ev.ClearField("time")
    else:
        getattr(ev, draw(st.sampled_from(PAYLOADS))).SetInParent()
    return batch


well_formed_events = st.lists(
    st.tuples(st.sampled_from(AGENT_TYPES), st.integers(1, 3)), min_size=1, max_size=MAX_EVENTS
)


# -- tests ---------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash_validation(data: bytes) -> None:
    check_decode_and_validate(data)


@FUZZ
@given(mutated())
def test_mutated_valid_batches_are_refused_or_within_the_contract(data: bytes) -> None:
    check_decode_and_validate(data)


@FUZZ
@given(st.lists(structured_events(), max_size=6), st.integers(0, 2**64 - 1))
def test_structured_batches_are_refused_or_within_the_contract(events, batch_id) -> None:
    batch = collector_pb2.EventBatch(batch_id=batch_id, events=events)
    check_decode_and_validate(batch.SerializeToString())


@FUZZ
@given(one_field_changed())
def test_one_bad_field_is_refused_or_within_the_contract(batch) -> None:
    check_decode_and_validate(batch.SerializeToString())


@FUZZ
@given(well_formed_events, st.text(min_size=1, max_size=40), st.integers(1, 2**40))
def test_well_formed_batches_are_accepted(types_and_steps, node, first_seq) -> None:
    """The other direction: the validator does not refuse what the contract allows."""
    batch, seq = collector_pb2.EventBatch(batch_id=1), first_seq
    for event_type, step in types_and_steps:
        ev = batch.events.add(type=event_type, node=node, boot_id="b1", seq=seq)
        ev.time.FromNanoseconds(T0_NS + seq)
        getattr(ev, event_type.replace(".", "_")).SetInParent()
        seq += step  # gaps inside a batch are allowed; the collector reports them
    assert contract_violations(batch, MAX_EVENTS) == []
    assert batch_problem(batch, MAX_EVENTS) is None


def test_the_realistic_builders_produce_accepted_batches() -> None:
    for data in VALID_ENCODINGS:
        batch = check_decode_and_validate(data)
        assert batch is not None and batch_problem(batch, MAX_EVENTS) is None


def _retype(ev: events_pb2.Event, event_type: str) -> None:
    """Make ``ev`` a consistent event of ``event_type`` (type and payload agree)."""
    ev.type = event_type
    getattr(ev, event_type.replace(".", "_")).SetInParent()


def test_the_reference_finds_each_kind_of_breach() -> None:
    """Guards the reference itself: a reference that finds nothing proves nothing."""
    cases = {
        "empty node or boot_id": lambda ev: setattr(ev, "node", ""),
        "seq 0": lambda ev: setattr(ev, "seq", 0),
        "no time": lambda ev: ev.ClearField("time"),
        "collector-only type agent.gap": lambda ev: _retype(ev, "agent.gap"),
        "collector-only type agent.rejected": lambda ev: _retype(ev, "agent.rejected"),
        "collector-only type agent.silent": lambda ev: _retype(ev, "agent.silent"),
        "with payload process_exec": lambda ev: ev.process_exec.SetInParent(),
    }
    for expected, breach in cases.items():
        batch = agent_batch(1, 3)
        breach(batch.events[1])
        assert any(expected in w for w in contract_violations(batch, MAX_EVENTS)), expected
        assert batch_problem(batch, MAX_EVENTS) is not None, expected
    assert contract_violations(agent_batch(1, MAX_EVENTS + 1), MAX_EVENTS)
    assert contract_violations(collector_pb2.EventBatch(), MAX_EVENTS)
