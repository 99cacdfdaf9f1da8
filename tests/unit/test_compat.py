"""The compat sensor's user-space side, without root: the ia32 table, the ABI
probe's verdicts, the attach decision and decoding (the runtime and its choice
of method: tests/unit/test_compat_method.py)."""

from __future__ import annotations

import ctypes as ct
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent import compat_abi
from agent.compat_abi import AbiState, Plan, ia32_name, interpret_probe, plan, probe_ia32_abi
from agent.sensors import compat
from agent.sensors.base import BootClock
from agent.sensors.records import Hdr

# The security-relevant numbers of arch/x86/entry/syscalls/syscall_32.tbl.
IA32 = {5: "open", 8: "creat", 9: "link", 10: "unlink", 11: "execve", 12: "chdir",
        14: "mknod", 15: "chmod", 20: "getpid", 26: "ptrace", 37: "kill", 38: "rename",
        40: "rmdir", 102: "socketcall", 125: "mprotect", 128: "init_module", 133: "fchdir",
        192: "mmap2", 295: "openat", 301: "unlinkat", 302: "renameat", 303: "linkat",
        304: "symlinkat", 348: "process_vm_writev", 350: "finit_module", 353: "renameat2",
        357: "bpf", 358: "execveat", 359: "socket", 362: "connect", 437: "openat2"}


@pytest.mark.parametrize(("nr", "name"), sorted(IA32.items()))
def test_ia32_names_follow_the_kernel_table(nr: int, name: str) -> None:
    assert ia32_name(nr) == name


def test_unknown_and_unused_numbers_have_no_name() -> None:
    # 222, 223, 251, 285: numbers never given a syscall (no entry in the table)
    assert [ia32_name(n) for n in (-1, 222, 223, 251, 285, 100000)] == [""] * 6
    assert "-" not in compat_abi.IA32_SYSCALLS


# -- the probe's verdicts ----------------------------------------------------
def test_an_answering_probe_gives_its_pid() -> None:
    # the self-test looks for this pid's int $0x80 getpid
    assert interpret_probe(0, "pid 41 41\n", "") == AbiState(
        "enabled", "int $0x80 getpid() answered", 41)


@pytest.mark.parametrize(("rc", "out", "err", "state"), [
    (0, "pid 41 41\n", "", "enabled"),
    (-11, "", "", "disabled"),
    (0, "pid 4294967258 41\n", "", "unknown"),  # -ENOSYS: a filter, not the ABI's absence
    (1, "", "Traceback...\nSystemExit: mprotect failed: errno 13\n", "unknown"),
    (-9, "", "", "unknown"),
])
def test_probe_outcomes(rc: int, out: str, err: str, state: str) -> None:
    assert interpret_probe(rc, out, err).state == state


def test_unknown_probe_says_why() -> None:
    abi = interpret_probe(1, "", "x\nSystemExit: mprotect failed: errno 13\n")
    assert abi.detail == "probe failed: SystemExit: mprotect failed: errno 13"


def _fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_probe_child_killed_by_sigsegv_means_disabled(tmp_path: Path) -> None:
    # what a kernel booted with ia32_emulation=false does to int $0x80
    abi = probe_ia32_abi(python=_fake_python(tmp_path, "kill -SEGV $$"))
    assert abi == AbiState("disabled", "int $0x80 raised SIGSEGV")


def test_probe_that_cannot_start_is_unknown(tmp_path: Path) -> None:
    abi = probe_ia32_abi(python=str(tmp_path / "no-such-python"))
    assert abi.state == "unknown" and "probe could not run" in abi.detail


def test_probe_that_hangs_is_unknown(tmp_path: Path) -> None:
    abi = probe_ia32_abi(python=_fake_python(tmp_path, "exec sleep 30"), timeout_s=0.2)
    assert abi.state == "unknown" and "timed out" in abi.detail


# -- the decision --------------------------------------------------------------
def test_abi_disabled_attaches_nothing_and_is_ok() -> None:
    for watch in (True, False):
        assert plan(AbiState("disabled"), watch) == Plan(
            False, "ok", "ia32 syscall ABI disabled: nothing to watch")


def test_abi_enabled_and_watching_attaches() -> None:
    # the detail is completed by compat_abi.watching() once the method is known
    assert plan(AbiState("enabled"), True) == Plan(True, "ok", "watching ia32 syscalls")


def test_abi_enabled_and_turned_off_says_blind_and_what_to_do() -> None:
    p = plan(AbiState("enabled"), False)
    assert (p.attach, p.state) == (False, "degraded")
    assert p.detail == "detector off (--no-compat-watch): " + compat_abi.BLIND
    assert "BLIND to ia32 syscalls" in p.detail and "ia32_emulation=false" in p.detail


def test_inconclusive_probe_counts_as_enabled() -> None:
    abi = AbiState("unknown", "probe failed: mprotect failed: errno 13")
    watching = plan(abi, True)
    assert (watching.attach, watching.state) == (True, "ok")
    assert watching.detail.endswith("(ABI probe inconclusive: probe failed: mprotect failed: "
                                    "errno 13)")
    off = plan(abi, False)
    assert (off.attach, off.state) == (False, "degraded") and "BLIND" in off.detail


# -- decoding ------------------------------------------------------------------
def _rec(nr: int, cs: int, args: tuple[int, int, int]) -> bytes:
    h = Hdr(op=compat.OP_COMPAT_SYSCALL, pid=4242, tid=4243, ppid=1, uid=1000, gid=1000,
            ktime_ns=5_000, cgroup_id=77, comm=b"evil")
    r = compat.CompatRec(h=h, nr=nr, cs=cs, ip=0x55550000_1234,
                         args=(ct.c_uint64 * 3)(*args))
    return bytes(r)


def test_decode_int80_from_64bit_code() -> None:
    rec = compat.decode_compat(_rec(5, 0x33, (0x40001000, 0o101, 0o644)), BootClock())
    assert (rec.type, rec.pid, rec.tid, rec.ppid, rec.uid, rec.comm, rec.cgroup_id) == (
        "process.compat_syscall", 4242, 4243, 1, 1000, "evil", 77)
    p = rec.payload
    assert (p.nr, p.name, p.mode, list(p.args), p.cs, p.ip) == (
        5, "open", "int80_in_64bit", [0x40001000, 0o101, 0o644], 0x33, 0x55550000_1234)


def test_decode_32bit_code_segment_and_unknown_number() -> None:
    p = compat.decode_compat(_rec(9999, 0x23, (0, 0, 0)), BootClock()).payload
    assert (p.nr, p.name, p.mode) == (9999, "", "ia32_process")


def test_mirror_size_matches_the_header_layout() -> None:
    # hdr (56) + nr, cs (8) + ip (8) + args (24); the bcc check is in test_alignment
    assert ct.sizeof(compat.CompatRec) == ct.sizeof(Hdr) + 40


# -- configuration (the runtime: tests/unit/test_compat_method.py) ---------------
def test_agent_config_watches_unless_told_off() -> None:
    from agent.main import AgentConfig, config_from_args

    assert AgentConfig(collector="c").compat_watch is True

    def cfg(**kw: object) -> AgentConfig:
        return config_from_args(SimpleNamespace(collector="c", insecure=True, **kw))

    assert cfg().compat_watch is True
    assert cfg(no_compat_watch=False).compat_watch is True
    assert cfg(no_compat_watch=True).compat_watch is False

