"""The shipped systemd units: valid for systemd, hardened, and in step with the CLI.

``systemd-analyze verify`` is the authority on syntax (it warns and carries on,
so the tests read its stderr, not just its exit code). The hardening checks
parse the unit files: they pin the decisions documented in the units' comments
so that a "harmless" edit cannot quietly widen the agent's privileges or break
its eBPF sensors.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from collector import certs
from collector.cli import build_parser
from collector.cli_tls import TLS_DIR_ENV, resolve_tls
from tests.capabilities import require

UNITS = Path(__file__).resolve().parents[2] / "systemd"
AGENT = "gpuaudit-agent.service"
COLLECTOR = "gpuaudit-collector.service"
INSTALLED_BIN = "/opt/gpuaudit/.venv/bin/gpuaudit"
NODE_PKI = "/etc/gpuaudit/pki/node"
COLLECTOR_PKI = "/etc/gpuaudit/pki/collector"
TLS_FILES = ("ca.crt", "tls.crt", "tls.key")  # what --tls-dir looks for

AGENT_CAPS = {
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_SYS_ADMIN",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_PTRACE",
    "CAP_DAC_READ_SEARCH",
}
# Each of these breaks a sensor (tracefs, kernel headers, /dev/nvidia*, LLVM);
# the agent unit explains why in its "Deliberately NOT set" block.
AGENT_MUST_NOT_SET = (
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "PrivateDevices",
    "ProtectClock",
    "DevicePolicy",
    "DeviceAllow",
    "MemoryDenyWriteExecute",
    "ProtectProc",
    "ProcSubset",
    "PrivateUsers",
    "PrivateNetwork",
    "SystemCallArchitectures",
)
COLLECTOR_YES = (
    "DynamicUser",
    "NoNewPrivileges",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateUsers",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "RestrictNamespaces",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "LockPersonality",
    "MemoryDenyWriteExecute",
)

Unit = dict[str, dict[str, list[str]]]


@cache
def parse_unit(name: str) -> Unit:
    """section -> key -> values in file order (repeated keys keep every value)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for lineno, raw in enumerate((UNITS / name).read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"{name}:{lineno}: keep settings on one line"
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
            continue
        assert section is not None and "=" in line, f"{name}:{lineno}: not KEY=VALUE: {raw!r}"
        key, value = line.split("=", 1)
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def service(name: str) -> dict[str, list[str]]:
    return parse_unit(name)["Service"]


def one(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key, [])
    assert len(values) == 1, f"{key}: expected exactly one value, got {values}"
    return values[0]


def stand_in_binary() -> str:
    """An existing executable to put where the installed CLI will be."""
    venv_cli = Path(sys.executable).parent / "gpuaudit"
    return str(venv_cli) if venv_cli.exists() else "/bin/true"


def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    require(exe is not None, "systemd-analyze not installed")
    assert exe is not None
    return exe


def verify(unit_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(unit_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def copy_for_verify(name: str, tmp_path: Path, extra: str = "") -> Path:
    # verify insists that ExecStart= exists and is executable: point it at a
    # real one. Everything else is checked as shipped.
    text = (UNITS / name).read_text()
    assert INSTALLED_BIN in text
    text = text.replace(INSTALLED_BIN, stand_in_binary())
    if extra:
        text = text.replace("[Service]\n", f"[Service]\n{extra}\n", 1)
    path = tmp_path / name
    path.write_text(text)
    return path


def complaints_about(name: str, stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if name in line]


# -- systemd's own checks -----------------------------------------------------


@pytest.mark.parametrize("name", [AGENT, COLLECTOR])
def test_systemd_analyze_verify_is_clean(name: str, tmp_path: Path) -> None:
    r = verify(copy_for_verify(name, tmp_path))
    report = f"systemd-analyze verify {name}: rc={r.returncode}\n{r.stderr}"
    assert r.returncode == 0, report
    assert complaints_about(name, r.stderr) == [], report


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    # Guards the test above against passing vacuously (verify warns on stderr
    # and still exits 0 for unknown keys and bad values).
    r = verify(copy_for_verify(AGENT, tmp_path, "NoSuchKey=1\nProtectSystem=banana"))
    found = complaints_about(AGENT, r.stderr)
    assert any("NoSuchKey" in line for line in found), r.stderr
    assert any("protect system" in line.lower() for line in found), r.stderr


def syscalls_in(group_or_call: str, seen: set[str] | None = None) -> set[str]:
    """System calls named by a SystemCallFilter= token, groups expanded."""
    if not group_or_call.startswith("@"):
        return {group_or_call}
    seen = set() if seen is None else seen
    if group_or_call in seen:
        return set()
    seen.add(group_or_call)
    out = subprocess.run(
        [systemd_analyze(), "syscall-filter", "--no-pager", group_or_call],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:  # line 0 names the group itself
        token = line.strip()
        if token and not token.startswith("#"):
            calls |= syscalls_in(token, seen)
    return calls


def test_agent_syscall_filter_keeps_ebpf_and_denies_admin_calls() -> None:
    denied: set[str] = set()
    for value in service(AGENT)["SystemCallFilter"]:
        assert value.startswith("~"), f"agent filter must be a deny list: {value}"
        for token in value[1:].split():
            denied |= syscalls_in(token)
    needed = {"bpf", "perf_event_open", "ioctl", "mmap", "readlinkat", "getdents64", "connect"}
    assert not needed & denied, f"denied but needed by bcc/NVML/gRPC: {needed & denied}"
    # what CAP_SYS_ADMIN / CAP_SYS_PTRACE would otherwise allow
    must_deny = {"mount", "umount2", "init_module", "reboot", "swapon", "settimeofday", "ptrace"}
    assert must_deny <= denied, f"not denied: {must_deny - denied}"


# -- the agent ------------------------------------------------------------------


def test_agent_holds_exactly_the_ebpf_capabilities() -> None:
    s = service(AGENT)
    assert "User" not in s and "DynamicUser" not in s  # root: bcc insists on euid 0
    assert set(one(s, "CapabilityBoundingSet").split()) == AGENT_CAPS
    assert set(one(s, "AmbientCapabilities").split()) == AGENT_CAPS
    assert one(s, "NoNewPrivileges") == "yes"


def test_agent_sandbox() -> None:
    s = service(AGENT)
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "read-only",
        "StateDirectory": "gpuaudit-agent",
        "PrivateTmp": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "LimitMEMLOCK": "infinity",
        "Restart": "always",
        "RestartSec": "2",
    }
    assert {k: one(s, k) for k in expected} == expected
    families = set(one(s, "RestrictAddressFamilies").split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert int(one(s, "TimeoutStopSec")) > 5  # longer than the agent's 5 s drain
    assert 0 < int(one(s, "Nice")) < 19
    assert 0 < int(one(s, "CPUWeight")) < 100  # below the default, not idle
    assert one(parse_unit(AGENT)["Unit"], "StartLimitIntervalSec") == "0"  # never gives up


@pytest.mark.parametrize("key", AGENT_MUST_NOT_SET)
def test_agent_omits_protections_that_break_sensors(key: str) -> None:
    assert key not in service(AGENT), f"{key} breaks eBPF/NVML access (see the unit's comments)"


def test_agent_mounts_tracefs_without_host_setup() -> None:
    s = service(AGENT)
    pre = one(s, "ExecStartPre")
    # "+": outside the sandbox (it mounts); "-": a failure must not stop the agent
    assert pre.startswith("-+/bin/sh -c "), pre
    assert "mount -t tracefs nodev /sys/kernel/tracing" in pre
    assert "mountpoint -q /sys/kernel/tracing" in pre
    commands = [v for k in ("ExecStartPre", "ExecStart", "ExecStartPost") for v in s.get(k, [])]
    assert not any("host-setup" in c for c in commands)  # it may apt-get: install time only


# -- the collector ----------------------------------------------------------------


def test_collector_is_unprivileged_and_fully_sandboxed() -> None:
    s = service(COLLECTOR)
    assert s["CapabilityBoundingSet"] == [""]
    assert s.get("AmbientCapabilities", [""]) == [""]
    assert "User" not in s
    for key in COLLECTOR_YES:
        assert one(s, key) == "yes", key
    assert one(s, "ProtectSystem") == "strict"
    assert one(s, "ProtectHome") == "yes"
    assert one(s, "StateDirectory") == "gpuaudit"
    assert one(s, "UMask") == "0077"
    assert one(s, "Restart") == "on-failure"
    assert set(one(s, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert s["SystemCallFilter"][0] == "@system-service"
    assert all(v.startswith("~") for v in s["SystemCallFilter"][1:])


# -- unit <-> CLI contract ------------------------------------------------------------


def specifiers(name: str, **override: str) -> dict[str, str]:
    """What systemd's system manager puts for the specifiers the units use.

    systemd.unit(5): %H host name, %S state directory root (/var/lib), %d the
    credentials directory ($CREDENTIALS_DIRECTORY, /run/credentials/UNIT).
    """
    return {"H": "node-7", "S": "/var/lib", "d": f"/run/credentials/{name}", "%": "%"} | override


def expand(text: str, spec: dict[str, str]) -> str:
    """Replace %X specifiers; one the test does not know fails rather than stays."""

    def one_specifier(m: re.Match[str]) -> str:
        assert m.group(1) in spec, f"specifier %{m.group(1)} in {text!r}: teach specifiers()"
        return spec[m.group(1)]

    return re.sub(r"%(.)", one_specifier, text)


def defaults(name: str, **override: str) -> dict[str, str]:
    """Environment= defaults, checking they come before EnvironmentFile=."""
    text = (UNITS / name).read_text()
    env_file = text.index("\nEnvironmentFile=-/etc/default/")
    env: dict[str, str] = {}
    for m in re.finditer(r"^Environment=(\w+)=(.*)$", text, flags=re.M):
        assert m.start() < env_file, f"{m.group(0)} comes after EnvironmentFile= and wins"
        env[m.group(1)] = expand(m.group(2), specifiers(name, **override))
    return env


def exec_start_argv(name: str, **override: str) -> list[str]:
    """ExecStart= as systemd runs it with the default environment.

    Specifiers are expanded first, then $VAR/${VAR}, as systemd does; keyword
    arguments stand in for specifiers (e.g. d= a test's credentials directory).
    """
    env = defaults(name, **override)
    words = []
    for word in shlex.split(one(service(name), "ExecStart")):
        word = expand(word, specifiers(name, **override))
        if m := re.fullmatch(r"\$(\w+)", word):  # $VAR: split at spaces, may vanish
            assert m.group(1) in env, f"{word} has no Environment= default"
            words += shlex.split(env[m.group(1)])
            continue
        for var in re.findall(r"\$\{(\w+)\}", word):
            assert var in env, f"${{{var}}} has no Environment= default"
            word = word.replace(f"${{{var}}}", env[var])
        words.append(word)
    assert words[0] == INSTALLED_BIN
    return words[1:]


def parsed(name: str, **override: str) -> argparse.Namespace:
    return build_parser().parse_args(exec_start_argv(name, **override))


def test_agent_exec_start_parses_with_the_cli() -> None:
    args = parsed(AGENT)
    assert args.command == "agent"
    assert args.collector == "127.0.0.1:50051"
    assert args.node == "node-7"
    assert args.spool_dir == "/var/lib/gpuaudit-agent/spool"


def test_agent_spool_is_inside_its_state_directory() -> None:
    # Under ProtectSystem=strict the state directory is the only writable path;
    # the CLI's own default for root (/var/lib/gpuaudit/spool) is read-only there.
    assert "%S/gpuaudit-agent/spool" in one(service(AGENT), "ExecStart")
    state = Path(specifiers(AGENT)["S"]) / one(service(AGENT), "StateDirectory")
    spool = Path(parsed(AGENT).spool_dir)
    assert spool.is_relative_to(state) and spool != state, (spool, state)
    assert "ReadWritePaths" not in service(AGENT)


def test_collector_exec_start_parses_with_the_cli() -> None:
    args = parsed(COLLECTOR)
    assert args.command == "collector"
    assert args.listen == "127.0.0.1:50051"
    assert args.db == "/var/lib/gpuaudit/events.db"
    assert args.db.startswith(f"/var/lib/{one(service(COLLECTOR), 'StateDirectory')}/")
    assert args.tls_dir == "/run/credentials/gpuaudit-collector.service"


def credentials(name: str) -> dict[str, str]:
    """LoadCredential=ID:PATH lines as {ID: PATH}, refusing repeated IDs."""
    loaded: dict[str, str] = {}
    for value in service(name).get("LoadCredential", []):
        cred_id, sep, path = value.partition(":")
        assert sep and cred_id not in loaded, f"LoadCredential={value}"
        loaded[cred_id] = path
    return loaded


def test_collector_loads_its_tls_files_as_credentials() -> None:
    # DynamicUser= cannot open a root-only 0600 key; PID 1 reads it for us.
    assert credentials(COLLECTOR) == {f: f"{COLLECTOR_PKI}/{f}" for f in TLS_FILES}
    assert " --tls-dir %d " in one(service(COLLECTOR), "ExecStart")


@pytest.mark.parametrize("name", [AGENT, COLLECTOR])
def test_units_never_pass_insecure(name: str) -> None:
    settings = [f"{k}={v}" for k, values in service(name).items() for v in values]
    assert not [s for s in settings if "--insecure" in s]  # not in ExecStart= nor any default
    assert not parsed(name).insecure


def test_agent_finds_its_certificate_through_the_environment() -> None:
    # Not on the command line: GPUAUDIT_AGENT_ARGS may still say --insecure or
    # give own-PKI files, which an explicit --tls-dir would clash with.
    assert defaults(AGENT)[TLS_DIR_ENV] == NODE_PKI
    assert parsed(AGENT).tls_dir is None


@pytest.fixture(scope="module")
def installed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root file system with certificates copied as systemd/README.md says:
    certs init on an admin host, collector/ and nodes/<node>/ copied over."""
    pki = certs.init_pki(tmp_path_factory.mktemp("admin") / "pki", nodes=["node-7"])
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(pki.collector.ca.parent, root / COLLECTOR_PKI.lstrip("/"))
    shutil.copytree(certs.node_dir(pki.root, "node-7"), root / NODE_PKI.lstrip("/"))
    return root


def test_agent_unit_environment_gives_mutual_tls(
    installed_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls_dir = installed_root / defaults(AGENT)[TLS_DIR_ENV].lstrip("/")
    monkeypatch.setenv(TLS_DIR_ENV, str(tls_dir))  # systemd's Environment=, re-rooted
    args = parsed(AGENT)
    files = resolve_tls(args, args.collector)  # checks the files: chain, key, validity
    assert files is not None
    assert (files.ca, files.cert, files.key) == tuple(tls_dir / f for f in TLS_FILES)


def test_collector_credentials_give_mutual_tls(
    installed_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Do what PID 1 does at start: copy each LoadCredential= source to
    # $CREDENTIALS_DIRECTORY/ID, then run ExecStart= with %d pointing there.
    monkeypatch.delenv(TLS_DIR_ENV, raising=False)
    creds = tmp_path / "credentials"
    creds.mkdir()
    for cred_id, source in credentials(COLLECTOR).items():
        shutil.copyfile(installed_root / source.lstrip("/"), creds / cred_id)
    args = parsed(COLLECTOR, d=str(creds))
    files = resolve_tls(args, args.listen)
    assert files is not None
    assert (files.ca, files.cert, files.key) == tuple(creds / f for f in TLS_FILES)


@pytest.mark.parametrize("name", [AGENT, COLLECTOR])
def test_units_have_the_three_sections(name: str) -> None:
    assert set(parse_unit(name)) == {"Unit", "Service", "Install"}
    assert one(parse_unit(name)["Install"], "WantedBy") == "multi-user.target"
