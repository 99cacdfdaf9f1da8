"""The findings follower in a process of its own, so the rules never slow ingest.

In the collector's process the follower competes with ingest for one Python
GIL: measured on the 2-core VM (bench/ingest, 20 agents), ingest fell from
21-28k to 9-13k events/s with the follower as a thread. As a child process it
runs beside ingest on another core. It opens the same SQLite file (WAL: its
reads never block the collector's writer; its small commits wait for the write
lock like a second writer would), evaluates, commits findings with its
position, and sends each finding (the JSON dict) and its position back over a
pipe; a relay thread here calls the ``on_finding`` hooks (the exports).

The child stops when told, or when the pipe closes (the collector died); if it
dies, the relay restarts it after a pause, and it resumes from its saved
position, so nothing stored is skipped.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from collector.findings.follower import CURSOR, FindingHook, FindingsFollower
from collector.storage.base import Storage

log = logging.getLogger(__name__)

CHILD_NICE = 10
"""Niceness added to the findings process (see child_main)."""

RESTART_PAUSE_S = 5.0
"""Wait before restarting a child that died (a crash loop must not spin)."""


class FollowerProcess:
    """Runs :class:`~collector.findings.follower.FindingsFollower` in a child process."""

    def __init__(self, storage: Storage, db: str, store: str, rules_dir: str | None,
                 poll_s: float = 0.25, log_level: int = logging.INFO, dsn: str = "") -> None:
        """Follow database ``db`` (layout ``store``), or PostgreSQL ``dsn`` when given,
        with the rules of ``rules_dir``.

        ``storage`` is the collector's own store of the same file, read for
        :meth:`caught_up`.
        """
        self.on_finding: list[FindingHook] = []
        self.position = storage.cursor(CURSOR)
        self.restarts = 0
        self._storage = storage
        self._args = (db, store, rules_dir, poll_s, log_level, dsn)
        self._ctx = mp.get_context("spawn")  # never fork a process running gRPC threads
        self._stopping = threading.Event()
        self._conn: Connection | None = None
        self._proc: Any = None
        self._relay: threading.Thread | None = None

    def start(self) -> None:
        """Start the child and the relay thread."""
        self._spawn()
        self._relay = threading.Thread(target=self._relay_loop, name="findings-relay",
                                       daemon=True)
        self._relay.start()

    def _spawn(self) -> None:
        mine, theirs = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=child_main, args=(theirs, *self._args),
                                       name="gpuaudit-findings", daemon=True)
        self._proc.start()
        theirs.close()
        self._conn = mine

    def caught_up(self) -> bool:
        """Whether the child has evaluated everything stored so far."""
        position = self.position
        _, after = self._storage.events_after(position, 1, frozenset())
        return after == position

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the child to stop (it saves its position), wait, and stop relaying."""
        self._stopping.set()
        if self._conn is not None:
            with contextlib.suppress(OSError):  # already gone
                self._conn.send(("stop", None))
        if self._proc is not None:
            self._proc.join(timeout)
            if self._proc.is_alive():
                log.error("findings process did not stop within %.0fs; killing it", timeout)
                self._proc.kill()
                self._proc.join()
        if self._relay is not None:
            self._relay.join(timeout)

    def _relay_loop(self) -> None:
        while True:
            self._relay_until_eof()
            if self._stopping.is_set():
                return
            code = self._proc.exitcode if self._proc is not None else None
            log.error("findings process ended (exit code %s); restarting in %.0fs",
                      code, RESTART_PAUSE_S)
            if self._stopping.wait(RESTART_PAUSE_S):
                return
            self.restarts += 1
            self._spawn()

    def _relay_until_eof(self) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            try:
                kind, value = conn.recv()
            except (EOFError, OSError):
                conn.close()
                return
            if kind == "position":
                self.position = value
            elif kind == "finding":
                self._call_hooks(value)

    def _call_hooks(self, data: dict[str, Any]) -> None:
        for hook in list(self.on_finding):
            try:
                hook(data)
            except Exception:  # a sink's bug must not stop the relay
                log.exception("finding hook %r failed (finding %s)", hook, data.get("id"))


def child_main(conn: Connection, db: str, store: str, rules_dir: str | None, poll_s: float,
               log_level: int, dsn: str = "") -> None:
    """The child: follow the store until told to stop or the parent is gone."""
    # Lower CPU priority: where cores are short, ingest (which agents wait on
    # for acks) goes first and the follower takes what is left, catching up later.
    os.nice(CHILD_NICE)
    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)s %(name)s[findings]: %(message)s")
    # Imported here: the spawned child starts from a bare interpreter.
    from collector.findings.engine import Engine
    from collector.findings.rules import load_rules

    storage = _open(db, store, dsn)
    follower = FindingsFollower(storage, Engine(load_rules(rules_dir)))
    send_lock = threading.Lock()

    def send(kind: str, value: Any) -> None:
        with send_lock:
            conn.send((kind, value))

    follower.on_finding.append(lambda data: send("finding", data))
    stop = threading.Event()
    threading.Thread(target=_watch_parent, args=(conn, stop), daemon=True).start()
    try:
        _wait_to_lead(storage, stop)
        _follow(follower, stop, poll_s, lambda pos: send("position", pos))
    finally:
        try:
            follower.save_position()
        finally:
            storage.close()


def _open(db: str, store: str, dsn: str) -> Any:
    from collector.server import STORES
    from collector.storage.postgres import PostgresStorage

    return PostgresStorage(dsn) if dsn else STORES[store](db)


def _wait_to_lead(storage: Any, stop: threading.Event, every_s: float = 5.0) -> None:
    """On a database shared by several collectors, one follower runs; the others wait.

    Two followers would count every occurrence twice. The lock goes with the
    leader's connection, so a standby takes over when the leader's collector stops.
    """
    try_lead = getattr(storage, "try_lead", None)
    if try_lead is None:
        return  # SQLite: one collector per file
    while not stop.is_set() and not try_lead():
        stop.wait(every_s)


def _watch_parent(conn: Connection, stop: threading.Event) -> None:
    """Sets ``stop`` on a stop message or when the parent's end of the pipe closes."""
    with contextlib.suppress(EOFError, OSError):
        while conn.recv()[0] != "stop":
            pass
    stop.set()


def _follow(follower: FindingsFollower, stop: threading.Event, poll_s: float,
            report: Callable[[int], None]) -> None:
    reported = -1
    while not stop.is_set():
        try:
            busy = follower.moves()
        except Exception:
            # Nothing of a failed step was committed: the same events are read again.
            log.exception("findings: step failed; retrying")
            busy = False
            time.sleep(1.0)
        if follower.position != reported:
            reported = follower.position
            report(reported)
        if not busy:
            stop.wait(poll_s)
