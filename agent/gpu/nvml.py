"""Opening NVML and calling it without letting one unsupported field stop the sensor.

NVML answers many queries with NOT_SUPPORTED (a board without a serial, a
consumer GPU without accounting), NO_PERMISSION (not root) or
FUNCTION_NOT_FOUND (a driver older than the binding). Each of those costs us
one field on one GPU, never the sensor: :meth:`NvmlHandle.call` returns the
caller's default and remembers "(gpu, field): REASON" once, so agent.health
can name exactly what is degraded.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pynvml

log = logging.getLogger("gpuaudit.agent.nvml")

T = TypeVar("T")

# pynvml keeps the loaded library and a per-name function-pointer cache in
# module globals; switching libraries must swap both under one lock.
_LOAD_LOCK = threading.Lock()

# NVML return codes by value -> "NOT_SUPPORTED", from pynvml's own constants so
# new codes in a newer binding get their names for free.
_CODE_NAMES = {
    value: name.removeprefix("NVML_ERROR_")
    for name, value in vars(pynvml).items()
    if name.startswith("NVML_ERROR_") and isinstance(value, int)
}

DEFAULT_LIBRARY = "libnvidia-ml.so.1"


def error_name(err: pynvml.NVMLError) -> str:
    """"NOT_SUPPORTED" for an NVMLError_NotSupported, "CODE_<n>" for unknown codes."""
    value = getattr(err, "value", None)
    return _CODE_NAMES.get(value, f"CODE_{value}") if isinstance(value, int) else "UNKNOWN"


class NvmlHandle:
    """An initialised NVML plus the record of what it could not give us.

    ``nvml`` is the pynvml module (a parameter so tests could hand in another
    object with the same functions; the agent always uses pynvml itself).
    """

    def __init__(self, nvml: Any = pynvml, library: str = DEFAULT_LIBRARY) -> None:
        self.nvml = nvml
        self.library = library
        self._lock = threading.Lock()
        self._unavailable: dict[tuple[str, str], str] = {}

    def call(self, fn: Callable[..., T], *args: Any, field: str, scope: str = "",
             default: Any = None, routine: Iterable[int] = ()) -> Any:
        """``fn(*args)``, or ``default`` when NVML cannot answer.

        ``field`` names what the value is for (e.g. "serial") and ``scope``
        where (e.g. "gpu0", "gpu0/mig1"); the first failure per (scope, field)
        is recorded and logged. Codes in ``routine`` (e.g. NOT_FOUND from
        nvmlDeviceGetProcessUtilization: "no sample since then") return the
        default without being recorded.
        """
        try:
            return fn(*args)
        except pynvml.NVMLError as err:
            if getattr(err, "value", None) not in set(routine):
                self.mark_unavailable(scope, field, error_name(err))
            return default

    def mark_unavailable(self, scope: str, field: str, reason: str) -> None:
        """Record that NVML could not give ``field`` on ``scope``; logged once."""
        key = (scope, field)
        with self._lock:
            if key in self._unavailable:
                return
            self._unavailable[key] = reason
        log.info("nvml: %s on %s unavailable: %s", field, scope or "system", reason)

    def unavailable(self, scope: str | None = None) -> list[str]:
        """Recorded failures as "field: REASON" for one scope (prefix match on
        "gpu0" also covers "gpu0/mig1"), or "scope field: REASON" for all."""
        with self._lock:
            items = sorted(self._unavailable.items())
        if scope is None:
            return [f"{s} {f}: {r}" if s else f"{f}: {r}" for (s, f), r in items]
        return [f"{f}: {r}" if s == scope else f"{s.removeprefix(scope + '/')} {f}: {r}"
                for (s, f), r in items if s == scope or s.startswith(scope + "/")]

    def device_count(self) -> int:
        """Number of GPUs; 0 (recorded) when NVML cannot say."""
        return int(self.call(self.nvml.nvmlDeviceGetCount, field="device_count", default=0))

    def shutdown(self) -> None:
        """Release NVML (the library stays loaded, as pynvml does)."""
        try:
            self.nvml.nvmlShutdown()
        except pynvml.NVMLError as err:
            log.debug("nvmlShutdown: %s", err)


def _use_library(library: str | None) -> None:
    """Point pynvml at ``library`` (or back at its default loader for None)."""
    lib = ctypes.CDLL(library) if library else None
    with _LOAD_LOCK:
        if pynvml.nvmlLib is not lib:
            pynvml.nvmlLib = lib  # None: nvmlInit loads libnvidia-ml.so.1 itself
            pynvml._nvmlGetFunctionPointer_cache.clear()  # pointers into the old library


def open_nvml(library: str | None = None) -> tuple[NvmlHandle | None, str]:
    """Load and initialise NVML: ``(handle, "")`` or ``(None, reason)``.

    ``library`` is a path to a libnvidia-ml.so to use instead of the system's
    libnvidia-ml.so.1 (tests load a fake one). A missing library or a failing
    nvmlInit (no driver loaded) is not an error for the agent: the NVML sensor
    is then "off" and the reason goes to agent.health.
    """
    name = library or DEFAULT_LIBRARY
    try:
        _use_library(library)
    except OSError as err:
        return None, f"cannot load {name}: {err}"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        if getattr(err, "value", None) == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND:
            return None, f"{name} not found (no NVIDIA driver installed?)"
        return None, f"nvmlInit failed with {name}: {error_name(err)} ({err})"
    return NvmlHandle(pynvml, name), ""
