"""Start real collector and agent processes on loopback and talk to them over gRPC."""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from gpuaudit.v1 import collector_pb2, collector_pb2_grpc, events_pb2

GPUAUDIT = str(Path(sys.executable).parent / "gpuaudit")


class Collector:
    """`gpuaudit collector` on 127.0.0.1:0, with a client stub."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.proc = subprocess.Popen(
            [GPUAUDIT, "collector", "--listen", "127.0.0.1:0", "--db", str(db)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.address = self._wait_listening()
        self.channel = grpc.insecure_channel(self.address)
        self.stub = collector_pb2_grpc.CollectorStub(self.channel)

    def _wait_listening(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            m = re.search(r"listening on (\S+:\d+)", line)
            if m:
                return m.group(1)
        self.proc.kill()
        raise RuntimeError("collector did not start:\n" + "".join(seen))

    def query(self, **kw: object) -> list[events_pb2.Event]:
        kw.setdefault("limit", 10000)
        q = collector_pb2.EventQuery(**kw)  # type: ignore[arg-type]
        return list(self.stub.QueryEvents(q, timeout=10))

    def status(self) -> collector_pb2.StatusReply:
        return self.stub.GetStatus(collector_pb2.StatusRequest(), timeout=10)

    def stop(self) -> None:
        self.channel.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Agent:
    """`gpuaudit agent` pointed at a collector; output captured to a file."""

    def __init__(self, collector: str, node: str, log: Path, *extra: str,
                 user: int | None = None) -> None:
        self.log = log
        self.node = node
        self._out = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [GPUAUDIT, "agent", "--collector", collector, "--node", node,
             "--heartbeat", "1", *extra],
            stdout=self._out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, **_as_user(user),
        )

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        self.proc.terminate()
        try:
            rc = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._out.close()
        return rc


def _as_user(uid: int | None) -> dict[str, object]:
    """Popen arguments to run as `uid` with its own group and no root groups."""
    if uid is None:
        return {}
    return {"user": uid, "group": pwd.getpwuid(uid).pw_gid, "extra_groups": []}


def wait_for(pred: Callable[[], object], timeout: float = 30, every: float = 0.2) -> object:
    """Poll ``pred`` until it returns something truthy; return it, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


def wait_node_ready(col: Collector, node: str, mode: str, timeout: float = 60) -> None:
    """Until the node's first heartbeat (sent after all sensors attached) is stored."""

    def ready() -> bool:
        return any(n.node == node and n.mode == mode for n in col.status().nodes)

    wait_for(ready, timeout)


def settle(col: Collector, node: str, timeout: float = 30) -> None:
    """Wait until events produced so far have reached the store.

    Heartbeats pass through the same queue and processor as sensor records and
    are stored in seq order; the ring is drained continuously (well under a
    second), so a heartbeat stamped more than a second after `now` is stored
    only after everything the kernel produced before `now`.
    """
    since = time.time_ns() + 1_200_000_000

    def newer_heartbeat() -> bool:
        q = collector_pb2.EventQuery(types=["agent.health"], nodes=[node], limit=1, newest=True)
        evs = list(col.stub.QueryEvents(q, timeout=10))
        return bool(evs) and evs[-1].time.ToNanoseconds() > since

    wait_for(newer_heartbeat, timeout)
