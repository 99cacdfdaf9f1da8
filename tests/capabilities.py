"""Capability checks for tests that need the real thing.

Locally a missing capability skips the test; with CI=true it fails it, so CI
cannot go green without actually running the root/eBPF tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, why: str) -> None:
    if ok:
        return
    if in_ci():
        pytest.fail(f"CI=true and a required capability is missing: {why}")
    pytest.skip(why)


def bpf_problem() -> str | None:
    """Why eBPF tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc (python3-bpfcc) not importable"
    tracefs = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
    if not any(Path(p, "events").is_dir() for p in tracefs):
        return "tracefs not mounted"
    return None


def require_bpf() -> None:
    why = bpf_problem()
    require(why is None, why or "")
