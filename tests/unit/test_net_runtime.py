"""The net sensor's flush (agent.net.runtime.NetRuntime.flush) against
stand-ins for the kernel maps: deltas, one net.flow per (process, peer),
and the last report and deletion of an exited process's entries."""

from __future__ import annotations

import ctypes as ct
import ipaddress
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from agent.net.records import NetFlowKey, NetFlowVal
from agent.net.runtime import NetRuntime
from tests.fixtures.proc.builder import ProcTree
from tests.inbox import ListInbox

LIVE, GONE = 300, 301


class FakeMap:
    """Enough of a bcc table: keys(), [key], del [key]; keys compared by bytes."""

    def __init__(self) -> None:
        self.entries: dict[bytes, tuple[Any, Any]] = {}

    def put(self, key: Any, value: Any) -> None:
        self.entries[bytes(key)] = (key, value)

    def keys(self) -> list[Any]:
        return [k for k, _ in self.entries.values()]

    def __getitem__(self, key: Any) -> Any:
        return self.entries[bytes(key)][1]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    def __delitem__(self, key: Any) -> None:
        del self.entries[bytes(key)]



def key(tgid: int, family: int, addr: str, port: int, protocol: int = 6) -> NetFlowKey:
    k = NetFlowKey(tgid=tgid, family=family, protocol=protocol, remote_port=port)
    ct.memmove(k.remote_addr, ipaddress.ip_address(addr).packed.ljust(16, b"\0"), 16)
    return k


def runtime(tmp_path: Path, cidrs: str = "10.77.0.0/24",
            ) -> tuple[NetRuntime, FakeMap, ListInbox, ProcTree]:
    tree = ProcTree(tmp_path / "proc")
    tree.add(LIVE, comm="torchrun")
    tree.add(GONE, comm="exfil", uid=1077)
    flows = FakeMap()
    bpf = {"net_flows": flows, "net_listen_ports": FakeMap(), "net_flow_lost": FakeMap()}
    inbox = ListInbox()
    cfg = SimpleNamespace(listed=lambda name: cidrs.split(","), net_flow_s=10.0)
    ctx = SimpleNamespace(bpf=bpf, inbox=inbox, cfg=cfg, proc_root=str(tree.root))
    return NetRuntime(ctx), flows, inbox, tree  # type: ignore[arg-type]


def flows_of(inbox: ListInbox) -> dict[tuple[int, str, str, int], tuple[int, int, bool]]:
    out = {}
    for r in inbox.items:
        f: Any = r.payload
        out[(r.pid, f.protocol, f.remote_addr, f.remote_port)] = (
            f.bytes_sent, f.bytes_received, f.peer_in_cluster)
    inbox.items.clear()
    return out


def test_one_event_per_process_and_peer_with_deltas(tmp_path: Path) -> None:
    rt, flows, inbox, _ = runtime(tmp_path)
    flows.put(key(LIVE, 2, "10.77.0.5", 29500), NetFlowVal(1000, 10))
    # the same v4 peer reached from a dual-stack socket: one peer, one event
    flows.put(key(LIVE, 10, "::ffff:10.77.0.5", 29500), NetFlowVal(24, 0))
    flows.put(key(LIVE, 2, "0.0.0.0", 0, protocol=17), NetFlowVal(5, 6))  # peer unknown
    rt.flush()
    assert flows_of(inbox) == {(LIVE, "tcp", "10.77.0.5", 29500): (1024, 10, True),
                               (LIVE, "udp", "", 0): (5, 6, False)}
    flows.put(key(LIVE, 2, "10.77.0.5", 29500), NetFlowVal(1500, 10))
    rt.flush()
    assert flows_of(inbox) == {(LIVE, "tcp", "10.77.0.5", 29500): (500, 0, True)}
    rt.flush()
    assert inbox.items == []  # nothing moved: nothing said


def test_exited_process_is_reported_once_more_and_deleted(tmp_path: Path) -> None:
    rt, flows, inbox, tree = runtime(tmp_path)
    flows.put(key(GONE, 2, "203.0.113.80", 443), NetFlowVal(100, 1))
    rt.flush()
    assert flows_of(inbox) == {(GONE, "tcp", "203.0.113.80", 443): (100, 1, False)}
    flows.put(key(GONE, 2, "203.0.113.80", 443), NetFlowVal(700, 1))
    tree.remove(GONE)
    rt.flush()
    (rec,) = inbox.items
    flow: Any = rec.payload
    assert (flow.bytes_sent, flow.bytes_received) == (600, 0)
    # identity read while it lived: the enricher can no longer ask /proc
    assert (rec.comm, rec.uid) == ("exfil", 1077)
    assert flows.entries == {}
    inbox.items.clear()
    rt.flush()
    assert inbox.items == []


def test_bad_cidr_degrades_the_sensor_instead_of_stopping_it(tmp_path: Path) -> None:
    rt, flows, inbox, _ = runtime(tmp_path, cidrs="10.77.0.0/24,10.78.0.1/24")
    status = rt.status()
    assert status is not None and status.state == "degraded"
    assert "'10.78.0.1/24'" in status.detail
    flows.put(key(LIVE, 2, "10.77.0.5", 29500), NetFlowVal(1, 2))
    rt.flush()  # still counting and reporting, every peer outside
    assert flows_of(inbox) == {(LIVE, "tcp", "10.77.0.5", 29500): (1, 2, False)}
    good, *_ = runtime(tmp_path / "ok")
    assert good.status() is None
