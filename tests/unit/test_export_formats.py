"""CEF and RFC 5424/5425 output parsed back by independent parsers: hostile strings
(|, =, \\, ], ", newlines) survive escaping, header fields stay one token."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from collector.export import cef
from collector.export.base import Item
from collector.export.syslog import SyslogFormatter, header_field, timestamp
from gpuaudit import jsonform
from tests.unit.test_export_ocsf import HOSTILE, sample_event, sample_finding

# -- parsers a SIEM would use


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """(the 7 unescaped header fields, extension dict with unescaped values)."""
    assert "\n" not in line and "\r" not in line, "a CEF record is one line"
    fields, cur, i = [], "", 0
    while len(fields) < 7:
        c = line[i]
        if c == "\\":
            assert line[i + 1] in "\\|", f"bad header escape at {i}: {line[i:i + 2]!r}"
            cur, i = cur + line[i + 1], i + 2
        elif c == "|":
            fields, cur, i = [*fields, cur], "", i + 1
        else:
            cur, i = cur + c, i + 1
    return fields, _parse_ext(line[i:])


def _parse_ext(ext: str) -> dict[str, str]:
    eqs, i = [], 0
    while i < len(ext):  # positions of unescaped '='
        if ext[i] == "\\":
            i += 2
            continue
        if ext[i] == "=":
            eqs.append(i)
        i += 1
    out: dict[str, str] = {}
    for n, eq in enumerate(eqs):
        key_start = ext.rfind(" ", 0, eq) + 1
        key = ext[key_start:eq]
        assert re.fullmatch(r"[A-Za-z0-9]+", key), f"bad extension key {key!r}"
        end = ext.rfind(" ", 0, eqs[n + 1]) if n + 1 < len(eqs) else len(ext)
        out[key] = _unescape_ext(ext[eq + 1:end])
    return out


def _unescape_ext(v: str) -> str:
    table = {"\\": "\\", "=": "=", "n": "\n", "r": "\r"}
    out, i = "", 0
    while i < len(v):
        if v[i] == "\\":
            assert v[i + 1] in table, f"bad extension escape {v[i:i + 2]!r}"
            out, i = out + table[v[i + 1]], i + 2
        else:
            out, i = out + v[i], i + 1
    return out


def unframe(data: bytes) -> tuple[list[bytes], bytes]:
    """RFC 5425 octet counting: (complete messages, leftover bytes)."""
    msgs = []
    while True:
        sp = data.find(b" ")
        if sp <= 0:
            return msgs, data
        n = int(data[:sp])
        if len(data) < sp + 1 + n:
            return msgs, data
        msgs.append(data[sp + 1:sp + 1 + n])
        data = data[sp + 1 + n:]


SYSLOG_RE = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) "
    rb"(?P<msgid>\S+) (?P<rest>.*)$", re.S)


def parse_syslog(msg: bytes) -> dict[str, Any]:
    """RFC 5424 header fields, structured data (list of (id, params)) and MSG."""
    m = SYSLOG_RE.match(msg)
    assert m, msg[:120]
    out: dict[str, Any] = {k: v.decode() for k, v in m.groupdict().items() if k != "rest"}
    rest = m["rest"].decode()
    out["sd"], out["msg"] = _parse_sd(rest)
    return out


def _parse_sd(rest: str) -> tuple[list[tuple[str, dict[str, str]]], str]:
    if rest.startswith("- ") or rest == "-":
        return [], rest[2:]
    elements, i = [], 0
    while i < len(rest) and rest[i] == "[":
        j = rest.index(" ", i)
        sd_id, params, i = rest[i + 1:j], {}, j
        while rest[i] == " ":
            eq = rest.index("=", i)
            name, i, val = rest[i + 1:eq], eq + 2, ""
            while rest[i] != '"':
                if rest[i] == "\\" and rest[i + 1] in '"\\]':
                    i += 1
                else:
                    assert rest[i] != "]", "unescaped ] in a PARAM-VALUE"
                val, i = val + rest[i], i + 1
            params[name], i = val, i + 1
        assert rest[i] == "]"
        elements.append((sd_id, params))
        i += 1
    assert rest[i] == " "
    return elements, rest[i + 1:]


# -- CEF


def test_cef_escaping_roundtrips_hostile_strings():
    line = cef.line("sig|1", "na\\me|x\ny", 5, [("msg", HOSTILE), ("cs1", "p|q"), ("cs2", "")])
    head, ext = parse_cef(line)
    assert head == ["CEF:0", "gpuaudit", "gpuaudit", "0.1.0", "sig|1", "na\\me|x y", "5"]
    assert ext == {"msg": HOSTILE, "cs1": "p|q"}  # empty values are left out


def test_cef_event_names_process_target_and_payload():
    ev = sample_event("process_ptrace")
    head, ext = parse_cef(cef.from_item(Item("event", event=ev)))
    assert head[4:] == ["process.ptrace", "Process traced", "1"]
    d = jsonform.to_dict(ev)
    assert ext["dvchost"] == "gpu|01" and ext["externalId"] == "gpu|01:b=1:1"
    assert (ext["spid"], ext["suser"], ext["sproc"]) == ("4242", "ali|ce", "py=thon")
    assert ext["cs2Label"] == "cmdline" and ext["cs2"] == f"python3 {HOSTILE}"
    assert ext["dpid"] == "7" and ext["duser"] == HOSTILE
    assert json.loads(ext["cs6"]) == d["process_ptrace"]
    assert ext["rt"] == "1795286000123"


def test_cef_network_accept_puts_the_peer_first():
    ev = sample_event("net_accept")
    ev.net_accept.local_port, ev.net_accept.remote_port = 22, 50000
    _, ext = parse_cef(cef.from_item(Item("event", event=ev)))
    assert (ext["src"], ext["spt"], ext["dst"], ext["dpt"]) == ("10.0.0.7", "50000",
                                                               "10.0.0.5", "22")


@pytest.mark.parametrize(("severity", "cef_sev"), [("info", "1"), ("medium", "5"),
                                                   ("critical", "10")])
def test_cef_finding(severity, cef_sev):
    f = sample_finding(severity=severity)
    head, ext = parse_cef(cef.from_item(Item("finding", finding=f)))
    assert head[4:] == ["gpu_process_tampered", "GPU job | tampered", cef_sev]
    assert ext["msg"] == f["summary"] and ext["flexString1"] == "k|1"
    assert ext["cnt"] == "3" and ext["cs6"] == "T1055,T1055.008,TA0040"
    assert ext["suser"] == "mallory" and ext["externalId"] == "f-1"


# -- syslog


def test_rfc5424_structured_data_and_json_message():
    ev = sample_event("gpu_open")
    fmt = SyslogFormatter("rfc5424", "local3", pen=9999)
    msgs, rest = unframe(fmt.message(Item("event", event=ev)))
    assert len(msgs) == 1 and rest == b""
    s = parse_syslog(msgs[0])
    assert s["pri"] == str(19 * 8 + 6)
    assert (s["ts"], s["host"], s["app"]) == ("2026-11-21T18:33:20.123456Z", "gpu|01",
                                             "gpuaudit")
    assert (s["procid"], s["msgid"]) == ("4242", "gpu.open")
    assert s["sd"] == [("gpuaudit@9999", {"node": "gpu|01", "boot_id": "b=1", "seq": "1",
                                         "type": "gpu.open"})]
    assert json.loads(s["msg"]) == jsonform.to_dict(ev)


def test_rfc5424_escapes_hostile_sd_values():
    f = sample_finding()
    f["id"] = 'x"]\\y'
    msgs, _ = unframe(SyslogFormatter("rfc5424").message(Item("finding", finding=f)))
    s = parse_syslog(msgs[0])
    assert s["sd"][0][1]["id"] == 'x"]\\y'
    assert s["pri"] == str(13 * 8 + 3) and s["msgid"] == "finding"


def test_cef_in_syslog_has_no_structured_data():
    ev = sample_event("process_signal")
    msgs, _ = unframe(SyslogFormatter("cef").message(Item("event", event=ev)))
    s = parse_syslog(msgs[0])
    assert s["sd"] == []
    head, ext = parse_cef(s["msg"])
    assert head[4] == "process.signal" and ext["dproc"] == HOSTILE


def test_header_fields_are_printable_ascii_tokens():
    assert header_field("gpu 01\nx", 255) == "gpu_01_x"
    assert header_field("", 48) == "-"
    assert header_field("é" * 40, 32) == "_" * 32
    assert timestamp("2026-11-21T18:33:20.123456789Z") == "2026-11-21T18:33:20.123456Z"
    assert timestamp("2026-11-21T18:33:20Z") == "2026-11-21T18:33:20Z"


def test_frames_back_to_back_split_exactly():
    fmt = SyslogFormatter("cef")
    data = b"".join(fmt.message(Item("event", event=sample_event("gpu_open", seq=i)))
                    for i in range(1, 24))
    msgs, rest = unframe(data + b"12 partial")
    assert len(msgs) == 23 and rest == b"12 partial"


def test_a_malicious_checkpoint_is_severe_in_every_format():
    ev = sample_event("checkpoint_scan")  # verdict "malicious"
    item = Item("event", event=ev)
    msgs, _ = unframe(SyslogFormatter("cef", "local0").message(item))
    s = parse_syslog(msgs[0])
    assert s["pri"] == str(16 * 8 + 3)  # err
    head, _ = parse_cef(s["msg"])
    assert head[6] == "8"
