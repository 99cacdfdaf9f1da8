"""Shared helpers for the benchmarks: build C helpers, start collector/agent."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.integration.harness import Agent, Collector, wait_node_ready  # noqa: E402


def build(c_file: str, *cflags: str) -> Path:
    out = HERE / "out" / Path(c_file).stem
    out.parent.mkdir(exist_ok=True)
    subprocess.run(["gcc", "-O2", "-o", str(out), str(HERE / c_file), *cflags], check=True)
    return out


def median_ratio(pairs: list[tuple[float, float]]) -> float:
    """Median of per-round ratios (treated / baseline): robust to a noisy round."""
    return statistics.median(t / b for b, t in pairs)


class RunningAgent:
    """A collector on a temp SQLite file plus an eBPF agent, for the duration;
    ``agent_args`` are extra `gpuaudit agent` flags."""

    def __init__(self, *agent_args: str) -> None:
        self.agent_args = agent_args

    def __enter__(self) -> RunningAgent:
        self.tmp = tempfile.TemporaryDirectory()
        self.collector = Collector(Path(self.tmp.name) / "bench.db")
        self.agent = Agent(self.collector.address, "bench", Path(self.tmp.name) / "agent.log",
                           *self.agent_args)
        wait_node_ready(self.collector, "bench", "ebpf", timeout=120)
        time.sleep(1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.agent.stop()
        self.collector.stop()
        self.tmp.cleanup()
