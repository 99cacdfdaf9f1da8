"""process.compat_syscall: syscalls made through the ia32 ABI (agent/bpf/compat.c).

The per-syscall tracepoints of every other sensor do not see ia32 syscalls on
x86-64, so ``int $0x80`` is a way around all of them. This sensor's runtime
first asks whether the node has the ia32 ABI at all (agent/compat_abi.py),
then attaches compat.c to the raw tracepoint sys_enter only when there is
something to watch and the operator did not turn it off (--no-compat-watch),
and keeps saying in agent.health what that means.

How a call is told apart: by the kernel's TS_COMPAT flag in thread_info.status
when the running kernel's BTF gives its offset (compiled in as
-DCOMPAT_TI_STATUS_OFF) and a self-test at start proves that offset on a real
int $0x80; by the saved registers otherwise (forgeable: status "degraded").
"""

from __future__ import annotations

import ctypes as ct
import functools
import logging
from collections.abc import Callable

from agent import btf, compat_abi
from agent.record import Record
from agent.sensors.base import BootClock, BpfSensor, Decoder, Loop, SensorContext, header_record
from agent.sensors.loader import sensor_status
from agent.sensors.records import C, Hdr
from gpuaudit.v1 import compat_pb2, events_pb2

log = logging.getLogger(__name__)

OP_COMPAT_SYSCALL: int = C["OP_COMPAT_SYSCALL"]
USER32_CS = 0x23
USER64_CS = 0x33
PROGRAM = b"compat_sys_enter"  # compat.c: the register heuristic
TS_PROGRAM = b"compat_sys_enter_ts"  # compat.c: TS_COMPAT in thread_info.status
SELFTEST_PROGRAM = b"compat_selftest_ts"  # compat.c: TS_PROGRAM's decision, into a map only
SELFTEST_MAP = "compat_selftest"
RAW_TRACEPOINT = b"sys_enter"
IA32_GETPID = 20  # what the ABI probe calls through int $0x80
STATUS_PATH = ("task_struct", "thread_info", "status")


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


@functools.cache
def ti_status() -> btf.MemberOffset:
    """Where thread_info.status is in task_struct on the running kernel (BTF, read once)."""
    try:
        where = btf.offset_of(*STATUS_PATH)
    except Exception as err:  # the loader calls this: a surprise must cost the method only
        return btf.MemberOffset(None, None, f"BTF lookup failed: {err!r}")
    if where.offset is not None and where.size != 4:  # compat.c reads exactly 4 bytes
        return btf.MemberOffset(None, where.size,
                                f"thread_info.status is {where.size} bytes, not 4")
    return where


def cflags() -> list[str]:
    """-DCOMPAT_TI_STATUS_OFF when the BTF gives the offset (compat.c then builds TS_PROGRAM)."""
    where = ti_status()
    return [] if where.offset is None else [f"-DCOMPAT_TI_STATUS_OFF={where.offset}"]


def judge_selftest(abi: compat_abi.AbiState, nrs: set[int]) -> str:
    """Why the self-test failed ("" when it passed).

    ``abi`` is the probe child's run, ``nrs`` the syscall numbers
    SELFTEST_PROGRAM flagged for its pid: exactly its one int $0x80 getpid
    must be there, none of its hundreds of native calls.
    """
    if abi.state != "enabled" or abi.pid is None:
        return f"self-test probe gave no int $0x80 to check against ({abi.detail})"
    if IA32_GETPID not in nrs:
        return f"self-test: the probe's int $0x80 getpid (pid {abi.pid}) was not seen"
    native = sorted(nrs - {IA32_GETPID})
    if native:
        shown = ", ".join(map(str, native[:8])) + (" ..." if len(native) > 8 else "")
        return f"self-test: {len(native)} native syscalls of the probe seen as ia32 (nr {shown})"
    return ""


class CompatRuntime:
    """Probes the ABI, picks and proves the method, attaches (or not), reports."""

    def __init__(self, ctx: SensorContext,
                 probe: Callable[[], compat_abi.AbiState] = compat_abi.probe_ia32_abi,
                 status_offset: Callable[[], btf.MemberOffset] = ti_status) -> None:
        self.ctx = ctx
        self.probe = probe
        abi = probe()
        self.plan = compat_abi.plan(abi, watch=bool(getattr(ctx.cfg, "compat_watch", True)))
        self.attached = False
        self.method: str | None = None  # "ts_compat" or "registers" once attached
        if self.plan.attach:
            why_not = self._why_not_ts(status_offset())
            self.method = "registers" if why_not else "ts_compat"
            ctx.bpf.attach_raw_tracepoint(tp=RAW_TRACEPOINT,
                                          fn_name=PROGRAM if why_not else TS_PROGRAM)
            self.attached = True
            self.plan = compat_abi.watching(abi, by_btf=not why_not, why_not_btf=why_not)
        level = logging.WARNING if self.plan.state != "ok" else logging.INFO
        log.log(level, "compat sensor: %s", self.plan.detail)

    def _why_not_ts(self, where: btf.MemberOffset) -> str:
        """Why the register heuristic must be used; "" when TS_PROGRAM may be."""
        if where.offset is None:
            return f"no thread_info.status offset: {where.reason}"
        try:
            self.ctx.bpf.attach_raw_tracepoint(tp=RAW_TRACEPOINT, fn_name=SELFTEST_PROGRAM)
        except Exception as err:  # bcc: plain Exception; e.g. built without the -D flag
            return f"self-test program not loadable: {err}"
        try:
            abi = self.probe()  # a fresh child: one int $0x80 getpid, native calls around it
        finally:
            self.ctx.bpf.detach_raw_tracepoint(tp=RAW_TRACEPOINT)
        return judge_selftest(abi, self._selftest_nrs(abi.pid))

    def _selftest_nrs(self, pid: int | None) -> set[int]:
        """Numbers SELFTEST_PROGRAM noted for ``pid``; the map is emptied for good measure."""
        table = self.ctx.bpf[SELFTEST_MAP]
        nrs = {int(k.nr) for k, _ in table.items() if int(k.tgid) == pid}
        table.clear()
        return nrs

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
    cflags=cflags,
)
