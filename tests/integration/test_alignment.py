"""The ctypes mirrors in agent/sensors/records.py match the compiled C layout.

A small BPF program, compiled by bcc from events.h, stores sizeof() and
offsetof() of every field the mirrors declare into an array map when this
test calls getppid(); we compare them with the ctypes offsets and sizes.
(bcc's own ctypes view of map values is not used: it flattens 2-D arrays
such as exec_rec.argv.)
"""

from __future__ import annotations

import ctypes as ct
import os
import re

import pytest

from agent.sensors.records import BPF_DIR, MIRRORS, record_headers
from agent.sensors.registry import BPF_SENSORS
from tests.capabilities import require_bpf

pytestmark = pytest.mark.bpf


def layout(t: type) -> list[tuple[str, int, int]]:
    """(C member path, offset, size) for every leaf field of a ctypes struct."""
    out: list[tuple[str, int, int]] = []

    def walk(struct: type, prefix: str, base: int) -> None:
        for name, ftype, *_ in struct._fields_:  # type: ignore[attr-defined]
            off = base + getattr(struct, name).offset
            if isinstance(ftype, type) and issubclass(ftype, ct.Structure):
                walk(ftype, f"{prefix}{name}.", off)
            else:
                out.append((prefix + name, off, ct.sizeof(ftype)))

    walk(t, "", 0)
    return out


def _probe_program(checks: list[tuple[str, str]]) -> str:
    stores = "".join(
        f"    i = {i}; v = {expr}; out.update(&i, &v);\n" for i, (_, expr) in enumerate(checks)
    )
    return (
        '#include <uapi/linux/ptrace.h>\n#include "events.h"\n'
        f"BPF_ARRAY(out, u64, {len(checks)});\n"
        "TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {\n"
        f"    if ((bpf_get_current_pid_tgid() >> 32) != {os.getpid()}) return 0;\n"
        "    u32 i; u64 v;\n" + stores + "    return 0;\n}\n"
    )


def all_mirrors() -> dict[str, type[ct.Structure]]:
    """records.py's mirrors and those each sensor module declares for its own header."""
    found: dict[str, type[ct.Structure]] = dict(MIRRORS)
    for sensor in BPF_SENSORS:
        for name, mirror in sensor.mirrors.items():
            assert found.get(name, mirror) is mirror, f"two mirrors for struct {name}"
            found[name] = mirror
    return found


def test_every_struct_of_the_record_headers_has_a_mirror() -> None:
    # a struct added to a record header without a mirror would escape the layout check
    text = "\n".join(p.read_text() for p in record_headers())
    declared = re.findall(r"^struct (\w+) \{", text, flags=re.M)
    assert sorted(declared) == sorted(all_mirrors())


def test_mirrors_match_compiled_layout() -> None:
    require_bpf()
    from bcc import BPF

    expected: list[tuple[str, int]] = []
    checks: list[tuple[str, str]] = []
    for name, mirror in all_mirrors().items():
        checks.append((f"sizeof({name})", f"sizeof(struct {name})"))
        expected.append((f"sizeof({name})", ct.sizeof(mirror)))
        for path, off, size in layout(mirror):
            member = f"((struct {name} *)0)->{path}"
            checks += [(f"{name}.{path}@", f"__builtin_offsetof(struct {name}, {path})"),
                       (f"{name}.{path}#", f"sizeof({member})")]
            expected += [(f"{name}.{path}@", off), (f"{name}.{path}#", size)]
    b = BPF(text=_probe_program(checks), cflags=[f"-I{BPF_DIR}"])
    try:
        os.getppid()
        table = b["out"]
        got = [(label, table[ct.c_int(i)].value) for i, (label, _) in enumerate(checks)]
    finally:
        b.cleanup()
    assert got == expected
