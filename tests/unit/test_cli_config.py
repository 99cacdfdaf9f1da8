"""Layered settings: defaults < config file < GPUAUDIT_* env < flags (collector.cli_config)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from collector import certs, cli, cli_config, cli_tls
from collector.cli_config import parse_layered, settings

EXAMPLE = Path(__file__).resolve().parents[2] / "systemd" / "gpuaudit.yaml.example"
GPUAUDIT = Path(sys.executable).with_name("gpuaudit")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return certs.init_pki(tmp_path_factory.mktemp("pki"), nodes=["n1"], readers=["ops"])


@pytest.fixture
def write(tmp_path):
    """Write a config file, return its path."""
    def write(text: str, name: str = "gpuaudit.yaml") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


def parse(*argv, env=None, default="/nonexistent/gpuaudit.yaml"):
    return parse_layered(cli.build_parser(), list(argv), environ=env or {},
                         default_config=default)


def usage_error(capsys, *argv, **kw) -> str:
    """Parse, expect exit 2, return the last stderr line (the message)."""
    with pytest.raises(SystemExit) as exc:
        parse(*argv, **kw)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def subcommand(name):
    return cli_config._subparser(cli.build_parser(), name)


# -- precedence


def test_collector_precedence_file_env_flag(write):
    path = write("collector:\n  listen: 0.0.0.0:1\n  db: /file.db\n  store: chunks\n"
                 "  node_rate_limit: 10\n")
    env = {"GPUAUDIT_DB": "/env.db", "GPUAUDIT_NODE_RATE_LIMIT": "20"}
    args = parse("collector", "--config", path, "--node-rate-limit", "30", env=env)
    assert (args.listen, args.db, args.store, args.node_rate_limit) == (
        "0.0.0.0:1", "/env.db", "chunks", 30.0)
    assert args.run is cli.run_collector and args.collector is None


def test_agent_precedence_file_env_flag(write):
    path = write("agent:\n  heartbeat: 2\n  spool_dir: /file/spool\n  fsync_interval: 0.5\n"
                 "  nvml_poll: 7\n  log_level: warning\n  collector: file.example:1\n")
    env = {"GPUAUDIT_SPOOL_DIR": "/env/spool", "GPUAUDIT_FSYNC_INTERVAL": "0",
           "GPUAUDIT_COLLECTOR": "env.example:2"}
    args = parse("agent", "--config", path, "--fsync-interval", "3", env=env)
    assert args.heartbeat == 2.0  # file
    assert args.spool_dir == "/env/spool"  # env over file
    assert args.fsync_interval_s == 3.0  # flag over env (dest differs from the key)
    assert args.nvml_poll_s == 7.0
    assert args.log_level == "WARNING"  # converted by the flag's own type
    assert args.collector == "env.example:2"  # $GPUAUDIT_COLLECTOR as before, over the file
    assert parse("agent", "--collector", "flag.example:3", env=env).collector == "flag.example:3"


def test_defaults_unchanged_without_file_or_env():
    plain = cli.build_parser()
    for argv in (["collector"], ["agent"]):
        layered = vars(parse(*argv))
        assert layered == {**vars(plain.parse_args(argv)), "config": None}


def test_default_file_is_read_when_present_and_missing_is_fine(write):
    path = write("agent:\n  node: gpu07\n")
    assert parse("agent", default=path).node == "gpu07"
    assert parse("agent").node is None  # /nonexistent: no error


def test_empty_file_and_empty_sections_are_fine(write):
    assert parse("agent", "--config", write("")).mode == "auto"
    assert parse("agent", "--config", write("agent:\ncollector:\n")).mode == "auto"


def test_empty_env_value_counts_as_unset():
    assert parse("agent", env={"GPUAUDIT_MODE": ""}).mode == "auto"


# -- errors


def test_missing_explicit_config_file(capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    msg = usage_error(capsys, "collector", "--config", str(missing))
    assert msg == f"gpuaudit collector: error: --config {missing}: no such file"


def test_unknown_key_names_key_file_and_valid_keys(capsys, write):
    path = write("agent:\n  spool_dri: /x\n")
    msg = usage_error(capsys, "agent", "--config", path)
    assert f"{path}: unknown key 'spool_dri' in section 'agent'" in msg
    assert "valid keys: checkpoint_max_bytes, cluster_cidrs, code_allow, collector," in msg


def test_the_other_section_is_checked_too(capsys, write):
    # A typo in agent: must not wait until the agent starts on this host.
    msg = usage_error(capsys, "collector", "--config", write("agent:\n  hartbeat: 1\n"))
    assert "unknown key 'hartbeat' in section 'agent'" in msg


def test_unknown_section_and_bad_shapes(capsys, write):
    msg = usage_error(capsys, "agent", "--config", write("agents:\n  node: a\n"))
    assert "unknown section 'agents' (valid sections: collector, agent)" in msg
    msg = usage_error(capsys, "agent", "--config", write("agent: [node]\n"))
    assert "section 'agent' must be a mapping of keys, got a list" in msg
    msg = usage_error(capsys, "agent", "--config", write("- agent\n"))
    assert "expected a mapping with sections collector and agent, got a list" in msg


def test_wrong_types_name_key_and_expected_type(capsys, write):
    cases = {
        "agent:\n  heartbeat: soon\n":
            "agent.heartbeat: expected a number greater than 0: 'soon' is not a number",
        "agent:\n  spool_max_bytes: -5\n":
            "agent.spool_max_bytes: expected an integer greater than 0",
        "agent:\n  mode: turbo\n":
            "agent.mode: expected one of auto, ebpf, procfs: 'turbo' is not a valid choice",
        "agent:\n  node: 7\n": "agent.node: expected a string: got a number (7); quote it",
        "agent:\n  node:\n": "agent.node: expected a string: got nothing (null)",
        "agent:\n  collector: [a]\n": "agent.collector: expected a HOST:PORT string: got a list",
        "agent:\n  collector: nohost\n": "agent.collector: expected a HOST:PORT string",
        "collector:\n  node_rate_burst: true\n":
            "collector.node_rate_burst: expected an integer, 0 or more: got a boolean",
    }
    for text, expected in cases.items():
        msg = usage_error(capsys, "agent", "--config", write(text))
        assert expected in msg, (text, msg)


def test_env_wrong_type_names_the_variable(capsys):
    msg = usage_error(capsys, "collector", env={"GPUAUDIT_NODE_RATE_LIMIT": "-1"})
    assert msg == ("gpuaudit collector: error: $GPUAUDIT_NODE_RATE_LIMIT: expected a number, "
                   "0 or more: '-1' must be 0 or more")


def test_key_given_twice_and_bad_yaml(capsys, write):
    msg = usage_error(capsys, "agent", "--config", write("agent:\n  node: a\n  node: b\n"))
    assert msg.endswith("gpuaudit.yaml:3:3: not valid YAML: key 'node' given twice")
    msg = usage_error(capsys, "agent", "--config", write("agent: {node: [\n"))
    assert "not valid YAML" in msg


def test_yaml_tags_are_not_constructed(capsys, write):
    # safe loading: a python/object tag is refused, not run.
    msg = usage_error(capsys, "agent", "--config",
                      write("agent: !!python/object/apply:os.system ['true']\n"))
    assert "not valid YAML" in msg


# -- booleans


@pytest.mark.parametrize("text, value", [("true", True), ("yes", True), ("1", True),
                                         ("false", False), ("no", False), ("0", False)])
def test_booleans_from_file_and_env(write, text, value):
    assert parse("agent", "--config", write(f"agent:\n  no_nvml: {text}\n")).no_nvml is value
    assert parse("agent", env={"GPUAUDIT_NO_NVML": text.upper()}).no_nvml is value


def test_env_false_overrides_file_true(write):
    path = write("agent:\n  no_nvml: true\n")
    assert parse("agent", "--config", path, env={"GPUAUDIT_NO_NVML": "no"}).no_nvml is False
    assert parse("agent", "--config", path, "--no-nvml").no_nvml is True


def test_bad_boolean(capsys, write):
    msg = usage_error(capsys, "agent", env={"GPUAUDIT_INSECURE": "maybe"})
    assert msg.endswith("$GPUAUDIT_INSECURE: expected a boolean (true/false, yes/no, 1/0): "
                        "'maybe' is not a boolean")
    msg = usage_error(capsys, "agent", "--config", write("agent:\n  no_nvml: 2\n"))
    assert "agent.no_nvml: expected a boolean" in msg


# -- TLS: the highest layer that speaks about it decides


def test_insecure_flag_beats_tls_dir_from_file_and_env(write, pki):
    path = write(f"agent:\n  tls_dir: {pki.nodes['n1'].cert.parent}\n")
    args = parse("agent", "--config", path, "--insecure")
    assert (args.insecure, args.tls_dir) == (True, None)
    assert cli_tls.resolve_tls(args, args.collector) is None
    args = parse("agent", "--insecure", env={"GPUAUDIT_TLS_DIR": "/env/pki"})
    assert (args.insecure, args.tls_dir) == (True, None)


def test_tls_flag_beats_insecure_from_file(write, pki):
    node = pki.nodes["n1"]
    args = parse("agent", "--config", write("agent:\n  insecure: true\n"),
                 "--tls-dir", str(node.cert.parent))
    assert args.insecure is False
    assert cli_tls.resolve_tls(args, args.collector) == node


def test_tls_dir_from_file_with_env_override(write, pki, tmp_path):
    node = pki.nodes["n1"]
    path = write("collector:\n  tls_dir: /file/pki\n")
    args = parse("collector", "--config", path, env={"GPUAUDIT_TLS_DIR": str(node.cert.parent)})
    assert cli_tls.resolve_tls(args, args.listen) == node
    # Env insecure beats file tls_dir; a flag's TLS files combine with the file's dir.
    args = parse("collector", "--config", path, env={"GPUAUDIT_INSECURE": "1"})
    assert (args.insecure, args.tls_dir) == (True, None)
    args = parse("collector", "--config", path, "--tls-ca", str(node.ca))
    assert (args.tls_dir, args.tls_ca) == ("/file/pki", node.ca)


def test_insecure_and_tls_in_one_layer_is_an_error(capsys, write):
    msg = usage_error(capsys, "agent", "--config",
                      write("agent:\n  insecure: true\n  tls_dir: /p\n"))
    assert "section agent: insecure and tls_dir exclude each other" in msg
    msg = usage_error(capsys, "agent", env={"GPUAUDIT_INSECURE": "yes",
                                            "GPUAUDIT_TLS_DIR": "/p"})
    assert "the environment (GPUAUDIT_*): insecure and tls_dir exclude each other" in msg


# -- the shipped example


def example_uncommented() -> str:
    """The example with every "#key: value" line turned on."""
    return re.sub(r"^(\s+)#(\w+):", r"\1\2:", EXAMPLE.read_text(), flags=re.M)


def test_example_mentions_every_flag_and_nothing_else():
    data = yaml.safe_load(example_uncommented())
    assert set(data) == set(cli_config.LAYERED_COMMANDS)
    for command in cli_config.LAYERED_COMMANDS:
        flags = set(settings(subcommand(command)))
        assert set(data[command]) == flags, command


def test_example_parses_as_shipped_and_uncommented(tmp_path):
    assert vars(parse("agent", "--config", str(EXAMPLE)))["mode"] == "auto"
    on = tmp_path / "on.yaml"
    on.write_text(example_uncommented())
    for command in cli_config.LAYERED_COMMANDS:
        parse(command, "--config", str(on))  # every value converts


def test_example_values_are_the_defaults(tmp_path):
    """Where a flag (or AgentConfig) has a fixed default, the example shows that value."""
    import agent.main

    data = yaml.safe_load(example_uncommented())
    agent_defaults = {f.name: f.default for f in dataclasses.fields(agent.main.AgentConfig)}
    for command in cli_config.LAYERED_COMMANDS:
        plain = cli.build_parser().parse_args([command])
        for key, setting in settings(subcommand(command)).items():
            default = getattr(plain, setting.dest)
            if default is None:
                default = agent_defaults.get(setting.dest)
            if default is None or default is dataclasses.MISSING:
                continue  # host name, spool dir by uid, optional files: no fixed value
            assert setting.from_yaml(data[command][key]) == default, (command, key)


# -- through main() and a real process


def test_main_hands_file_settings_to_the_agent(monkeypatch, write):
    import agent.main

    seen = []
    monkeypatch.setattr(agent.main, "run_agent", lambda args: seen.append(args) or 0)
    monkeypatch.setenv("GPUAUDIT_HEARTBEAT", "9")
    path = write("agent:\n  insecure: yes\n  node: gpu42\n  heartbeat: 1\n")
    assert cli.main(["agent", "--config", path]) == 0
    cfg = agent.main.config_from_args(seen[0])
    assert (cfg.node, cfg.heartbeat_s, cfg.insecure, cfg.tls) == ("gpu42", 9, True, None)


def test_collector_process_takes_its_settings_from_file_and_env(tmp_path, pki):
    db = tmp_path / "from-file.db"
    config = tmp_path / "gpuaudit.yaml"
    config.write_text(f"collector:\n  listen: 127.0.0.1:0\n  db: {db}\n"
                      f"  tls_dir: {pki.collector.cert.parent}\n")
    proc = subprocess.Popen(
        [str(GPUAUDIT), "collector", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "GPUAUDIT_STORE": "chunks"},
    )
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(r"gpuaudit collector listening on 127\.0\.0\.1:(\d+)\n", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        status = subprocess.run(
            [str(GPUAUDIT), "status", "--collector", f"127.0.0.1:{match[1]}", "--json",
             "--tls-dir", str(pki.readers["ops"].cert.parent)],
            capture_output=True, text=True, timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert str(db) in json.loads(status.stdout)["db"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_process_with_a_bad_file_exits_2(tmp_path):
    config = tmp_path / "gpuaudit.yaml"
    config.write_text("collector:\n  listn: 127.0.0.1:0\n")
    done = subprocess.run([str(GPUAUDIT), "collector", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"{config}: unknown key 'listn' in section 'collector'" in done.stderr
    assert "Traceback" not in done.stderr
