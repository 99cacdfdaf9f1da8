"""process.compat_syscall: syscalls made through the ia32 ABI (agent/bpf/compat.c).

The per-syscall tracepoints of every other sensor do not see ia32 syscalls on
x86-64, so ``int $0x80`` is a way around all of them. This sensor's runtime
first asks whether the node has the ia32 ABI at all (agent/compat_abi.py),
then attaches compat.c to the raw tracepoint sys_enter only when there is
something to watch and the operator did not turn it off (--no-compat-watch),
and keeps saying in agent.health what that means.
"""

from __future__ import annotations

import ctypes as ct
import logging
from collections.abc import Callable

from agent import compat_abi
from agent.record import Record
from agent.sensors.base import BootClock, BpfSensor, Decoder, Loop, SensorContext, header_record
from agent.sensors.loader import sensor_status
from agent.sensors.records import C, Hdr
from gpuaudit.v1 import compat_pb2, events_pb2

log = logging.getLogger(__name__)

OP_COMPAT_SYSCALL: int = C["OP_COMPAT_SYSCALL"]
USER32_CS = 0x23
USER64_CS = 0x33
PROGRAM = b"compat_sys_enter"  # the function in compat.c
RAW_TRACEPOINT = b"sys_enter"


class CompatRec(ct.Structure):
    """Mirror of struct compat_rec (agent/bpf/compat_events.h)."""

    _fields_ = (
        ("h", Hdr),
        ("nr", ct.c_uint32),
        ("cs", ct.c_uint32),
        ("ip", ct.c_uint64),
        ("args", ct.c_uint64 * 3),
    )


def compat_mode(cs: int) -> str:
    """How the call was made, from the saved code segment.

    Every compat entry but ``int $0x80`` saves __USER32_CS whatever the caller
    ran; int $0x80 saves the caller's own, 0x33 from 64-bit code.
    """
    return "int80_in_64bit" if cs == USER64_CS else "ia32_process"


def decode_compat(data: bytes, clock: BootClock) -> Record:
    """A process.compat_syscall Record: the caller is the Record's process."""
    r = CompatRec.from_buffer_copy(data)
    payload = compat_pb2.ProcessCompatSyscall(
        nr=r.nr, name=compat_abi.ia32_name(r.nr), mode=compat_mode(r.cs),
        args=list(r.args), cs=r.cs, ip=r.ip,
    )
    return header_record("process.compat_syscall", r.h, clock, payload)


class CompatRuntime:
    """Probes the ABI, attaches (or not) and reports what that means."""

    def __init__(self, ctx: SensorContext,
                 probe: Callable[[], compat_abi.AbiState] = compat_abi.probe_ia32_abi) -> None:
        self.ctx = ctx
        self.plan = compat_abi.plan(probe(), watch=bool(getattr(ctx.cfg, "compat_watch", True)))
        self.attached = False
        if self.plan.attach:
            ctx.bpf.attach_raw_tracepoint(tp=RAW_TRACEPOINT, fn_name=PROGRAM)
            self.attached = True
        level = logging.WARNING if self.plan.state != "ok" else logging.INFO
        log.log(level, "compat sensor: %s", self.plan.detail)

    def decoders(self) -> dict[int, Decoder]:
        return {OP_COMPAT_SYSCALL: decode_compat}

    def threads(self) -> list[tuple[str, Loop]]:
        return []

    def loss_counters(self) -> dict[str, Callable[[], int]]:
        return {"compat_rate_limited": self.rate_limited}

    def rate_limited(self) -> int:
        """Records compat.c held back (per-CPU rate bound), summed over CPUs."""
        try:
            return int(sum(self.ctx.bpf["compat_limited"][ct.c_uint32(0)]))
        except Exception:  # a test context without the map
            return 0

    def status(self) -> events_pb2.SensorStatus | None:
        """The plan's status: it replaces the loader's plain "ok" in agent.health."""
        return sensor_status(SENSOR.name, self.plan.state, self.plan.detail)

    def close(self) -> None:
        if self.attached:
            try:
                self.ctx.bpf.detach_raw_tracepoint(tp=RAW_TRACEPOINT)
            except Exception as err:  # cleanup() of the program detaches it anyway
                log.debug("compat sensor: detach failed: %s", err)
            self.attached = False


SENSOR = BpfSensor(
    name="compat",
    source="compat.c",
    required_tracepoints=("raw_syscalls:sys_enter",),
    decoders={OP_COMPAT_SYSCALL: decode_compat},
    mirrors={"compat_rec": CompatRec},
    runtime=CompatRuntime,
)
