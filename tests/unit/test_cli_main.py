"""`gpuaudit` subcommands run in-process (and the collector as a real process)."""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from collector import certs, cli, cli_tls, render
from collector.server import BackgroundCollector, CollectorConfig
from gpuaudit.jsonform import from_json
from gpuaudit.v1 import collector_pb2_grpc
from tests.unit.test_collector_support import (
    T0_NS,
    batch,
    gpu_open,
    health,
    process_exec,
    process_exit,
)

GPUAUDIT = Path(sys.executable).with_name("gpuaudit")

EVENTS = [
    gpu_open(1, t_s=1, pid=10, uid=1000, errno=6),
    process_exec(2, ["/usr/bin/python3", "train.py", "--lr", "0.1"], t_s=2, pid=11),
    process_exit(3, t_s=3, pid=11, sig=9),
    health(4, t_s=4, lost=(7, 8, 9)),
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return certs.init_pki(tmp_path_factory.mktemp("pki"), nodes=["n1"], readers=["ops"])


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    db = tmp_path_factory.mktemp("cli") / "events.db"
    config = CollectorConfig(listen="127.0.0.1:0", db=str(db), watchdog_period_s=0,
                             insecure=True)
    with BackgroundCollector(config) as running:
        with grpc.insecure_channel(running.address) as channel:
            stub = collector_pb2_grpc.CollectorStub(channel)
            list(stub.Ingest(iter([batch(1, *EVENTS)]), timeout=10))
            list(stub.Ingest(iter([batch(1, gpu_open(1, node="n2", boot_id="c", t_s=5))])))
        yield running.address


def run(capsys, *argv):
    """Run a command against the plaintext fixture collector (TLS has its own tests below)."""
    if argv[0] in ("events", "status") and "--collector" in argv and "--tls-dir" not in argv:
        argv = (*argv, "--insecure")
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_events_json_lines_round_trip(capsys, address):
    code, out, _ = run(capsys, "events", "--collector", address, "--json", "--node", "n1")
    assert code == 0
    lines = out.splitlines()
    assert [from_json(line) for line in lines] == EVENTS
    assert json.loads(lines[0])["seq"] == 1  # 64-bit ints are JSON numbers


def test_events_table(capsys, address):
    code, out, _ = run(capsys, "events", "--collector", address)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == list(render.EVENT_COLUMNS)
    assert len(rows) == 5
    assert re.search(r"n1\s+1\s+gpu\.open\s+10\s+alice\s+python3\s+/dev/nvidia0 errno=6 \(ENXIO\)",
                     rows[0])
    assert "python3 train.py --lr 0.1" in rows[1]
    assert "killed by SIGKILL (9)" in rows[2]
    assert "kernel_lost=7 queue_dropped=8 decode_errors=9" in rows[3]
    assert rows[4].split()[1:4] == ["n2", "1", "gpu.open"]


def test_events_filters(capsys, address):
    _, out, _ = run(capsys, "events", "--collector", address, "--json",
                    "--type", "process.exec,process.exit", "--pid", "11")
    assert [from_json(line).seq for line in out.splitlines()] == [2, 3]
    _, out, _ = run(capsys, "events", "--collector", address, "--json",
                    "--type", "gpu.open", "--type", "agent.health", "--uid", "1000")
    # agent.health has no process, so a uid filter excludes it.
    assert [(e.node, e.type) for e in map(from_json, out.splitlines())] == [
        ("n1", "gpu.open"), ("n2", "gpu.open"),
    ]  # fmt: skip
    _, out, _ = run(capsys, "events", "--collector", address, "--json", "--node", "n2")
    assert [from_json(line).node for line in out.splitlines()] == ["n2"]


def test_events_limit_newest_and_oldest(capsys, address):
    _, out, _ = run(capsys, "events", "--collector", address, "--json", "--limit", "2")
    assert [from_json(line).seq for line in out.splitlines()] == [4, 1]  # latest two
    _, out, _ = run(capsys, "events", "--collector", address, "--json", "--limit", "2",
                    "--oldest")
    assert [from_json(line).seq for line in out.splitlines()] == [1, 2]


def test_events_since(capsys, address):
    # The fixture events are from 2023; RFC3339 picks from the third on.
    _, out, _ = run(capsys, "events", "--collector", address, "--json",
                    "--since", "2023-11-14T22:13:23Z")
    assert [from_json(line).seq for line in out.splitlines()] == [3, 4, 1]
    _, out, _ = run(capsys, "events", "--collector", address, "--json", "--since", "10m")
    assert out == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--since", "10x"], "argument --since: '10x' is not a duration back from now"),
     (["--since", "2024-01-01T00:00:00"], "no UTC offset"),
     (["--limit", "0"], "argument --limit: '0' must be greater than 0"),
     (["--pid", "abc"], "argument --pid: invalid int value"),
     (["--collector", "nowhere"], "is not HOST:PORT")],
)  # fmt: skip
def test_events_usage_errors_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as caught:
        cli.main(["events", *argv])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_type_exits_2(capsys, address):
    code, _, err = run(capsys, "events", "--collector", address, "--type", "gpu.opne")
    assert code == 2
    assert "unknown event type 'gpu.opne' (known: agent." in err


def test_status_json(capsys, address):
    code, out, _ = run(capsys, "status", "--collector", address, "--json")
    assert code == 0
    assert len(out.splitlines()) == 1
    status = json.loads(out)
    assert status["events_stored"] == 5
    n1 = status["nodes"][0]
    assert (n1["node"], n1["boot_id"], n1["last_seq"], n1["events_stored"]) == ("n1", "b1", 4, 4)
    assert (n1["kernel_lost"], n1["queue_dropped"], n1["decode_errors"]) == (7, 8, 9)
    assert (n1["silent"], n1["mode"]) == (False, "ebpf")
    assert [s["name"] for s in n1["sensors"]] == ["gpu_open", "exec"]


def test_status_table(capsys, address):
    code, out, _ = run(capsys, "status", "--collector", address)
    assert code == 0
    header, n1, n2, totals = out.splitlines()
    assert header.split() == list(render.STATUS_COLUMNS)
    assert n1.split()[:3] == ["n1", "b1", render.timestamp(T0_NS + 4 * 10**9)]
    assert "exec:degraded(no tracepoint)" in n1
    assert n2.split()[:4] == ["n2", "c", "never", "-"]
    assert totals.startswith("2 node(s), 5 event(s) stored in sqlite:")


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", ["events", "status"])
def test_unreachable_collector_exits_1_with_a_message(capsys, command):
    address = f"127.0.0.1:{closed_port()}"
    code, out, err = run(capsys, command, "--collector", address)
    assert code == 1
    assert out == ""
    assert f"cannot reach the collector at {address}" in err
    assert "Traceback" not in err


def test_collector_env_var_is_the_default_address(monkeypatch):
    monkeypatch.setenv(cli.COLLECTOR_ENV, "collector.example:7000")
    assert cli.build_parser().parse_args(["status"]).collector == "collector.example:7000"


def test_agent_subcommand_flags():
    args = cli.build_parser().parse_args(
        ["agent", "--collector", "10.0.0.1:50051", "--node", "gpu01", "--mode", "procfs",
         "--heartbeat", "2.5", "--log-level", "debug"]
    )  # fmt: skip
    assert (args.collector, args.node, args.mode, args.heartbeat, args.log_level) == (
        "10.0.0.1:50051", "gpu01", "procfs", 2.5, "DEBUG",
    )  # fmt: skip
    assert args.run is cli.run_agent_command
    defaults = cli.build_parser().parse_args(["agent"])
    assert (defaults.node, defaults.mode, defaults.heartbeat) == (None, "auto", 5.0)


def test_collector_process_prints_its_port_and_stops_on_sigterm(tmp_path, pki):
    db = tmp_path / "new" / "events.db"
    proc = subprocess.Popen(
        [str(GPUAUDIT), "collector", "--listen", "127.0.0.1:0", "--db", str(db),
         "--tls-dir", str(pki.collector.cert.parent)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(r"gpuaudit collector listening on 127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        status = subprocess.run(
            [str(GPUAUDIT), "status", "--collector", f"127.0.0.1:{match[1]}", "--json",
             "--tls-dir", str(pki.readers["ops"].cert.parent)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["db"] == f"sqlite:{db}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
    assert db.exists()


def test_collector_startup_failure_exits_1_with_advice(capsys, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run(capsys, "collector", "--listen", f"127.0.0.1:{port}",
                           "--db", str(tmp_path / "e.db"), "--insecure")
    assert code == 1
    assert f"gpuaudit collector: cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err


# -- TLS flags


@pytest.fixture(scope="module")
def tls_address(tmp_path_factory, pki):
    """A collector that requires client certificates from ``pki``'s CA."""
    db = tmp_path_factory.mktemp("cli-tls") / "events.db"
    config = CollectorConfig(listen="127.0.0.1:0", db=str(db), watchdog_period_s=0,
                             tls=pki.collector, insecure=False)
    with BackgroundCollector(config) as running:
        with grpc.secure_channel(running.address,
                                 pki.nodes["n1"].channel_credentials()) as channel:
            stub = collector_pb2_grpc.CollectorStub(channel)
            list(stub.Ingest(iter([batch(1, gpu_open(1, t_s=1))]), timeout=10))
        yield running.address


@pytest.mark.parametrize("command", ["events", "status", "agent", "collector"])
def test_no_tls_and_no_insecure_exits_2_with_advice(capsys, monkeypatch, command):
    monkeypatch.delenv(cli_tls.TLS_DIR_ENV, raising=False)
    code, out, err = run(capsys, command)
    assert (code, out) == (2, "")
    assert f"gpuaudit {command}: error: no TLS certificate: pass --tls-dir DIR" in err
    assert "`gpuaudit certs init --out DIR`), or --insecure for plaintext" in err


def test_insecure_and_tls_flags_exclude_each_other(capsys, pki):
    code, _, err = run(capsys, "status", "--insecure", "--tls-dir", str(pki.root / "readers/ops"))
    assert code == 2
    assert "--insecure and --tls-* flags exclude each other" in err


def test_partial_own_pki_flags_name_what_is_missing(capsys, pki):
    ops = pki.readers["ops"]
    code, _, err = run(capsys, "status", "--tls-ca", str(ops.ca), "--tls-cert", str(ops.cert))
    assert code == 2
    assert "--tls-key missing: pass all three, or --tls-dir DIR" in err


def test_bad_tls_files_exit_2_naming_the_file(capsys, pki, tmp_path):
    expired = certs.issue_reader(
        certs.load_ca(pki.ca_dir), "old", tmp_path / "old",
        certs.Validity(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
                       datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC)))
    code, _, err = run(capsys, "events", "--tls-dir", str(tmp_path / "old"))
    assert code == 2
    assert f"{expired.cert}: certificate 'CN=old,OU=gpuaudit-reader,O=gpuaudit' expired on " \
        "2021-01-01 00:00 UTC" in err


def test_insecure_warns_only_off_loopback(capsys):
    parser = cli.build_parser()
    for address, warns in [("127.0.0.1:1", False), ("[::1]:1", False), ("localhost:1", False),
                           ("10.0.0.1:50051", True), ("0.0.0.0:50051", True),
                           ("collector.example:1", True)]:
        args = parser.parse_args(["status", "--insecure", "--collector", address])
        assert cli_tls.resolve_tls(args, args.collector) is None
        err = capsys.readouterr().err
        assert ("warning: --insecure on " + address in err) is warns, address


def test_tls_dir_from_env_and_own_pki_flags(monkeypatch, pki):
    parser = cli.build_parser()
    ops = pki.readers["ops"]
    monkeypatch.setenv(cli_tls.TLS_DIR_ENV, str(ops.cert.parent))
    args = parser.parse_args(["events"])
    assert cli_tls.resolve_tls(args, args.collector) == ops
    # An explicit --insecure beats the environment.
    args = parser.parse_args(["events", "--insecure"])
    assert cli_tls.resolve_tls(args, args.collector) is None
    monkeypatch.delenv(cli_tls.TLS_DIR_ENV)
    own = ["--tls-ca", str(ops.ca), "--tls-cert", str(ops.cert), "--tls-key", str(ops.key)]
    args = parser.parse_args(["status", *own])
    assert cli_tls.resolve_tls(args, args.collector) == ops


def test_agent_gets_tls_files_and_insecure(monkeypatch, pki):
    import agent.main

    seen = []
    monkeypatch.setattr(agent.main, "run_agent", lambda args: seen.append(args) or 0)
    node = pki.nodes["n1"]
    assert cli.main(["agent", "--node", "n1", "--tls-dir", str(node.cert.parent)]) == 0
    assert cli.main(["agent", "--insecure"]) == 0
    assert [(a.tls_files, a.insecure) for a in seen] == [(node, False), (None, True)]


def test_collector_rate_flags():
    parser = cli.build_parser()
    defaults = parser.parse_args(["collector"])
    assert (defaults.node_rate_limit, defaults.node_rate_burst) == (
        CollectorConfig().node_rate_limit, CollectorConfig().node_rate_burst)
    args = parser.parse_args(["collector", "--node-rate-limit", "0", "--node-rate-burst", "500"])
    assert (args.node_rate_limit, args.node_rate_burst) == (0, 500)
    with pytest.raises(SystemExit):
        parser.parse_args(["collector", "--node-rate-limit", "-1"])


def test_status_and_events_over_mutual_tls(capsys, pki, tls_address):
    ops = ["--tls-dir", str(pki.readers["ops"].cert.parent)]
    code, out, err = run(capsys, "status", "--collector", tls_address, "--json", *ops)
    assert code == 0, err
    assert [n["node"] for n in json.loads(out)["nodes"]] == ["n1"]
    code, out, err = run(capsys, "events", "--collector", tls_address, "--json", *ops)
    assert code == 0, err
    assert [from_json(line).node for line in out.splitlines()] == ["n1"]


def test_a_node_cert_cannot_query(capsys, pki, tls_address):
    code, out, err = run(capsys, "events", "--collector", tls_address,
                         "--tls-dir", str(pki.nodes["n1"].cert.parent))
    assert (code, out) == (1, "")
    assert f"gpuaudit events: the collector at {tls_address} refused this certificate:" in err


def test_a_cert_from_another_ca_fails_the_handshake_with_advice(capsys, tls_address, tmp_path):
    certs.init_pki(tmp_path, readers=["ops"])
    code, _, err = run(capsys, "status", "--collector", tls_address,
                       "--tls-dir", str(tmp_path / "readers/ops"))
    assert code == 1
    assert f"TLS handshake with the collector at {tls_address} failed" in err
    assert "from the same CA" in err
    assert "Traceback" not in err


def test_tls_client_to_a_plaintext_collector_says_so(capsys, pki, address):
    code, _, err = run(capsys, "status", "--collector", address,
                       "--tls-dir", str(pki.readers["ops"].cert.parent))
    assert code == 1
    assert f"the collector at {address} speaks plaintext (it runs --insecure), not TLS" in err


def test_agent_refuses_a_cluster_cidr_that_is_not_a_network(capsys) -> None:
    # a wrong cluster boundary would mislabel every connection: refused at start
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["agent", "--cluster-cidrs", "10.0.0.0/8,10.1.2.3/16"])
    assert exit_.value.code == 2
    assert "'10.1.2.3/16' is not a network" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["agent", "--cluster-cidrs", "10.0.0.0/8, fd00::/8"])
    assert args.cluster_cidrs == "10.0.0.0/8, fd00::/8"
