"""Every sink against a real receiver started here: a TLS syslog listener (RFC 5425
frames parsed back), HTTPS Splunk HEC and webhook endpoints (http.server), and
the OCSF file. Receivers go down and come back (nothing lost), queue limits drop
an exact count. Certificates come from collector.certs (what `gpuaudit certs` makes)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from collector.certs import init_pki
from collector.export import ExportHub, Item, ocsf, ocsfschema
from collector.export.filesink import JsonFileSink
from collector.export.http import SIGNATURE_HEADER, TIMESTAMP_HEADER, HecSink, WebhookSink
from collector.export.syslog import SyslogFormatter, SyslogSink, tls_context
from gpuaudit import jsonform
from gpuaudit.tls import TlsFiles
from tests.integration.harness import wait_for
from tests.unit.test_export_formats import parse_cef, parse_syslog, unframe
from tests.unit.test_export_ocsf import HOSTILE, PAYLOADS, sample_event, sample_finding

pytestmark = pytest.mark.integration
HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A server certificate (SAN 127.0.0.1) and the CA that issued it."""
    return init_pki(tmp_path_factory.mktemp("pki")).collector


def server_context(files: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(files.cert, files.key)
    return ctx


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# -- a TLS syslog receiver


class SyslogReceiver:
    """Accepts TLS connections on ``port`` and collects RFC 5425 frames."""

    def __init__(self, files: TlsFiles, port: int) -> None:
        self.ctx, self.port = server_context(files), port
        self.messages: list[bytes] = []
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._srv = socket.create_server((HOST, port), reuse_port=False)
        threading.Thread(target=self._accept, daemon=True).start()

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def stop(self) -> None:
        """Close the listener and every connection (the client sees EOF)."""
        # shutdown wakes the thread blocked in accept(); close() alone leaves it listening
        with contextlib.suppress(OSError):
            self._srv.shutdown(socket.SHUT_RDWR)
        self._srv.close()
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._srv.accept()
            except OSError:
                return
            try:
                conn = self.ctx.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError):
                raw.close()
                continue
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            msgs, buf = unframe(buf + data)
            with self._lock:
                self.messages.extend(msgs)


@pytest.fixture
def syslog_port() -> int:
    return free_port()


def syslog_hub(tls: TlsFiles, port: int, fmt: str, **kw: Any) -> ExportHub:
    sink = SyslogSink(HOST, port, SyslogFormatter(fmt), tls_context(str(tls.ca)))
    return ExportHub([sink], **kw)


def test_syslog_tls_cef_every_event_type_and_findings(tls, syslog_port):
    rx = SyslogReceiver(tls, syslog_port)
    hub = syslog_hub(tls, syslog_port, "cef")
    hub.start()
    events = [sample_event(f.name, seq=i + 1) for i, f in enumerate(PAYLOADS)]
    for ev in events:
        hub.publish_event(ev)
    hub.publish_finding(sample_finding())
    n = len(events) + 1
    wait_for(lambda: rx.count() == n)
    hub.close(drain_s=5)
    rx.stop()
    parsed = [parse_syslog(m) for m in rx.messages]
    assert [p["msgid"] for p in parsed] == [ev.type for ev in events] + ["finding"]
    for p, ev in zip(parsed, events, strict=False):
        head, ext = parse_cef(p["msg"])
        assert head[4] == ev.type and p["host"] == "gpu|01"
        assert ext["externalId"] == f"gpu|01:b=1:{ev.seq}"
        assert ext["cs2"] == f"python3 {HOSTILE}"  # |, =, \, ], " and a newline survived
    head, ext = parse_cef(parsed[-1]["msg"])
    assert head[5] == "GPU job | tampered" and ext["msg"] == sample_finding()["summary"]
    assert hub.stats()["syslog"] == {"queued": 0, "sent": n, "retried": 0, "dropped": 0,
                                     "dropped_by": {"queue_full": 0, "render": 0,
                                                    "rejected": 0, "shutdown": 0, "closed": 0},
                                     "skipped": 0, "last_error": ""}


def test_syslog_receiver_down_and_back_loses_nothing(tls, syslog_port):
    rx = SyslogReceiver(tls, syslog_port)
    hub = syslog_hub(tls, syslog_port, "rfc5424", batch_max=4)
    hub.start()
    for seq in range(1, 11):
        hub.publish_event(sample_event("gpu_open", seq=seq))
    wait_for(lambda: rx.count() == 10)
    rx.stop()
    for seq in range(11, 24):
        hub.publish_event(sample_event("gpu_open", seq=seq))
    wait_for(lambda: hub.stats()["syslog"]["retried"] >= 2)  # refused while down
    rx2 = SyslogReceiver(tls, syslog_port)
    wait_for(lambda: rx2.count() == 13)
    hub.close(drain_s=5)
    rx2.stop()
    seqs = [int(parse_syslog(m)["sd"][0][1]["seq"]) for m in rx.messages + rx2.messages]
    assert seqs == list(range(1, 24))
    s = hub.stats()["syslog"]
    assert (s["sent"], s["dropped"]) == (23, 0) and s["last_error"]


def test_syslog_refuses_a_receiver_with_an_untrusted_certificate(tls, syslog_port, tmp_path):
    other_ca = init_pki(tmp_path / "other").collector.ca
    rx = SyslogReceiver(tls, syslog_port)
    sink = SyslogSink(HOST, syslog_port, SyslogFormatter("cef"), tls_context(str(other_ca)))
    hub = ExportHub([sink])
    hub.start()
    hub.publish_event(sample_event("gpu_open"))
    wait_for(lambda: hub.stats()["syslog"]["retried"] >= 1)
    hub.close(drain_s=0)
    rx.stop()
    assert rx.count() == 0
    assert "CERTIFICATE_VERIFY_FAILED" in hub.stats()["syslog"]["last_error"]


# -- HTTPS receivers: Splunk HEC and a webhook


class HttpReceiver:
    """An HTTPS server recording POSTs; answers ``status`` (and HEC's JSON reply)."""

    def __init__(self, files: TlsFiles, port: int, status: int = 200) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.status = status
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = rx.status
                if code == 200:
                    rx.requests.append((self.path, dict(self.headers), body))
                reply = b'{"text":"Success","code":0}' if code == 200 else b'{"code":9}'
                self.send_response(code)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, port), Handler)
        self.server.socket = server_context(files).wrap_socket(self.server.socket,
                                                               server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_port() -> Iterator[int]:
    yield free_port()


def hec_events(body: bytes) -> list[dict[str, Any]]:
    """HEC batches are JSON objects back to back."""
    dec, out, text, i = json.JSONDecoder(), [], body.decode(), 0
    while i < len(text):
        obj, i = dec.raw_decode(text, i)
        out.append(obj)
        while i < len(text) and text[i].isspace():
            i += 1
    return out


def hec_hub(tls: TlsFiles, port: int, fmt: str = "gpuaudit", **kw: Any) -> ExportHub:
    sink = HecSink(f"https://{HOST}:{port}", "tok-123", tls_context(str(tls.ca)), fmt,
                   index="gpu", sourcetype="")
    return ExportHub([sink], **kw)


def test_hec_envelope_and_ocsf_events_validate(tls, http_port):
    rx = HttpReceiver(tls, http_port)
    hub = hec_hub(tls, http_port, "ocsf", batch_max=50)
    for i, f in enumerate(PAYLOADS):  # queued before start: one or few batches
        hub.publish_event(sample_event(f.name, seq=i + 1))
    hub.publish_finding(sample_finding())
    hub.start()
    n = len(PAYLOADS) + 1
    wait_for(lambda: hub.stats()["hec"]["sent"] == n)
    hub.close(drain_s=5)
    rx.stop()
    envs = [e for path, headers, body in rx.requests for e in hec_events(body)]
    assert {path for path, _, _ in rx.requests} == {"/services/collector/event"}
    assert {h["Authorization"] for _, h, _ in rx.requests} == {"Splunk tok-123"}
    assert len(envs) == n
    for env in envs:
        assert ocsfschema.errors(env["event"]) == []
        assert (env["index"], env["source"]) == ("gpu", "gpuaudit")
    assert envs[0]["host"] == "gpu|01" and envs[0]["time"] == 1_795_286_000.123
    assert envs[0]["sourcetype"] == "gpuaudit:ocsf:event"
    assert envs[-1]["sourcetype"] == "gpuaudit:ocsf:finding"
    assert envs[-1]["event"]["class_uid"] == 2004


def test_hec_down_overloaded_and_back_loses_nothing(tls, http_port):
    rx = HttpReceiver(tls, http_port)
    hub = hec_hub(tls, http_port, batch_max=5)
    hub.start()
    for seq in range(1, 8):
        hub.publish_event(sample_event("process_exec", seq=seq))
    wait_for(lambda: hub.stats()["hec"]["sent"] == 7)
    rx.stop()  # down: connection refused
    for seq in range(8, 20):
        hub.publish_event(sample_event("process_exec", seq=seq))
    wait_for(lambda: hub.stats()["hec"]["retried"] >= 2)
    rx2 = HttpReceiver(tls, http_port, status=503)  # back, but overloaded
    wait_for(lambda: hub.stats()["hec"]["retried"] >= 4)
    rx2.status = 200
    for seq in range(20, 24):
        hub.publish_event(sample_event("process_exec", seq=seq))
    wait_for(lambda: hub.stats()["hec"]["sent"] == 23)
    hub.close(drain_s=5)
    rx2.stop()
    seqs = [e["event"]["event"]["seq"] for r in (rx, rx2) for _, _, b in r.requests
            for e in hec_events(b)]
    assert seqs == list(range(1, 24))
    assert hub.stats()["hec"]["dropped"] == 0


def test_hec_queue_limit_drops_an_exact_count(tls, http_port):
    rx = HttpReceiver(tls, http_port)
    hub = hec_hub(tls, http_port, queue_max=23, batch_max=10)
    for seq in range(1, 101):  # the worker has not started: exactly 77 must go
        hub.publish_event(sample_event("gpu_open", seq=seq))
    assert hub.stats()["hec"]["dropped_by"]["queue_full"] == 77
    hub.start()
    wait_for(lambda: hub.stats()["hec"]["sent"] == 23)
    hub.close(drain_s=5)
    rx.stop()
    seqs = [e["event"]["event"]["seq"] for _, _, b in rx.requests for e in hec_events(b)]
    assert seqs == list(range(78, 101))  # drop_oldest kept the newest 23
    s = hub.stats()["hec"]
    assert (s["sent"], s["dropped"], s["queued"]) == (23, 77, 0)


def test_webhook_signed_batches_and_rejection(tls, http_port):
    secret = b"s3cret"
    rx = HttpReceiver(tls, http_port)
    sink = WebhookSink(f"https://{HOST}:{http_port}/hook", secret, tls_context(str(tls.ca)))
    hub = ExportHub([sink], batch_max=4)
    for seq in range(1, 11):
        hub.publish_event(sample_event("net_connect", seq=seq))
    hub.publish_finding(sample_finding())
    hub.start()
    wait_for(lambda: hub.stats()["webhook"]["sent"] == 11)
    items = []
    for path, headers, body in rx.requests:
        ts, sig = headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]
        want = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert path == "/hook" and hmac.compare_digest(sig, f"sha256={want}")
        items += json.loads(body)
    assert [i["kind"] for i in items] == ["event"] * 10 + ["finding"]
    assert items[0]["event"] == jsonform.to_dict(sample_event("net_connect", seq=1))
    assert items[-1]["finding"] == sample_finding()
    rx.status = 400  # the receiver refuses the batch itself: dropped, not retried forever
    hub.publish_event(sample_event("net_connect", seq=11))
    wait_for(lambda: hub.stats()["webhook"]["dropped"] == 1)
    hub.close(drain_s=5)
    rx.stop()
    s = hub.stats()["webhook"]
    assert s["dropped_by"]["rejected"] == 1 and s["retried"] == 0 and "HTTP 400" in s["last_error"]


def test_webhook_ocsf_format(tls, http_port):
    rx = HttpReceiver(tls, http_port)
    sink = WebhookSink(f"https://{HOST}:{http_port}/", None, tls_context(str(tls.ca)), "ocsf",
                       unmapped="skip")
    hub = ExportHub([sink])
    for i, f in enumerate(PAYLOADS):
        hub.publish_event(sample_event(f.name, seq=i + 1))
    hub.start()
    wait_for(lambda: hub.stats()["webhook"]["sent"] + hub.stats()["webhook"]["skipped"]
             == len(PAYLOADS))
    hub.close(drain_s=5)
    rx.stop()
    items = [i for _, h, b in rx.requests for i in json.loads(b)]
    assert SIGNATURE_HEADER not in rx.requests[0][1]
    assert len(items) == len(ocsf.MAPPERS) == hub.stats()["webhook"]["sent"]
    assert all(ocsfschema.errors(i) == [] for i in items)
    assert {i["class_uid"] for i in items} == {1001, 1005, 1007, 4001, 5001}


# -- the OCSF file


def test_ocsf_file_rotates_and_every_line_validates(tmp_path: Path):
    path = tmp_path / "out" / "gpuaudit.ocsf.jsonl"
    hub = ExportHub([JsonFileSink(path, max_bytes=20_000, keep=50)], batch_max=3)
    hub.start()
    n = 0
    for rnd in range(3):
        for i, f in enumerate(PAYLOADS):
            hub.publish_event(sample_event(f.name, seq=rnd * 100 + i + 1))
            n += 1
    hub.publish_finding(sample_finding())
    hub.close(drain_s=10)
    files = sorted(path.parent.iterdir())
    assert len(files) > 2, "expected rotation at 20 kB"
    assert all(f.stat().st_size <= 20_000 for f in files)
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert len(lines) == n + 1
    assert all(ocsfschema.errors(o) == [] for o in lines)
    assert hub.stats()["ocsf_file"]["sent"] == n + 1


def test_item_envelope_is_the_public_json():
    ev = sample_event("gpu_open")
    assert Item("event", event=ev).envelope() == {"kind": "event",
                                                  "event": jsonform.to_dict(ev)}
