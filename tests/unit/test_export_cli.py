"""add_export_flags / hub_from_args: the sinks the flags describe, and clear errors."""

from __future__ import annotations

import argparse

import pytest

from collector.cli_export import ExportConfigError, add_export_flags, hub_from_args
from tests.unit.test_export_ocsf import sample_event, sample_finding


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_export_flags(p)
    return p.parse_args(list(argv))


def test_no_sink_no_hub():
    assert hub_from_args(parse()) is None


def test_every_sink(tmp_path):
    token = tmp_path / "token"
    token.write_text("tok\n")
    secret = tmp_path / "secret"
    secret.write_bytes(b"k")
    hub = hub_from_args(parse(
        "--ocsf-file", str(tmp_path / "o.jsonl"), "--syslog", "siem.example:6514",
        "--hec-url", "https://splunk:8088", "--hec-token-file", str(token),
        "--webhook-url", "https://hooks.example/x", "--webhook-secret-file", str(secret),
        "--webhook-format", "ocsf", "--export-queue", "5", "--export-kinds", "findings"))
    assert hub is not None
    assert hub.sink_names == ["ocsf_file", "syslog", "hec", "webhook"]
    sinks = {w.sink.name: w.sink for w in hub._workers}
    assert sinks["hec"].poster.url == "https://splunk:8088/services/collector/event"
    assert sinks["hec"].token == "tok" and sinks["webhook"].secret == b"k"
    hub.publish_event(object())  # --export-kinds findings: events are not queued
    assert all(s["queued"] == 0 for s in hub.stats().values())
    hub.close(drain_s=0)


@pytest.mark.parametrize(("argv", "message"), [
    (("--hec-url", "https://splunk:8088"), "--hec-token-file is needed"),
    (("--hec-url", "https://s", "--hec-token-file", "/nonexistent/t"), "No such file"),
    (("--syslog", "no-port"), "HOST:PORT"),
    (("--webhook-url", "ftp://x"), "http:// or https://"),
    (("--syslog", "h:6514", "--syslog-ca", "/nonexistent/ca.pem"), "No such file"),
])
def test_bad_flags_say_what_is_wrong(argv, message):
    with pytest.raises(ExportConfigError, match=message):
        hub_from_args(parse(*argv))


def test_export_types_filter_events_by_type_and_family(tmp_path):
    hub = hub_from_args(parse("--ocsf-file", str(tmp_path / "o.jsonl"),
                              "--export-types", "gpu.open, process.*"))
    assert hub is not None
    for etype in ("gpu.open", "process.exec", "process.vm_write", "net.connect", "gpu.device"):
        hub.publish_event(sample_event(etype.replace(".", "_")))
    hub.publish_finding(sample_finding())  # findings are not filtered by type
    assert hub.stats()["ocsf_file"]["queued"] == 4
    hub.close(drain_s=0)
