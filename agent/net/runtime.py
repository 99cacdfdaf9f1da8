"""The net sensor's user-space side: decoders bound to the cluster CIDRs,
and the thread that turns the kernel's flow counters into net.flow events."""

from __future__ import annotations

import contextlib
import ctypes as ct
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.net import conn
from agent.net.addr import Endpoint, endpoint, family_name_of, protocol_name
from agent.net.cluster import ClusterNets
from agent.net.flows import FlowDelta, FlowKey, FlowLedger
from agent.net.records import OP_NET_LISTEN, NetConnRec
from agent.record import Record
from agent.sensors.base import (
    BootClock,
    Decoder,
    SensorContext,
    header_record,
    periodic_flush,
)
from gpuaudit.v1 import events_pb2, net_pb2

log = logging.getLogger(__name__)

IDENTITIES_MAX = 65536


@dataclass(frozen=True)
class Identity:
    """Who a flow belongs to, kept for the last flush after the process exited."""

    ppid: int = 0
    uid: int | None = None
    gid: int | None = None
    comm: str = ""


def read_identity(pid: int, proc_root: str = "/proc") -> Identity | None:
    """Name, PPid, Uid and Gid of ``pid`` from /proc/PID/status; None when gone."""
    try:
        with open(f"{proc_root}/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return None
    try:
        return Identity(ppid=int(fields["PPid"]), uid=int(fields["Uid"].split()[0]),
                        gid=int(fields["Gid"].split()[0]), comm=fields["Name"].strip())
    except (KeyError, ValueError, IndexError):
        return None


class NetRuntime:
    """Made once per agent run by the sensor (BpfSensor.runtime)."""

    def __init__(self, ctx: SensorContext) -> None:
        self.ctx = ctx
        self.problem = ""  # why the sensor is degraded, "" while all is well
        try:
            self.cluster = ClusterNets(ctx.cfg.listed("cluster_cidrs"))
        except ValueError as err:
            # keep reporting connections and flows: a typo in the CIDRs must
            # not blind the sensor; every peer but loopback counts as outside
            self.problem = f"{err}; peer_in_cluster is false for every non-loopback peer"
            log.warning("net sensor: %s", self.problem)
            self.cluster = ClusterNets()
        self.interval_s = float(ctx.cfg.net_flow_s)
        self.proc_root = ctx.proc_root
        self.flows = ctx.bpf["net_flows"]
        self.listen_ports = ctx.bpf["net_listen_ports"]
        self.lost_table = ctx.bpf["net_flow_lost"]
        self.ledger = FlowLedger()
        self.identities: dict[int, Identity] = {}

    # -- SensorRuntime --------------------------------------------------------
    def decoders(self) -> dict[int, Decoder]:
        return dict.fromkeys(conn.TYPES, self.decode_conn)

    def threads(self) -> list[tuple[str, Callable[[threading.Event], None]]]:
        return [("net-flow", periodic_flush(self.flush, self.interval_s, "net.flow"))]

    def loss_counters(self) -> dict[str, Callable[[], int]]:
        return {"net_flow": self.flow_lost}

    def status(self) -> events_pb2.SensorStatus | None:
        if not self.problem:
            return None
        return events_pb2.SensorStatus(name="net", state="degraded", detail=self.problem)

    def close(self) -> None:
        pass

    # -- connections ----------------------------------------------------------
    def decode_conn(self, data: bytes, clock: BootClock) -> Record | None:
        """net.connect/accept/listen; None for a socket that proved not TCP/UDP."""
        r = NetConnRec.from_buffer_copy(data)
        c = conn.resolve(r, self.proc_root)
        if c is None:
            return None
        if r.h.op == OP_NET_LISTEN and c.local.port and r.local_port == 0:
            # listen(2) autobound the port after the kernel saw the state
            # change: tell the kernel, so accepted peers are learned
            self.listen_ports[ct.c_uint16(c.local.port)] = ct.c_uint8(1)
        return header_record(conn.TYPES[r.h.op], r.h, clock,
                             conn.payload(c, r.result, self.cluster))

    # -- flows ----------------------------------------------------------------
    def flow_lost(self) -> int:
        """send/recv calls whose bytes the kernel could not count (net_flows full)."""
        return int(sum(self.lost_table[ct.c_uint32(0)]))

    def flush(self) -> None:
        """Report every (process, peer) whose counters moved since the last flush."""
        keys = list(self.flows.keys())
        # decided before the counters are read: only then is a dead
        # process's count final (it cannot add bytes any more)
        alive = {tgid: self._alive(tgid) for tgid in {k.tgid for k in keys}}
        raw = self._read(keys)
        counters = [(key, sent, received) for key, (_, sent, received) in raw.items()]
        deltas, finished = self.ledger.deltas(counters, lambda t: not alive.get(t, True))
        for rec in self._records(deltas):
            self.ctx.inbox.offer(rec)  # a full inbox counts the drop ("queue")
        for key in finished:
            with contextlib.suppress(KeyError):
                del self.flows[raw[key][0]]
            self.identities.pop(key.tgid, None)

    def _alive(self, tgid: int) -> bool:
        if tgid not in self.identities and len(self.identities) < IDENTITIES_MAX:
            ident = read_identity(tgid, self.proc_root)
            if ident is not None:
                self.identities[tgid] = ident
        return os.path.exists(f"{self.proc_root}/{tgid}/stat")

    def _read(self, keys: list[Any]) -> dict[FlowKey, tuple[Any, int, int]]:
        """FlowKey -> (the map's own key object, bytes sent, bytes received)."""
        out = {}
        for k in keys:
            try:
                v = self.flows[k]
            except KeyError:
                continue
            key = FlowKey(k.tgid, k.family, k.protocol, k.remote_port, bytes(k.remote_addr))
            out[key] = (k, int(v.bytes_sent), int(v.bytes_received))
        return out

    def _records(self, deltas: list[FlowDelta]) -> list[Record]:
        """One net.flow per (process, peer): a v4 peer reached over a v4
        socket and over a dual-stack v6 socket is one peer."""
        merged: dict[tuple[int, int, Endpoint], list[int]] = {}
        for d in deltas:
            k = d.key
            peer = flow_peer(k)
            slot = merged.setdefault((k.tgid, k.protocol, peer), [0, 0])
            slot[0] += d.sent
            slot[1] += d.received
        now = time.time_ns()
        return [self._record(now, tgid, protocol, peer, sent, received)
                for (tgid, protocol, peer), (sent, received) in merged.items()]

    def _record(self, now: int, tgid: int, protocol: int, peer: Endpoint,
                sent: int, received: int) -> Record:
        payload = net_pb2.NetFlow(
            family=peer.family, protocol=protocol_name(protocol), remote_addr=peer.addr,
            remote_port=peer.port, bytes_sent=sent, bytes_received=received,
            peer_in_cluster=self.cluster.contains(peer.ip))
        ident = self.identities.get(tgid, Identity())
        return Record(type="net.flow", wall_ns=now, payload=payload, pid=tgid,
                      tid=tgid, ppid=ident.ppid, uid=ident.uid, gid=ident.gid, comm=ident.comm)


def flow_peer(key: FlowKey) -> Endpoint:
    """The peer a flow key names. The zero peer is the kernel's "unknown"
    (a socket whose peer it never learned): its family, no address."""
    if key.remote_port == 0 and not any(key.remote_addr):
        return Endpoint(family_name_of(key.family), "", 0)
    return endpoint(key.family, key.remote_addr, key.remote_port)
