"""Syslog (RFC 5424) over TLS (RFC 5425) with CEF or structured data in the message.

Each item becomes one RFC 5424 message, framed with octet counting
(``MSG-LEN SP SYSLOG-MSG``, RFC 5425 section 4.3):

``<PRI>1 TIMESTAMP HOSTNAME gpuaudit PROCID MSGID STRUCTURED-DATA MSG``

- format ``cef``: STRUCTURED-DATA is ``-`` and MSG is a CEF line (collector.export.cef);
- format ``rfc5424``: STRUCTURED-DATA is ``[gpuaudit@PEN node= boot_id= seq= type=
  ...]`` and MSG is the gpuaudit JSON (the event's public JSON or the finding).

HOSTNAME is the node the event is about (RFC 5424 wants the originator), PROCID
the process's pid, MSGID the event type or ``finding``. Header fields carry only
printable US-ASCII (others become ``_``); SD-PARAM values escape ``"``, ``\\``
and ``]``. TCP has no application-level acknowledgement: before each batch the
sink checks whether the receiver closed the connection (a syslog receiver never
sends), and reconnects, so a receiver that restarts loses nothing; bytes in
flight when a receiver crashes without closing can still be lost (docs/exports.md).
"""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Sequence
from typing import Any

from collector.export import cef, ocsf
from collector.export.base import PRODUCT, Item, SinkError, dumps

FACILITIES = {"kern": 0, "user": 1, "daemon": 3, "auth": 4, "authpriv": 10, "audit": 13,
              **{f"local{i}": 16 + i for i in range(8)}}
DEFAULT_FACILITY = "audit"  # facility 13 "log audit": what these records are
FINDING_SYSLOG_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}
EVENT_SYSLOG_SEVERITY = {3: 4, 4: 3}  # OCSF severity_id of an event -> syslog; else 6 info
DEFAULT_PEN = 32473  # RFC 5612's documentation enterprise number; set your own with --syslog-pen
FORMATS = ("cef", "rfc5424")


def frame(msg: bytes) -> bytes:
    """RFC 5425 octet-counting framing."""
    return b"%d " % len(msg) + msg


def header_field(value: Any, max_len: int) -> str:
    """A header field: printable US-ASCII only (``_`` for others), ``-`` when empty."""
    s = "".join(c if 33 <= ord(c) <= 126 else "_" for c in str(value))[:max_len]
    return s or "-"


def sd_value(value: Any) -> str:
    """An SD-PARAM value: ``\\``, ``"`` and ``]`` escaped (RFC 5424 section 6.3.3)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def timestamp(rfc3339: str) -> str:
    """RFC 5424 TIMESTAMP: at most 6 fraction digits (TIME-SECFRAC), ``-`` when unknown."""
    if not rfc3339:
        return "-"
    if "." not in rfc3339:
        return rfc3339
    head, rest = rfc3339.split(".", 1)
    n = len(rest) - len(rest.lstrip("0123456789"))
    return f"{head}.{rest[:min(n, 6)]}{rest[n:]}"


class SyslogFormatter:
    """Items -> framed RFC 5424 messages."""

    def __init__(self, fmt: str = "cef", facility: str = DEFAULT_FACILITY,
                 pen: int = DEFAULT_PEN) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"syslog format {fmt!r}: use one of {', '.join(FORMATS)}")
        if facility not in FACILITIES:
            raise ValueError(f"syslog facility {facility!r}: use one of {', '.join(FACILITIES)}")
        self.fmt, self.facility, self.sd_id = fmt, FACILITIES[facility], f"{PRODUCT}@{pen}"

    def message(self, item: Item) -> bytes:
        """One framed message for ``item``."""
        d = item.native()
        if item.kind == "finding":
            sev = FINDING_SYSLOG_SEVERITY.get(str(d.get("severity", "")), 4)
            ts, host, msgid = d.get("last_seen", ""), d.get("node", ""), "finding"
            pid = (d.get("process") or {}).get("pid")
            sd = {"id": d.get("id", ""), "rule": d.get("rule", ""),
                  "severity": d.get("severity", ""), "count": d.get("count", 1)}
        else:
            sev = EVENT_SYSLOG_SEVERITY.get(ocsf.event_severity(d), 6)
            ts, host, msgid = d.get("time", ""), d.get("node", ""), d.get("type", "")
            pid = (d.get("process") or {}).get("pid")
            sd = {"node": host, "boot_id": d.get("boot_id", ""), "seq": d.get("seq", 0),
                  "type": msgid}
        if self.fmt == "cef":
            structured, msg = "-", cef.from_item(item)
        else:
            params = " ".join(f'{k}="{sd_value(v)}"' for k, v in sd.items())
            structured, msg = f"[{self.sd_id} {params}]", dumps(d)
        head = (f"<{self.facility * 8 + sev}>1 {timestamp(ts)} {header_field(host, 255)} "
                f"{PRODUCT} {header_field(pid or '', 128)} {header_field(msgid, 32)} {structured}")
        return frame(f"{head} {msg}".encode())


class SyslogSink:
    """RFC 5425: TLS (or plain TCP when ``tls`` is None) to ``host:port``."""

    name = "syslog"

    def __init__(self, host: str, port: int, formatter: SyslogFormatter,
                 tls: ssl.SSLContext | None, server_name: str | None = None,
                 timeout_s: float = 10.0) -> None:
        self.host, self.port, self.formatter, self.tls = host, port, formatter, tls
        self.server_name = server_name or host
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None

    def render(self, item: Item) -> bytes:
        """The framed message."""
        return self.formatter.message(item)

    def send(self, batch: Sequence[Any]) -> None:
        """Write the frames; on any failure drop the connection and raise (retried)."""
        try:
            sock = self._connection()
            sock.sendall(b"".join(batch))
        except OSError as err:
            self.close()
            raise SinkError(f"syslog {self.host}:{self.port}: {err}") from err

    def close(self) -> None:
        """Close the connection, if any."""
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _connection(self) -> socket.socket:
        if self._sock is not None and _peer_closed(self._sock):
            self.close()
        if self._sock is None:
            raw = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            try:
                self._sock = (self.tls.wrap_socket(raw, server_hostname=self.server_name)
                              if self.tls else raw)
            except OSError:
                raw.close()
                raise
        return self._sock


def _peer_closed(sock: socket.socket) -> bool:
    """True when the receiver closed or reset the connection. A syslog receiver
    never sends application data, so a readable socket means EOF (or a TLS alert)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except (ssl.SSLWantReadError, BlockingIOError):
        return False  # a partial TLS record (e.g. a session ticket): still open
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)


def tls_context(ca_file: str | None, cert: str | None = None, key: str | None = None,
                verify: bool = True) -> ssl.SSLContext:
    """A client context: the system store or ``ca_file``, optional client certificate."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 5425 + BCP 195
    if cert:
        ctx.load_cert_chain(cert, key)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
