"""Feature-probe the kernel, then compile and attach the eBPF sensors.

Every probe that fails turns into a SensorStatus with a reason, which the
agent states once at start and repeats in every agent.health event; the agent
never dies because a probe is missing (it falls back to procfs).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.sensors.base import BpfSensor, Decoder
from agent.sensors.records import BPF_DIR
from gpuaudit.v1 import events_pb2

log = logging.getLogger(__name__)

TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


@dataclass
class LoadResult:
    """What got loaded: the bcc object (None if nothing), statuses, decoders."""

    bpf: Any = None
    statuses: list[events_pb2.SensorStatus] = field(default_factory=list)
    decoders: dict[int, Decoder] = field(default_factory=dict)
    loaded: list[BpfSensor] = field(default_factory=list)


def find_tracefs() -> Path | None:
    for root in TRACEFS_CANDIDATES:
        try:
            if (root / "events").is_dir():
                return root
        except OSError:  # e.g. EACCES for non-root: same as absent for us
            continue
    return None


def _tp_dir(tracefs: Path, tp: str) -> Path:
    category, name = tp.split(":", 1)
    return tracefs / "events" / category / name


def ebpf_unavailable_reason() -> str | None:
    """Why eBPF cannot run at all here, or None when it can be tried."""
    if os.geteuid() != 0:
        return "not running as root (eBPF needs CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc not importable (install python3-bpfcc; venv needs --system-site-packages)"
    if find_tracefs() is None:
        return "tracefs not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
    return None


def sensor_cflags(sensor: BpfSensor, tracefs: Path) -> list[str]:
    """-D flags for the optional tracepoints and fields this kernel has."""
    flags = []
    for tp in sensor.optional_tracepoints:
        if _tp_dir(tracefs, tp).is_dir():
            flags.append(f"-DHAVE_TP_{tp.split(':', 1)[1]}=1")
    for macro, spec in sensor.optional_fields:
        category, name, fieldname = spec.split(":")
        fmt = _tp_dir(tracefs, f"{category}:{name}") / "format"
        try:
            if f" {fieldname};" in fmt.read_text():
                flags.append(f"-D{macro}=1")
        except OSError:
            pass
    if sensor.cflags is not None:
        flags.extend(sensor.cflags())
    return flags


def _missing_tracepoints(sensor: BpfSensor, tracefs: Path) -> list[str]:
    return [tp for tp in sensor.required_tracepoints if not _tp_dir(tracefs, tp).is_dir()]


def _program_text(sensors: list[BpfSensor]) -> str:
    # common.h and sensor sources are pasted in rather than #included: bcc
    # rewrites map methods (m.lookup()) and generates tracepoint argument
    # structs only in the main text. #line keeps compiler messages pointing at
    # the real file and line. events.h (types only) is #included normally.
    sources = (s.source_path(BPF_DIR) for s in sensors)
    paths = [BPF_DIR / "common.h", *(p for p in sources if p is not None)]
    return "".join(f'#line 1 "{p}"\n{p.read_text()}\n' for p in paths)


def _compile(sensors: list[BpfSensor], cflags: list[str]) -> Any:
    from bcc import BPF

    return BPF(text=_program_text(sensors), cflags=[f"-I{BPF_DIR}", *cflags])


def load_sensors(
    sensors: tuple[BpfSensor, ...], ringbuf_pages: int = 1024
) -> LoadResult:
    """Probe, compile and attach; sensors that cannot run are reported, not fatal."""
    result = LoadResult()
    why_not = ebpf_unavailable_reason()
    tracefs = find_tracefs() if why_not is None else None
    if why_not is not None or tracefs is None:
        result.statuses = [sensor_status(s.name, "off", why_not or "no tracefs") for s in sensors]
        return result

    candidates: list[BpfSensor] = []
    for s in sensors:
        missing = _missing_tracepoints(s, tracefs)
        if missing:
            why = "missing tracepoints: " + ", ".join(missing)
            result.statuses.append(sensor_status(s.name, "off", why))
        else:
            candidates.append(s)
    # AGENT_TGID: tamper.c leaves out this process's own BPF program loads;
    # the program is compiled here, in the agent, so its pid is the constant.
    base_flags = [f"-DRINGBUF_PAGES={ringbuf_pages}", f"-DAGENT_TGID={os.getpid()}"]
    flags_of = {s.name: sensor_cflags(s, tracefs) for s in candidates}
    good = _compile_isolating_failures(candidates, base_flags, flags_of, result)
    for s in good:
        result.decoders.update(s.decoders)
        result.statuses.append(sensor_status(s.name, "ok", ""))
    result.loaded = good
    return result


def _compile_isolating_failures(
    candidates: list[BpfSensor],
    base_flags: list[str],
    flags_of: dict[str, list[str]],
    result: LoadResult,
) -> list[BpfSensor]:
    """Compile all candidates together; if that fails, find and drop the bad ones."""

    def flags(group: list[BpfSensor]) -> list[str]:
        return base_flags + [f for s in group for f in flags_of[s.name]]

    if not candidates:
        return []
    try:
        result.bpf = _compile(candidates, flags(candidates))
        return candidates
    except Exception as e:  # bcc raises plain Exception on compile/attach errors
        log.warning("compiling all sensors failed (%s); isolating", e)
    good = []
    for s in candidates:
        try:
            _compile([s], flags([s])).cleanup()
            good.append(s)
        except Exception as e:
            result.statuses.append(sensor_status(s.name, "off", f"compile/attach failed: {e}"))
    if good:
        result.bpf = _compile(good, flags(good))
    return good


def sensor_status(name: str, state: str, detail: str) -> events_pb2.SensorStatus:
    return events_pb2.SensorStatus(name=name, state=state, detail=detail)
