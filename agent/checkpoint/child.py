"""The scanner process: hashes and scans files the agent hands it by fd.

Why a process and not a thread: parsing a pickle is pure Python and holds the
GIL, so a scan thread would slow the agent's processor thread, and a
low-priority thread holding the GIL would stall it outright (priority
inversion). A child process also gets hard limits a thread cannot have:
RLIMIT_AS (:data:`MEMORY_LIMIT`), SCHED_IDLE with nice 19 and the idle I/O
class for the whole process, and a kill when a request runs past its time.

Protocol: one SOCK_SEQPACKET socketpair. The agent sends one packet per
request, a JSON object ``{"op": "hash"|"scan", "name": ...}`` carrying the
file's descriptor (SCM_RIGHTS); the child answers one JSON packet, either
``{"sha256": ...}``, ``{"outcome": {...}}`` or ``{"error": ...}``.
Run as ``python -m agent.checkpoint.child FD`` (FD: its end of the pair).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from typing import Any, BinaryIO

from agent.checkpoint import scanner

MEMORY_LIMIT = 1 << 30  # RLIMIT_AS of the scanner process
HASH_CHUNK = 1 << 20
MAX_PACKET = 1 << 20  # an answer: a verdict and at most a few thousand globals

# ioprio_set(2) has no libc wrapper; its number per architecture.
_IOPRIO_SET = {"x86_64": 251, "aarch64": 30}.get(platform.machine())
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_IDLE = 3 << 13  # IOPRIO_CLASS_IDLE, data 0


class ScanFailed(Exception):
    """The scanner process could not answer (timed out, died, or refused)."""


def sha256_of(f: BinaryIO) -> str:
    """Hex SHA-256 of the whole file, read in HASH_CHUNK pieces (constant memory)."""
    h = hashlib.sha256()
    f.seek(0)
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    while n := f.readinto(buf):  # type: ignore[attr-defined]
        h.update(view[:n])
    return h.hexdigest()


def lower_priority() -> None:
    """SCHED_IDLE, nice 19, idle I/O class for this whole process (best effort)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 19)
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError:
        pass  # the memory and time bounds still hold
    if _IOPRIO_SET is not None:
        ctypes.CDLL(None, use_errno=True).syscall(_IOPRIO_SET, _IOPRIO_WHO_PROCESS, 0,
                                                  _IOPRIO_IDLE)


def answer(request: dict[str, Any], f: BinaryIO, limits: scanner.Limits) -> dict[str, Any]:
    """One request's answer (runs in the child)."""
    try:
        if request["op"] == "hash":
            return {"sha256": sha256_of(f)}
        return {"outcome": asdict(scanner.scan(f, str(request.get("name", "")), limits))}
    except MemoryError:
        return {"error": f"scan needed more than the scanner's {MEMORY_LIMIT >> 20} MiB"}
    except OSError as e:
        return {"error": f"read failed: {e}"}


def serve(sock: socket.socket, limits: scanner.Limits) -> None:
    """The child's loop: one answer per request until the agent closes its end."""
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, MAX_PACKET, 1)
        if not msg:
            return
        if not fds:
            sock.send(json.dumps({"error": "request without a file"}).encode())
            continue
        with os.fdopen(fds[0], "rb") as f:
            reply = answer(json.loads(msg), f, limits)
        sock.send(json.dumps(reply).encode())


def main() -> None:
    lower_priority()
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    limits = scanner.Limits(**json.loads(sys.argv[2])) if len(sys.argv) > 2 else scanner.Limits()
    serve(socket.socket(fileno=int(sys.argv[1])), limits)


class ScannerProcess:
    """The agent's handle on the child: starts it, asks it, restarts it."""

    def __init__(self, limits: scanner.Limits = scanner.DEFAULT_LIMITS,
                 stop: threading.Event | None = None) -> None:
        self.limits = limits
        self.stop = stop or threading.Event()
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None

    def _start(self) -> socket.socket:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "agent.checkpoint.child", str(theirs.fileno()),
                 json.dumps(asdict(self.limits))],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        self._sock = mine
        return mine

    def ask(self, op: str, f: BinaryIO, name: str, timeout_s: float) -> dict[str, Any]:
        """The child's answer to ``op`` on ``f``; raises ScanFailed."""
        sock = self._sock or self._start()
        try:
            socket.send_fds(sock, [json.dumps({"op": op, "name": name}).encode()], [f.fileno()])
            reply = self._wait(sock, timeout_s)
        except OSError as e:
            self.close()
            raise ScanFailed(f"scanner process: {e}") from e
        if "error" in reply:
            raise ScanFailed(reply["error"])
        return reply

    def _wait(self, sock: socket.socket, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise ScanFailed(f"scan took longer than {timeout_s:.0f} s")
            ready, _, _ = select.select([sock], [], [], min(left, 0.5))
            if ready:
                data = sock.recv(MAX_PACKET)
                if not data:  # killed, e.g. over its memory limit in C code
                    self.close()
                    raise ScanFailed("scanner process died")
                return dict(json.loads(data))
        self.close()
        raise ScanFailed("agent stopping")

    def close(self) -> None:
        """Ends the child (it is restarted by the next request)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
            self.restarts += 1


if __name__ == "__main__":
    main()
