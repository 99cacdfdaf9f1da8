"""process.exec's fileless and preload fields, decoded without root or eBPF
against a fake /proc."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from agent.codeload.fileless import HomeDirs, fileless_kind, path_kind
from agent.sensors.base import BootClock
from agent.sensors.process import (
    OP_EXEC_ENV,
    PRELOAD_VARS,
    ExecDecoder,
    ExecEnvRec,
    environ_preload,
)
from agent.sensors.records import OP_EXEC, ExecRec
from gpuaudit.v1 import events_pb2

HOMES = ("/home", "/root", "/srv/alice")
PID = 777


def test_path_kinds() -> None:
    assert path_kind("/memfd:payload (deleted)", HOMES) == "memfd"
    assert path_kind("/usr/bin/x (deleted)", HOMES) == "deleted"
    assert path_kind("/dev/shm/x", HOMES) == "tmp"
    assert path_kind("/var/tmp/../tmp/x", HOMES) == "tmp"
    assert path_kind("/srv/alice/bin/x", HOMES) == "home"
    assert path_kind("/tmpfoo/x", HOMES) == ""
    assert path_kind("/usr/bin/python3.12", HOMES) == ""


def test_fileless_kind_from_exe_script_path_and_descriptor() -> None:
    assert fileless_kind("/memfd:x (deleted)", "/proc/self/fd/3", "/", HOMES) == "memfd"
    # a script under /tmp: exe is the interpreter, the exec path says where it was
    assert fileless_kind("/usr/bin/bash", "/tmp/run.sh", "/", HOMES) == "tmp"
    assert fileless_kind("/usr/bin/bash", "./run.sh", "/home/bob", HOMES) == "home"
    # fexecve of an installed file: exe judged, the descriptor path is not a place
    assert fileless_kind("/usr/bin/true", "/dev/fd/4", "/", HOMES) == ""
    # gone before the agent looked, run from a descriptor: nothing else to judge by
    assert fileless_kind("", "/dev/fd/4", "", HOMES) == "fd"
    assert fileless_kind("", "/usr/bin/true", "", HOMES) == ""


def test_home_dirs_leave_out_system_accounts() -> None:
    def entry(name: str, uid: int, home: str) -> pwd.struct_passwd:
        return pwd.struct_passwd((name, "x", uid, uid, "", home, "/bin/sh"))

    entries = [entry("root", 0, "/root"), entry("bin", 2, "/bin"),
               entry("alice", 1000, "/srv/alice/"), entry("nobody", 65534, "/nonexistent"),
               entry("weird", 1001, "/")]
    assert HomeDirs(lambda: entries, min_uid=1000)() == ("/home", "/root", "/srv/alice")


def test_environ_last_value_wins_like_ld_so() -> None:
    data = b"LD_PRELOAD=/a.so\0PATH=/bin\0LD_PRELOAD=/b.so\0PYTHONPATH=\0NOEQ\0"
    assert environ_preload(data) == {"LD_PRELOAD": "/b.so", "PYTHONPATH": ""}


def _exec_rec(pid: int = PID, filename: bytes = b"/usr/bin/true") -> bytes:
    r = ExecRec()
    r.h.op, r.h.pid, r.h.tid, r.old_tid = OP_EXEC, pid, pid, pid
    r.filename, r.argc = filename, 1
    r.argv[0].value = b"true"
    return bytes(r)


def _env_rec(values: dict[str, bytes], cut: int = 0, partial: int = 0) -> bytes:
    r = ExecEnvRec()
    r.h.op, r.h.pid, r.h.tid, r.old_tid = OP_EXEC_ENV, PID, PID, PID
    for name, value in values.items():
        i = PRELOAD_VARS.index(name)
        r.set |= 1 << i
        r.val[i].value = value
    r.cut, r.partial = cut, partial
    return bytes(r)


def _fake_proc(root: Path, exe: str, environ: bytes | None = None) -> None:
    d = root / str(PID)
    d.mkdir(parents=True)
    os.symlink(exe, d / "exe")
    os.symlink("/", d / "cwd")
    if environ is not None:
        (d / "environ").write_bytes(environ)


def _payload(dec: ExecDecoder, *records: bytes) -> events_pb2.ProcessExec:
    clock = BootClock()
    out = [dec.decode_env(r, clock) if r[0] == OP_EXEC_ENV else dec.decode_exec(r, clock)
           for r in records]
    assert out[:-1] == [None] * (len(out) - 1)
    rec = out[-1]
    assert rec is not None and isinstance(rec.payload, events_pb2.ProcessExec)
    return rec.payload


def test_preload_comes_from_the_env_record_before_the_exec(tmp_path: Path) -> None:
    _fake_proc(tmp_path, "/usr/bin/true")
    dec = ExecDecoder(str(tmp_path), homes=lambda: HOMES)
    p = _payload(dec, _env_rec({"LD_PRELOAD": b"/tmp/x.so", "NCCL_NET_PLUGIN": b""}), _exec_rec())
    assert dict(p.preload) == {"LD_PRELOAD": "/tmp/x.so", "NCCL_NET_PLUGIN": ""}
    assert (p.fileless, p.fileless_kind) == (False, "")
    # the record was consumed: the next exec of the pid has no preload
    assert dict(_payload(dec, _exec_rec()).preload) == {}


def test_cut_values_are_completed_from_environ_while_the_process_lives(tmp_path: Path) -> None:
    long = "/opt/" + "x" * 600
    _fake_proc(tmp_path, "/memfd:p (deleted)",
               environ=f"PYTHONPATH={long}\0LD_AUDIT=/a.so\0".encode())
    dec = ExecDecoder(str(tmp_path), homes=lambda: HOMES)
    cut = 1 << PRELOAD_VARS.index("PYTHONPATH")
    p = _payload(dec, _env_rec({"PYTHONPATH": long[:511].encode()}, cut=cut), _exec_rec())
    assert dict(p.preload) == {"PYTHONPATH": long, "LD_AUDIT": "/a.so"}
    assert (p.fileless, p.fileless_kind) == (True, "memfd")


def test_process_gone_keeps_what_the_kernel_read(tmp_path: Path) -> None:
    dec = ExecDecoder(str(tmp_path), homes=lambda: HOMES)
    p = _payload(dec, _env_rec({"LD_PRELOAD": b"/x.so"}, partial=1),
                 _exec_rec(filename=b"/dev/fd/3"))
    assert dict(p.preload) == {"LD_PRELOAD": "/x.so"}
    assert (p.fileless, p.fileless_kind) == (True, "fd")
