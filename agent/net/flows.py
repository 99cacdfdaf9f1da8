"""net.flow: turn the kernel's cumulative (process, peer) counters into deltas.

net.c adds bytes to net_flows entries and never resets them, so nothing is
lost between a read and a reset: each flush reads the cumulative counters
and reports the difference from what was reported before. A process that
has exited cannot add bytes any more: its entries are reported one last
time and then deleted, from the kernel map and from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class FlowKey:
    """The kernel map key, as plain values (raw address bytes, host-order port)."""

    tgid: int
    family: int
    protocol: int
    remote_port: int
    remote_addr: bytes


@dataclass(frozen=True)
class FlowDelta:
    key: FlowKey
    sent: int
    received: int


class FlowLedger:
    """What was reported so far per key; :meth:`deltas` computes the next report."""

    def __init__(self) -> None:
        self.reported: dict[FlowKey, tuple[int, int]] = {}

    def deltas(self, counters: Iterable[tuple[FlowKey, int, int]],
               dead: Callable[[int], bool]) -> tuple[list[FlowDelta], list[FlowKey]]:
        """(non-zero deltas, keys of exited processes to delete from the kernel).

        ``dead(tgid)`` must be decided *before* ``counters`` was read: only
        then is the read value final for an exited process.
        """
        out: list[FlowDelta] = []
        finished: list[FlowKey] = []
        seen: set[FlowKey] = set()
        for key, sent, received in counters:
            seen.add(key)
            last_sent, last_received = self.reported.get(key, (0, 0))
            # a counter below what was reported: the entry was deleted and
            # made anew (cannot happen while only we delete); start over
            if sent < last_sent or received < last_received:
                last_sent = last_received = 0
            if sent != last_sent or received != last_received:
                out.append(FlowDelta(key, sent - last_sent, received - last_received))
            if dead(key.tgid):
                finished.append(key)
                self.reported.pop(key, None)
            else:
                self.reported[key] = (sent, received)
        for gone in self.reported.keys() - seen:  # deleted by someone else: forget
            del self.reported[gone]
        return out, finished
