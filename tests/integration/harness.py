"""Start real collector and agent processes on loopback and talk to them over gRPC.

Both speak mutual TLS by default, with certificates from one PKI minted once
per test session (:func:`session_pki`); pass ``insecure=True`` to both for
plaintext.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from collector import certs
from gpuaudit.tls import TlsFiles
from gpuaudit.v1 import collector_pb2, collector_pb2_grpc, events_pb2
from tests.capabilities import require

GPUAUDIT = str(Path(sys.executable).parent / "gpuaudit")
READER = "it-reader"
NOBODY = pwd.getpwnam("nobody")
# subprocess.Popen/run keywords that run a child as nobody, with no extra groups
AS_NOBODY = {"user": NOBODY.pw_uid, "group": NOBODY.pw_gid, "extra_groups": []}


class TestPki:
    """A CA with the collector's and a reader's certificate; node certificates on demand."""

    __test__ = False  # not a pytest test class

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = certs.new_ca("gpuaudit test CA")
        certs.write_ca(self.ca, root / "ca")
        self.collector = certs.issue_collector(self.ca, root / "collector")
        self.reader = certs.issue_reader(self.ca, READER, certs.reader_dir(root, READER))
        self._nodes: dict[str, TlsFiles] = {}
        self._lock = threading.Lock()

    def node(self, name: str) -> TlsFiles:
        """The certificate of node ``name`` (OU=gpuaudit-node, CN/SAN=name), minted once."""
        with self._lock:
            if name not in self._nodes:
                self._nodes[name] = certs.issue_node(self.ca, name, certs.node_dir(self.root, name))
            return self._nodes[name]

    def client(self, name: str, role: str = "reader",
               validity: certs.Validity | None = None) -> TlsFiles:
        """A fresh ``role`` certificate (e.g. an expired one) from this CA, under ``root/extra``."""
        out = self.root / "extra" / f"{role}-{name}-{time.monotonic_ns()}"
        issue = certs.issue_node if role == "node" else certs.issue_reader
        return issue(self.ca, name, out, validity)


_session_pki: TestPki | None = None
_session_lock = threading.Lock()


def session_pki() -> TestPki:
    """The test session's PKI, minted on first use, removed at interpreter exit."""
    global _session_pki
    with _session_lock:
        if _session_pki is None:
            root = Path(tempfile.mkdtemp(prefix="gpuaudit-pki-"))
            atexit.register(shutil.rmtree, root, ignore_errors=True)
            _session_pki = TestPki(root)
        return _session_pki


def tls_args(files: TlsFiles | None) -> list[str]:
    """Command-line flags for ``files``, or ``--insecure`` for None."""
    if files is None:
        return ["--insecure"]
    return ["--tls-ca", str(files.ca), "--tls-cert", str(files.cert), "--tls-key", str(files.key)]


def channel(address: str, files: TlsFiles | None) -> grpc.Channel:
    """A client channel to ``address``: mutual TLS with ``files``, or plaintext for None."""
    if files is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, files.channel_credentials())


class Collector:
    """`gpuaudit collector` on 127.0.0.1:0, with a client stub (reader certificate)."""

    def __init__(self, db: Path, *extra: str, insecure: bool = False,
                 pki: TestPki | None = None) -> None:
        self.db = db
        self.insecure = insecure
        self.pki = None if insecure else (pki or session_pki())
        server_tls = None if self.pki is None else self.pki.collector
        # Output goes to a file, not a pipe: nobody reads a pipe after the
        # "listening" line, and a collector logging more than the pipe holds
        # (64 KiB) would block on its next log line.
        self.log = db.with_name(f"{db.stem}-collector-{time.monotonic_ns()}.log")
        self._out = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [GPUAUDIT, "collector", "--listen", "127.0.0.1:0", "--db", str(db),
             *tls_args(server_tls), *extra],
            stdout=self._out, stderr=subprocess.STDOUT, text=True,
        )
        self.address = self._wait_listening()
        self.channel = channel(self.address, None if self.pki is None else self.pki.reader)
        self.stub = collector_pb2_grpc.CollectorStub(self.channel)

    def _wait_listening(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"listening on (\S+:\d+)", self.output())
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError("collector did not start:\n" + self.output())

    def output(self) -> str:
        """Everything the collector printed so far."""
        return self.log.read_text()

    def query(self, **kw: object) -> list[events_pb2.Event]:
        kw.setdefault("limit", 10000)
        q = collector_pb2.EventQuery(**kw)  # type: ignore[arg-type]
        return list(self.stub.QueryEvents(q, timeout=10))

    def status(self) -> collector_pb2.StatusReply:
        return self.stub.GetStatus(collector_pb2.StatusRequest(), timeout=10)

    def stop(self) -> None:
        self.channel.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


class Agent:
    """`gpuaudit agent` pointed at a collector; output captured to a file.

    Uses the session PKI's certificate for ``node`` unless ``insecure`` (or
    ``tls`` names other files, e.g. another node's certificate).
    """

    def __init__(self, collector: str, node: str, log: Path, *extra: str,
                 user: int | None = None, insecure: bool = False,
                 tls: TlsFiles | None = None) -> None:
        self.log = log
        self.node = node
        # An agent run as another user gets a directory of its own (under /tmp,
        # which it can traverse): a copy of its TLS files (the key is 0600 and
        # the PKI root-only) and its spool.
        self._own_dir = None if user is None else _user_dir(user)
        files = None if insecure else (tls or session_pki().node(node))
        if files is not None and self._own_dir is not None and user is not None:
            files = _copy_tls(files, self._own_dir / "tls", user)
        if "--spool-dir" not in extra:
            # Per node, beside the log: an agent restarted on the same log
            # directory finds its spool again (not so for another user's: removed at stop).
            base = self._own_dir or log.parent
            extra = ("--spool-dir", str(base / f"spool-{node}"), *extra)
        self._out = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [GPUAUDIT, "agent", "--collector", collector, "--node", node,
             "--heartbeat", "1", *tls_args(files), *extra],
            stdout=self._out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, **_as_user(user),
        )

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        self.proc.terminate()
        try:
            rc = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._out.close()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
        return rc


def _user_dir(uid: int) -> Path:
    """A fresh directory under /tmp owned by ``uid``."""
    d = Path(tempfile.mkdtemp(prefix="gpuaudit-agent-"))
    os.chown(d, uid, -1)
    return d


def _copy_tls(files: TlsFiles, dest: Path, uid: int) -> TlsFiles:
    """Copies of ``files`` in ``dest``, owned by ``uid``."""
    dest.mkdir(mode=0o700)
    copy = TlsFiles.from_dir(dest)
    for src, dst in ((files.ca, copy.ca), (files.cert, copy.cert), (files.key, copy.key)):
        shutil.copy2(src, dst)
    for path in (dest, copy.ca, copy.cert, copy.key):
        os.chown(path, uid, -1)
    return copy


def _as_user(uid: int | None) -> dict[str, object]:
    """Popen arguments to run as `uid` with its own group and no root groups."""
    if uid is None:
        return {}
    return {"user": uid, "group": pwd.getpwuid(uid).pw_gid, "extra_groups": []}


def wait_for(pred: Callable[[], object], timeout: float = 30, every: float = 0.2) -> object:
    """Poll ``pred`` until it returns something truthy; return it, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


def ready_agent(col: Collector, node: str, mode: str, log: Path, *extra: str,
                timeout: float = 90, **kw: object) -> Agent:
    """An Agent for ``node`` whose first heartbeat in ``mode`` is stored; its log if not."""
    agent = Agent(col.address, node, log, *extra, **kw)  # type: ignore[arg-type]
    try:
        wait_node_ready(col, node, mode, timeout)
    except AssertionError:
        agent.stop()
        raise AssertionError(f"agent {node} never reported {mode}:\n{log.read_text()}") from None
    return agent


def wait_node_ready(col: Collector, node: str, mode: str, timeout: float = 60) -> None:
    """Until the node's first heartbeat (sent after all sensors attached) is stored."""

    def ready() -> bool:
        return any(n.node == node and n.mode == mode for n in col.status().nodes)

    wait_for(ready, timeout)


def settle(col: Collector, node: str, timeout: float = 30) -> None:
    """Wait until events produced so far have reached the store.

    Heartbeats pass through the same queue and processor as sensor records and
    are stored in seq order; the ring is drained continuously (well under a
    second), so a heartbeat stamped more than a second after `now` is stored
    only after everything the kernel produced before `now`.
    """
    since = time.time_ns() + 1_200_000_000

    def newer_heartbeat() -> bool:
        q = collector_pb2.EventQuery(types=["agent.health"], nodes=[node], limit=1, newest=True)
        evs = list(col.stub.QueryEvents(q, timeout=10))
        return bool(evs) and evs[-1].time.ToNanoseconds() > since

    wait_for(newer_heartbeat, timeout)


@contextlib.contextmanager
def null_device(path: Path) -> Iterator[Path]:
    """A character node at ``path`` that opens like /dev/null (1:3), mode 0666,
    removed afterwards: a stand-in for a GPU (or RDMA) device under the prefix
    the kernel filter matches. Each module names its own (with its pid where
    sessions may run side by side): a shared path is removed by whichever
    module's teardown comes first."""
    require(os.geteuid() == 0, "needs root to mknod")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(path, 0o666)  # mknod's mode passes through the umask
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


SYS_BPF = {"x86_64": 321, "aarch64": 280}
"""The bpf(2) syscall number, by machine."""

# A socket filter "r0 = 0; exit" loaded with bpf(BPF_PROG_LOAD) by hand, named
# argv[2]; prints the program fd. Arguments: the bpf syscall number, the name.
BPF_LOAD = """
import ctypes as ct, struct, sys
libc = ct.CDLL(None, use_errno=True)
insns = ct.create_string_buffer(struct.pack("<BBhiBBhi", 0xb7, 0, 0, 0, 0x95, 0, 0, 0), 16)
lic = ct.create_string_buffer(b"GPL")
attr = ct.create_string_buffer(struct.pack("<IIQQIIQII16s", 1, 2, ct.addressof(insns),
                                           ct.addressof(lic), 0, 0, 0, 0, 0,
                                           sys.argv[2].encode()), 128)
fd = libc.syscall(int(sys.argv[1]), 5, attr, 128)
assert fd >= 0, ct.get_errno()
print(fd)
"""
