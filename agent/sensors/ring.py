"""The ring-buffer poll thread: copy each record into the queue, nothing more."""

from __future__ import annotations

import ctypes as ct
import threading
from typing import Any

from agent.queue import DroppingQueue


class RingReader:
    """Reads the shared `events` ring buffer of a loaded bcc program."""

    def __init__(self, bpf: Any, out: DroppingQueue[bytes | Any]) -> None:
        self._bpf = bpf
        self._out = out
        bpf["events"].open_ring_buffer(self._on_record)

    def _on_record(self, _ctx: Any, data: Any, size: int) -> None:
        # The record memory belongs to the kernel ring only during this call.
        self._out.offer(ct.string_at(data, size))

    def run(self, stop: threading.Event, poll_ms: int = 100) -> None:
        while not stop.is_set():
            self._bpf.ring_buffer_poll(poll_ms)
        self._bpf.ring_buffer_consume()  # what is already in the ring

    def kernel_lost(self) -> int:
        """Records the kernel could not reserve (ring full), summed over CPUs."""
        values = self._bpf["lost"][ct.c_uint32(0)]
        return int(sum(values))

    def mark_gpu_holders(self, pids: set[int]) -> None:
        """Tell the kernel side which processes already held a GPU at start."""
        table = self._bpf["gpu_holders"]
        for pid in pids:
            table[ct.c_uint32(pid)] = ct.c_uint8(1)
