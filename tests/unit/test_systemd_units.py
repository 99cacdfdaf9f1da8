"""The shipped units pass `systemd-analyze verify` and keep their hardening."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.capabilities import require

UNITS = Path(__file__).resolve().parents[2] / "systemd"
GPUAUDIT = str(Path(sys.executable).parent / "gpuaudit")
AGENT_CAPS = {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE",
              "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}


def _service(name: str) -> dict[str, list[str]]:
    """[Service] settings; repeated keys keep every value."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("unit", ["gpuaudit-agent.service", "gpuaudit-collector.service"])
def test_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze not installed")
    # verify checks that ExecStart exists: point it at this checkout's CLI
    text = (UNITS / unit).read_text().replace("/opt/gpuaudit/.venv/bin/gpuaudit", GPUAUDIT)
    (tmp_path / unit).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert unit not in r.stderr, r.stderr  # no warnings about our unit


def test_agent_has_exactly_the_ebpf_capabilities() -> None:
    s = _service("gpuaudit-agent.service")
    assert set(s["CapabilityBoundingSet"][0].split()) == AGENT_CAPS
    assert set(s["AmbientCapabilities"][0].split()) == AGENT_CAPS
    assert s["NoNewPrivileges"] == ["yes"]
    assert s["Restart"] == ["always"]
    assert "StateDirectory" in s
    for breaks_ebpf in ("ProtectKernelTunables", "ProtectKernelModules", "PrivateDevices"):
        assert breaks_ebpf not in s


def test_collector_is_unprivileged() -> None:
    s = _service("gpuaudit-collector.service")
    assert s["DynamicUser"] == ["yes"]
    assert s["CapabilityBoundingSet"] == [""]
    assert s["NoNewPrivileges"] == ["yes"]
    assert s["StateDirectory"] == ["gpuaudit"]
    assert s["ProtectSystem"] == ["strict"]


def test_units_parse_as_ini() -> None:
    for unit in UNITS.glob("*.service"):
        cp = configparser.ConfigParser(strict=False, interpolation=None)
        cp.read_string((unit).read_text())
        assert {"Unit", "Service", "Install"} <= set(cp.sections())
