"""Capability checks for tests that need the real thing.

Locally a missing capability skips the test; with CI=true it fails it, so CI
cannot go green without actually running the root/eBPF tests.
"""

from __future__ import annotations

import os

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
    """Why eBPF tests cannot run here, or None: the agent's own probe, so the
    tests demand exactly what the agent needs to run its eBPF sensors."""
    from agent.sensors.loader import ebpf_unavailable_reason

    return ebpf_unavailable_reason()


def require_bpf() -> None:
    why = bpf_problem()
    require(why is None, why or "")
