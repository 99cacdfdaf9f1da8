"""code.load and process.exec's fileless/preload end to end: real processes
make real mmap/dlopen/memfd/exec calls; a real eBPF agent reports them over
real gRPC into the collector's SQLite."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuaudit.v1 import events_pb2
from tests.capabilities import require
from tests.integration.harness import Agent, Collector, null_device, settle, wait_for

pytestmark = [pytest.mark.bpf, pytest.mark.integration]

NODE = "it-node"
SYSTEM_PYTHON = "/usr/bin/python3"

LIB_C = """
int gpuaudit_probe_answer(void) { return 42; }
const char gpuaudit_probe_tag[] = "%s";
"""

# Opens the GPU node, waits until told, then dlopens the library; stays alive
# until stdin closes (the agent resolves mappings of a living process).
GPU_LOADER = """
import ctypes, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
print("touched", flush=True)
sys.stdin.readline()
assert ctypes.CDLL(sys.argv[2]).gpuaudit_probe_answer() == 42
print("loaded", flush=True)
sys.stdin.read()
"""

LOADER = """
import ctypes, sys
assert ctypes.CDLL(sys.argv[1]).gpuaudit_probe_answer() == 42
print("loaded", flush=True)
sys.stdin.read()
"""

MEMFD_LOADER = """
import ctypes, os, sys
fd = os.memfd_create("gpuaudit-lib", 0)
os.write(fd, open(sys.argv[1], "rb").read())
assert ctypes.CDLL(f"/proc/self/fd/{fd}").gpuaudit_probe_answer() == 42
print("loaded", flush=True)
sys.stdin.read()
"""

# Maps the library read-write (not executable), then makes it executable
# with mprotect: the other way to run a file's bytes.
MPROTECT_LOADER = """
import ctypes as ct, os, sys
libc = ct.CDLL(None, use_errno=True)
libc.mmap.restype = ct.c_void_p
libc.mmap.argtypes = [ct.c_void_p, ct.c_size_t, ct.c_int, ct.c_int, ct.c_int, ct.c_long]
fd = os.open(sys.argv[1], os.O_RDONLY)
addr = libc.mmap(None, 4096, 0x1 | 0x2, 0x02, fd, 0)        # PROT_READ|WRITE, MAP_PRIVATE
assert addr not in (None, ct.c_void_p(-1).value), ct.get_errno()
assert libc.mprotect(ct.c_void_p(addr), 4096, 0x1 | 0x4) == 0, ct.get_errno()  # READ|EXEC
anon = libc.mmap(None, 4096, 0x1 | 0x2, 0x02 | 0x20, -1, 0)  # anonymous: JIT-like
assert libc.mprotect(ct.c_void_p(anon), 4096, 0x1 | 0x4) == 0, ct.get_errno()
print("protected", flush=True)
sys.stdin.read()
"""

# Runs `sleep 60` from a memfd copy, through execveat(fd, "", AT_EMPTY_PATH)
# (os.execve with an fd is fexecve) or through /proc/self/fd/N.
MEMFD_EXEC = """
import os, shutil, sys
fd = os.memfd_create("gpuaudit-exe", 0)
os.write(fd, open(shutil.which("sleep"), "rb").read())
if sys.argv[1] == "fexecve":
    os.execve(fd, ["sleep", "60"], {})
os.execv(f"/proc/self/fd/{fd}", ["sleep", "60"])
"""


@pytest.fixture(scope="module")
def gpu_node() -> Iterator[Path]:
    """A node under the GPU prefix whose open succeeds (/dev/null's 1:3), like
    conftest's null_gpu_node but named for this module and process: test
    sessions running side by side must not remove each other's node."""
    with null_device(Path(f"/dev/nvidia-gpuaudit-codeload-{os.getpid()}")) as path:
        yield path


@pytest.fixture(scope="module")
def probe_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shared library built for this run, in a temporary directory."""
    require(shutil.which("gcc") is not None, "needs gcc to build the test library")
    d = tmp_path_factory.mktemp("codeload")
    src = d / "probe.c"
    src.write_text(LIB_C % d)
    lib = d / "libgpuaudit_probe.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib


@pytest.fixture
def lib_copy(probe_lib: Path, tmp_path: Path) -> Path:
    """The probe library copied into this test's own temporary directory."""
    dest = tmp_path / "libcopy.so"
    shutil.copy(probe_lib, dest)
    return dest


def _popen(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)


def _expect(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdout is not None
    got = proc.stdout.readline().strip()
    assert got == line, f"child said {got!r} (rc={proc.poll()})"


def _finish(proc: subprocess.Popen[str]) -> None:
    proc.communicate("", timeout=60)
    assert proc.returncode == 0


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def _loads(col: Collector, pid: int) -> list[events_pb2.Event]:
    return col.query(types=["code.load"], pid=pid)


def _load_of(col: Collector, pid: int, path: Path) -> events_pb2.Event:
    def find() -> list[events_pb2.Event]:
        return [e for e in _loads(col, pid) if e.code_load.path == str(path)]

    (ev,) = wait_for(find)  # type: ignore[misc]
    return ev


def _assert_file_facts(ev: events_pb2.Event, lib: Path) -> None:
    c = ev.code_load
    st = lib.stat()
    assert c.sha256 == hashlib.sha256(lib.read_bytes()).hexdigest()
    assert (c.size, c.file_uid, c.kind, c.dev, c.inode, c.hash_error) == (
        st.st_size, st.st_uid, "file", st.st_dev, st.st_ino, "")
    assert not c.writable_by_others  # pytest's temp dirs: root's, 0700 under sticky /tmp


def test_gpu_process_reports_earlier_libraries_and_its_dlopen(
        collector: Collector, bpf_agent: Agent, gpu_node: Path, lib_copy: Path,
        children: list[subprocess.Popen[str]]) -> None:
    proc = _popen(sys.executable, "-c", GPU_LOADER, str(gpu_node), str(lib_copy))
    children.append(proc)
    _expect(proc, "touched")
    # the GPU touch makes the agent report what the process had mapped: from maps
    before = wait_for(lambda: [e for e in _loads(collector, proc.pid)
                               if "libc.so" in e.code_load.path])
    (libc,) = before  # type: ignore[misc]
    assert (libc.code_load.source, libc.code_load.syscall, libc.code_load.kind) == (
        "maps", "", "file")
    assert len(libc.code_load.sha256) == 64
    proc.stdin.write("go\n")  # type: ignore[union-attr]
    proc.stdin.flush()  # type: ignore[union-attr]
    _expect(proc, "loaded")
    ev = _load_of(collector, proc.pid, lib_copy)
    assert (ev.code_load.source, ev.code_load.syscall) == ("mmap", "mmap")
    assert (ev.process.pid, ev.process.comm) == (proc.pid, Path(sys.executable).name[:15])
    _assert_file_facts(ev, lib_copy)
    settle(collector, NODE)
    paths = [e.code_load.path for e in _loads(collector, proc.pid)]
    assert len(paths) == len(set(paths)), "a file was reported twice"
    _finish(proc)


def test_non_gpu_process_loading_from_a_temp_dir_is_reported(
        collector: Collector, bpf_agent: Agent, lib_copy: Path,
        children: list[subprocess.Popen[str]]) -> None:
    proc = _popen(SYSTEM_PYTHON, "-c", LOADER, str(lib_copy))
    children.append(proc)
    _expect(proc, "loaded")
    ev = _load_of(collector, proc.pid, lib_copy)
    _assert_file_facts(ev, lib_copy)
    settle(collector, NODE)
    # its system libraries (libc, lib-dynload's _ctypes) are allow-listed
    assert [e.code_load.path for e in _loads(collector, proc.pid)] == [str(lib_copy)]
    _finish(proc)


def test_standard_library_imports_of_a_non_gpu_process_are_not_reported(
        collector: Collector, bpf_agent: Agent, children: list[subprocess.Popen[str]]) -> None:
    proc = _popen(SYSTEM_PYTHON, "-c",
                  "import json, decimal, sys; print('imported', flush=True); sys.stdin.read()")
    children.append(proc)
    _expect(proc, "imported")
    maps = Path(f"/proc/{proc.pid}/maps").read_text()
    assert "_decimal" in maps  # the imports really mapped extension modules
    settle(collector, NODE)  # the process is alive: every mapping was resolvable
    assert _loads(collector, proc.pid) == []
    _finish(proc)


def test_memfd_mapping_is_reported_as_memfd(
        collector: Collector, bpf_agent: Agent, probe_lib: Path,
        children: list[subprocess.Popen[str]]) -> None:
    proc = _popen(SYSTEM_PYTHON, "-c", MEMFD_LOADER, str(probe_lib))
    children.append(proc)
    _expect(proc, "loaded")

    def memfd_loads() -> list[events_pb2.Event]:
        return [e for e in _loads(collector, proc.pid) if e.code_load.kind == "memfd"]

    (ev,) = wait_for(memfd_loads)  # type: ignore[misc]
    c = ev.code_load
    assert c.path == "/memfd:gpuaudit-lib (deleted)"
    assert c.sha256 == hashlib.sha256(probe_lib.read_bytes()).hexdigest()
    assert (c.size, c.source, c.syscall) == (probe_lib.stat().st_size, "mmap", "mmap")
    _finish(proc)


def test_mprotect_making_a_file_mapping_executable_is_reported(
        collector: Collector, bpf_agent: Agent, lib_copy: Path,
        children: list[subprocess.Popen[str]]) -> None:
    proc = _popen(SYSTEM_PYTHON, "-c", MPROTECT_LOADER, str(lib_copy))
    children.append(proc)
    _expect(proc, "protected")
    ev = _load_of(collector, proc.pid, lib_copy)
    assert (ev.code_load.source, ev.code_load.syscall) == ("mmap", "mprotect")
    _assert_file_facts(ev, lib_copy)
    settle(collector, NODE)
    # the anonymous range made executable is not a file: nothing for it
    assert [e.code_load.path for e in _loads(collector, proc.pid)] == [str(lib_copy)]
    _finish(proc)


# Maps the library executable 6000 times as fast as it can: past the kernel's
# per-process burst (4096), so the rest is held back and counted.
MMAP_FLOOD = """
import ctypes as ct, os, sys
libc = ct.CDLL(None, use_errno=True)
libc.mmap.restype = ct.c_void_p
libc.mmap.argtypes = [ct.c_void_p, ct.c_size_t, ct.c_int, ct.c_int, ct.c_int, ct.c_long]
fd = os.open(sys.argv[1], os.O_RDONLY)
for _ in range(6000):
    addr = libc.mmap(None, 4096, 0x1 | 0x4, 0x02, fd, 0)
    libc.munmap(ct.c_void_p(addr), 4096)
print("flooded", flush=True)
sys.stdin.read()
"""


def test_a_mapping_flood_is_rate_limited_in_the_kernel_and_counted(
        collector: Collector, bpf_agent: Agent, lib_copy: Path,
        children: list[subprocess.Popen[str]]) -> None:
    proc = _popen(SYSTEM_PYTHON, "-c", MMAP_FLOOD, str(lib_copy))
    children.append(proc)
    _expect(proc, "flooded")
    _load_of(collector, proc.pid, lib_copy)  # the file is still reported, once

    def limited() -> int:
        evs = collector.query(types=["agent.loss"], nodes=[NODE])
        return max((e.agent_loss.total for e in evs
                    if e.agent_loss.reason == "code_rate_limited"), default=0)

    # at most the burst got through (plus what the 1000/s refill allowed)
    assert wait_for(lambda: limited() >= 1000)
    _finish(proc)


@pytest.mark.parametrize("how", ["fexecve", "proc_fd"])
def test_memfd_exec_is_fileless(collector: Collector, bpf_agent: Agent, how: str,
                                children: list[subprocess.Popen[str]]) -> None:
    proc = subprocess.Popen([SYSTEM_PYTHON, "-c", MEMFD_EXEC, how])
    children.append(proc)  # type: ignore[arg-type]

    def exec_of_sleep() -> list[events_pb2.Event]:
        evs = collector.query(types=["process.exec"], pid=proc.pid)
        return [e for e in evs if e.process_exec.argv == ["sleep", "60"]]

    (ev,) = wait_for(exec_of_sleep)  # type: ignore[misc]
    x = ev.process_exec
    assert (x.fileless, x.fileless_kind) == (True, "memfd")
    if how == "fexecve":  # execveat(fd, "", AT_EMPTY_PATH): the kernel names it /dev/fd/N
        assert x.filename.startswith("/dev/fd/")
    else:
        assert x.filename.startswith("/proc/self/fd/")
    proc.kill()
    proc.wait(10)


def test_exec_reports_preload_variables(collector: Collector, bpf_agent: Agent,
                                        lib_copy: Path, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(lib_copy),
           "PYTHONPATH": f"{tmp_path}/a:{tmp_path}/b", "NCCL_NET_PLUGIN": "",
           "HOME": "/root", "LD_AUDITX": "not one of them"}
    proc = subprocess.Popen(["/bin/true"], env=env)
    assert proc.wait(30) == 0
    settle(collector, NODE)
    (ev,) = collector.query(types=["process.exec"], pid=proc.pid)
    assert dict(ev.process_exec.preload) == {
        "LD_PRELOAD": str(lib_copy), "PYTHONPATH": f"{tmp_path}/a:{tmp_path}/b",
        "NCCL_NET_PLUGIN": ""}
    assert not ev.process_exec.fileless


def test_preload_past_the_scanned_environment_is_read_from_proc(
        collector: Collector, bpf_agent: Agent, tmp_path: Path,
        children: list[subprocess.Popen[str]]) -> None:
    # 200 variables first: the kernel reads 128 entries and says so; the agent
    # completes the list from /proc/PID/environ while the process lives
    env = {f"GPUAUDIT_PAD_{i:03d}": "x" for i in range(200)}
    env["LD_LIBRARY_PATH"] = str(tmp_path)
    proc = subprocess.Popen(["sleep", "60"], env={**env, "PATH": "/usr/bin:/bin"})
    children.append(proc)  # type: ignore[arg-type]

    def exec_of_sleep() -> list[events_pb2.Event]:
        return collector.query(types=["process.exec"], pid=proc.pid)

    (ev,) = wait_for(exec_of_sleep)  # type: ignore[misc]
    assert dict(ev.process_exec.preload) == {"LD_LIBRARY_PATH": str(tmp_path)}
    proc.kill()
    proc.wait(10)


def test_binary_run_from_tmp_is_fileless(collector: Collector, bpf_agent: Agent) -> None:
    binary = Path("/tmp") / f"gpuaudit-true-{os.getpid()}"
    shutil.copy("/bin/true", binary)
    try:
        proc = subprocess.Popen([str(binary)])
        assert proc.wait(30) == 0
    finally:
        binary.unlink()
    settle(collector, NODE)
    (ev,) = collector.query(types=["process.exec"], pid=proc.pid)
    assert (ev.process_exec.fileless, ev.process_exec.fileless_kind) == (True, "tmp")
