"""`gpuaudit agent`: start-up steps, the threads of the data path, teardown.

    kernel probes -> ring buffer -> RingReader -> inbox -> Processor
    (decode, enrich, seq) -> spool -> Shipper -> collector

In procfs mode (no root, no bcc, no tracefs, or --mode procfs) a ProcfsPoller
feeds the same inbox instead of the ring buffer.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.enrich import Enricher
from agent.gpu.sensor import NvmlSensor
from agent.health import HealthSources, health_record
from agent.loss import LossReporter
from agent.pipeline import Identity, Processor
from agent.procfs import ProcfsPoller, gpu_holders, inventory
from agent.queue import DroppingQueue
from agent.record import Record
from agent.sensors import process as process_sensor
from agent.sensors.base import BootClock, SensorContext, SensorHooks, SensorRuntime
from agent.sensors.loader import LoadResult, load_sensors, sensor_status
from agent.sensors.registry import BPF_SENSORS
from agent.sensors.ring import RingReader
from agent.ship import Shipper
from agent.signing import BatchSigner
from agent.spool import DiskSpool, SpoolError

log = logging.getLogger("gpuaudit.agent")


@dataclass
class AgentConfig:
    collector: str
    node: str = field(default_factory=socket.gethostname)
    mode: str = "auto"  # auto | ebpf | procfs
    heartbeat_s: int = 5
    poll_s: float = 1.0  # procfs poll interval
    inbox_size: int = 65536
    spool_dir: str = field(default_factory=lambda: default_spool_dir())
    spool_max_bytes: int = 256 * 1024 * 1024
    spool_policy: str = "drop_oldest"  # or drop_newest (agent.spool.POLICIES)
    fsync_interval_s: float = 1.0
    drain_s: float = 5.0  # at stop: how long to wait for the collector to ack
    proc_root: str = "/proc"
    cgroup_root: str = "/sys/fs/cgroup"
    tls: Any = None  # gpuaudit.tls.TlsFiles; None only with insecure
    insecure: bool = False
    nvml: bool = True  # False: the NVML sensor is off (--no-nvml)
    nvml_library: str | None = None  # None: the driver's libnvidia-ml.so.1
    nvml_poll_s: float = 5.0
    protect: str = ""  # extra protected trees (file.write), comma-separated
    code_allow: str = "/lib,/lib64,/usr/lib,/usr/lib64,/usr/libexec"  # code.load allow-list
    cluster_cidrs: str = ""  # net.* peer_in_cluster, comma-separated CIDRs
    checkpoint_max_bytes: int = 16 << 30  # checkpoint.scan reads no bigger file
    nccl_flush_s: float = 5.0  # nccl.collective reporting interval
    net_flow_s: float = 10.0  # net.flow reporting interval
    iouring_flush_s: float = 10.0  # process.io_uring op_count reporting interval
    compat_watch: bool = True  # False (--no-compat-watch): ia32 syscalls unwatched, "blind"

    def listed(self, name: str) -> list[str]:
        """A comma-separated setting as a list, e.g. ``cfg.listed("protect")``."""
        return [v.strip() for v in str(getattr(self, name)).split(",") if v.strip()]


def default_spool_dir() -> str:
    """/var/lib/gpuaudit/spool for root; a per-user state directory otherwise."""
    if os.geteuid() == 0:
        return "/var/lib/gpuaudit/spool"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local/state")
    return str(Path(state) / "gpuaudit/spool")


class Agent:
    """The agent's parts, wired; :meth:`run` blocks until :meth:`stop`."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.ident = Identity(node=cfg.node, boot_id=uuid.uuid4().hex)
        self.clock = BootClock()
        self.inbox: DroppingQueue[bytes | Record] = DroppingQueue(cfg.inbox_size)
        self.spool: DiskSpool | None = None
        self.enricher = Enricher(proc_root=cfg.proc_root, cgroup_root=cfg.cgroup_root)
        # a signal's or ptrace's target already reaped is named from the agent's memory
        process_sensor.TARGETS.remembered = self.enricher.identity_of
        self.load = LoadResult()
        self.hooks = SensorHooks()
        self.runtimes: list[SensorRuntime] = []
        self.ring: RingReader | None = None
        self.poller: ProcfsPoller | None = None
        self.processor: Processor | None = None
        self.shipper: Shipper | None = None
        self.gpu = NvmlSensor(library=cfg.nvml_library, opened=self._opened_gpu)
        self.stopping = threading.Event()  # producers stop
        self.processor_stop = threading.Event()  # the processor stops (after the producers)
        self.ship_stop = threading.Event()  # shipper stops (after draining)
        self.threads: list[threading.Thread] = []

    @property
    def mode(self) -> str:
        return "ebpf" if self.ring is not None else "procfs"

    # -- start-up steps, in order -------------------------------------------
    def step_spool(self) -> None:
        """Open the disk spool first: what an earlier run left is sent first."""
        cfg = self.cfg
        try:
            self.spool = DiskSpool(cfg.spool_dir, self.ident.boot_id, cfg.spool_max_bytes,
                                   cfg.spool_policy, cfg.fsync_interval_s)
        except (SpoolError, OSError) as err:
            raise SystemExit(f"gpuaudit agent: {err}") from None
        creds = cfg.tls.channel_credentials() if cfg.tls is not None else None
        # The batch signature uses the same identity as the TLS connection: the
        # node certificate's key. Plaintext (--insecure) has none: unsigned.
        signer = BatchSigner.from_tls(cfg.node, cfg.tls) if cfg.tls is not None else None
        self.shipper = Shipper(cfg.collector, self.spool, credentials=creds, signer=signer)

    def step_load_sensors(self) -> None:
        if self.cfg.mode == "procfs":
            self.load.statuses = [sensor_status(s.name, "off", "procfs mode requested")
                                  for s in BPF_SENSORS]
            return
        self.load = load_sensors(BPF_SENSORS)
        if self.load.bpf is not None:
            self.ring = RingReader(self.load.bpf, self.inbox)
        elif self.cfg.mode == "ebpf":
            raise SystemExit("gpuaudit agent: --mode ebpf but no sensor could load: "
                             + "; ".join(s.detail for s in self.load.statuses))

    def step_report_degraded(self) -> None:
        """Say once, clearly, what is degraded."""
        for s in self.load.statuses:
            if s.state != "ok":
                log.warning("sensor %s is %s: %s", s.name, s.state, s.detail)
        if self.ring is None:
            log.warning("running in procfs mode: polling /proc every %.1fs; short-lived "
                        "processes and refused opens are not seen", self.cfg.poll_s)
            self.poller = ProcfsPoller(proc_root=self.cfg.proc_root)

    def step_sensor_runtimes(self) -> None:
        """The user-space sides of the loaded sensors: stateful decoders, workers."""
        if self.load.bpf is None:
            return
        ctx = SensorContext(bpf=self.load.bpf, inbox=self.inbox, clock=self.clock, cfg=self.cfg,
                            opened_gpu=self._opened_gpu, hooks=self.hooks,
                            proc_root=self.cfg.proc_root)
        for sensor in self.load.loaded:
            if sensor.runtime is None:
                continue
            try:
                runtime = sensor.runtime(ctx)
            except Exception as err:  # one sensor's failure must not stop the agent
                log.warning("sensor %s: user-space side failed to start: %s", sensor.name, err)
                self._mark_off(sensor.name, f"user-space side failed to start: {err}")
                continue
            self.runtimes.append(runtime)
            self.load.decoders.update(runtime.decoders())

    def _mark_off(self, name: str, detail: str) -> None:
        self.load.statuses = [sensor_status(name, "off", detail) if s.name == name else s
                              for s in self.load.statuses]

    def step_processor(self) -> None:
        assert self.spool is not None
        ring = self.ring
        counters = {"kernel": ring.kernel_lost if ring else (lambda: 0),
                    "queue": lambda: self.inbox.dropped,
                    "decode": lambda: self.processor.decode_errors if self.processor else 0}
        for runtime in self.runtimes:
            counters.update(runtime.loss_counters())
        losses = LossReporter(counters=counters, spool=self.spool)
        self.processor = Processor(self.inbox, self.load.decoders, self.clock,
                                   self.enricher, self.ident, self.spool, losses, self.hooks)

    def step_gpu(self) -> None:
        """NVML inventory, processes and Xids; "off" (never fatal) without a driver."""
        if not self.cfg.nvml:
            self.gpu.off_reason = "disabled (--no-nvml)"
            return
        self.gpu.start()  # says once, itself, why it is off

    def _opened_gpu(self, pid: int) -> bool:
        return self.processor is not None and self.processor.opened_gpu(pid)

    def step_inventory(self) -> None:
        """GPU fds held before the agent started, reported with source "inventory"."""
        # In procfs mode the poller's first poll is the inventory (it reports
        # already-held GPU fds with source "inventory"); asking both would
        # report them twice.
        poller = self.poller
        records = poller.poll() if poller is not None else inventory(self.cfg.proc_root)
        if self.ring is not None:
            self.ring.mark_gpu_holders(gpu_holders(records))
        for rec in records:
            self.inbox.put(rec, timeout=5)

    def step_threads(self) -> None:
        assert self.processor is not None and self.shipper is not None
        self._spawn("processor", self.processor.run, self.processor_stop)
        self._spawn("shipper", self.shipper.run, self.ship_stop)
        if self.ring is not None:
            self._spawn("ring", self.ring.run, self.stopping)
        if self.poller is not None:
            self._spawn("procfs", self._poll_loop, self.stopping)
        for runtime in self.runtimes:
            for name, body in runtime.threads():
                self._spawn(name, body, self.stopping)
        if self.gpu.nv is not None:
            self._spawn("nvml", self.gpu.poll_loop(self.inbox, self.cfg.nvml_poll_s), self.stopping)
            self._spawn("xid", self.gpu.xid_loop(self.inbox), self.stopping)

    def _spawn(self, name: str, target: Callable[[threading.Event], None],
               stop: threading.Event) -> None:
        t = threading.Thread(target=target, args=(stop,), name=f"gpuaudit-{name}", daemon=True)
        t.start()
        self.threads.append(t)

    def _poll_loop(self, stop: threading.Event) -> None:
        assert self.poller is not None
        while not stop.wait(self.cfg.poll_s):
            for rec in self.poller.poll():
                self.inbox.offer(rec)

    def start(self) -> None:
        for step in (self.step_spool, self.step_load_sensors, self.step_report_degraded,
                     self.step_sensor_runtimes, self.step_processor, self.step_inventory,
                     self.step_gpu, self.step_threads):
            log.debug("start-up step %s", step.__name__)
            step()
        log.info("agent up: node=%s boot_id=%s mode=%s collector=%s",
                 self.ident.node, self.ident.boot_id, self.mode, self.cfg.collector)

    # -- running ------------------------------------------------------------
    def health_sources(self) -> HealthSources:
        assert self.processor is not None and self.spool is not None
        proc = self.processor
        ring = self.ring
        spool = self.spool
        return HealthSources(
            mode=self.mode,
            interval_s=self.cfg.heartbeat_s,
            sensors=list(self.load.statuses),
            events_emitted=lambda: proc.seq,
            kernel_lost=ring.kernel_lost if ring else (lambda: 0),
            queue_dropped=lambda: self.inbox.dropped,
            decode_errors=lambda: proc.decode_errors,
            spool_dropped=lambda: spool.dropped,
            spool_pending=spool.pending,
            spool_bytes=spool.size_bytes,
            extra_status=[self.gpu.status, *(r.status for r in self.runtimes)],
        )

    def run(self) -> None:
        """Heartbeat until stopped. The first heartbeat goes out at once."""
        sources = self.health_sources()
        while True:
            self.clock.resync()
            self.inbox.put(health_record(sources), timeout=1)
            if self.stopping.wait(self.cfg.heartbeat_s):
                return

    def stop(self) -> None:
        self.stopping.set()

    def teardown(self) -> None:
        """Stop producers, let the processor finish, give the shipper time to drain."""
        self.stopping.set()
        # producers first (ring, pollers, the sensors' workers: a hashing or
        # scanning worker may still hand over finished events), then the
        # processor, which empties the inbox into the spool before it returns
        last = ("gpuaudit-processor", "gpuaudit-shipper")
        for t in self.threads:
            if t.name not in last:
                t.join(timeout=5)
        self.processor_stop.set()
        for t in self.threads:
            if t.name == "gpuaudit-processor":
                t.join(timeout=5)
        spool = self.spool
        if spool is not None and not spool.wait_drained(self.cfg.drain_s):
            log.warning("stopping with %d events not yet acknowledged; they stay in the spool "
                        "%s and go out at the next start", spool.pending(), spool.dir)
        self.ship_stop.set()
        for t in self.threads:
            t.join(timeout=5)
        self.gpu.close()
        for runtime in self.runtimes:
            with contextlib.suppress(Exception):
                runtime.close()
        if spool is not None:
            spool.close()
        if self.load.bpf is not None:
            self.load.bpf.cleanup()


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    cfg = AgentConfig(collector=args.collector)
    if getattr(args, "node", None):
        cfg.node = args.node
    cfg.mode = getattr(args, "mode", None) or cfg.mode
    cfg.heartbeat_s = int(getattr(args, "heartbeat", None) or cfg.heartbeat_s)
    cfg.tls = getattr(args, "tls_files", None)
    cfg.insecure = bool(getattr(args, "insecure", False))
    cfg.nvml = not getattr(args, "no_nvml", False)
    cfg.compat_watch = not getattr(args, "no_compat_watch", False)
    for name in ("spool_dir", "spool_max_bytes", "spool_policy", "fsync_interval_s",
                 "nvml_library", "nvml_poll_s", "protect", "code_allow", "cluster_cidrs",
                 "checkpoint_max_bytes", "nccl_flush_s", "net_flow_s"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(cfg, name, value)
    if cfg.tls is None and not cfg.insecure:
        raise SystemExit("gpuaudit agent: pass --tls-dir DIR (see `gpuaudit certs init`) "
                         "or --insecure for plaintext")
    return cfg


def run_agent(args: argparse.Namespace) -> int:
    """Entry point of `gpuaudit agent`."""
    logging.basicConfig(level=getattr(args, "log_level", "INFO") or "INFO",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent = Agent(config_from_args(args))
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    try:
        agent.start()
        agent.run()
    finally:
        with contextlib.suppress(Exception):
            agent.teardown()
    return 0
