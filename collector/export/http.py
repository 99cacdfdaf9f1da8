"""Splunk HTTP Event Collector and a generic JSON webhook, over HTTPS.

urllib is enough here: the collector has no HTTP client dependency, a batch is
one POST, TLS verification with a CA file is ``ssl.SSLContext``, and retries
with backoff are the worker's (collector.export.worker) for every sink alike.

A reply of 2xx delivers the batch. 400, 413, 415 and 422 mean the receiver will
never take this batch: it is dropped and counted (``rejected``). Everything else
(connection errors, timeouts, 5xx, 429, and 401/403/404 which are fixed by
configuration) is retried until it succeeds, so a wrong token loses nothing
while the queue holds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from collector.export import ocsf, ocsf_objects
from collector.export.base import PRODUCT, VERSION, Item, SinkError, dumps

NOT_RETRYABLE = {400, 413, 415, 422}
HEC_PATH = "/services/collector/event"
FORMATS = ("gpuaudit", "ocsf")
SIGNATURE_HEADER = "X-Gpuaudit-Signature"
TIMESTAMP_HEADER = "X-Gpuaudit-Timestamp"


def render_json(item: Item, fmt: str, unmapped: str = "base") -> dict[str, Any] | None:
    """The JSON an HTTP or file sink sends: gpuaudit's envelope or OCSF."""
    if fmt == "ocsf":
        return ocsf.from_item(item, unmapped)
    return item.envelope()


class HttpPoster:
    """POSTs bytes to one URL; maps failures to :class:`SinkError`."""

    def __init__(self, url: str, tls: ssl.SSLContext | None = None, timeout_s: float = 10.0):
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"{url!r}: an http:// or https:// URL is needed")
        self.url, self.tls, self.timeout_s = url, tls, timeout_s

    def post(self, body: bytes, headers: dict[str, str]) -> bytes:
        """The reply body of a 2xx answer; SinkError otherwise."""
        req = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": f"{PRODUCT}/{VERSION}", **headers})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s, context=self.tls) as resp:
                return bytes(resp.read())
        except urllib.error.HTTPError as err:
            detail = err.read()[:200].decode(errors="replace")
            raise SinkError(f"HTTP {err.code} from {self.url}: {detail}",
                            retryable=err.code not in NOT_RETRYABLE) from None
        except (urllib.error.URLError, OSError) as err:
            raise SinkError(f"{self.url}: {getattr(err, 'reason', err)}") from None


class HecSink:
    """Splunk HEC: ``POST /services/collector/event``, ``Authorization: Splunk TOKEN``,
    a batch = event objects back to back."""

    name = "hec"

    def __init__(self, url: str, token: str, tls: ssl.SSLContext | None = None,
                 fmt: str = "gpuaudit", index: str = "", source: str = PRODUCT,
                 sourcetype: str = "", unmapped: str = "base", timeout_s: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.path in ("", "/"):
            url = urllib.parse.urlunsplit(parts._replace(path=HEC_PATH))
        if fmt not in FORMATS:
            raise ValueError(f"HEC format {fmt!r}: use one of {', '.join(FORMATS)}")
        self.poster = HttpPoster(url, tls, timeout_s)
        self.token, self.fmt, self.index, self.source = token, fmt, index, source
        self.sourcetype, self.unmapped = sourcetype, unmapped
        prefix = f"{PRODUCT}:ocsf" if fmt == "ocsf" else PRODUCT
        self._sourcetypes = {"event": f"{prefix}:event", "finding": f"{prefix}:finding"}

    def render(self, item: Item) -> dict[str, Any] | None:
        """The HEC event envelope: time (epoch seconds), host, source, sourcetype, index, event."""
        body = render_json(item, self.fmt, self.unmapped)
        if body is None:
            return None
        d = item.native()
        when = d.get("last_seen") if item.kind == "finding" else d.get("time")
        env: dict[str, Any] = {
            "time": (ocsf_objects.rfc3339_ms(when) or ocsf_objects.now_ms()) / 1000,
            "host": d.get("node", "") or "unknown",
            "source": self.source,
            "sourcetype": self.sourcetype or self._sourcetypes[item.kind],
            "event": body,
        }
        if self.index:
            env["index"] = self.index
        return env

    def send(self, batch: Sequence[Any]) -> None:
        """One POST for the batch; HEC's JSON reply must say code 0."""
        body = "\n".join(dumps(e) for e in batch).encode()
        reply = self.poster.post(body, {"Authorization": f"Splunk {self.token}"})
        try:
            code = json.loads(reply or b"{}").get("code", 0)
        except (ValueError, AttributeError):
            code = 0  # a proxy in front of HEC may answer 200 without HEC's JSON
        if code != 0:
            raise SinkError(f"HEC answered code {code}: {reply[:200]!r}")

    def close(self) -> None:
        """Nothing held between requests."""


class WebhookSink:
    """POST a JSON array of items; with a secret, sign it: ``X-Gpuaudit-Signature:
    sha256=HEX`` = HMAC-SHA256(secret, TIMESTAMP + "." + body) and
    ``X-Gpuaudit-Timestamp: TIMESTAMP`` (Unix seconds) so receivers can refuse replays."""

    name = "webhook"

    def __init__(self, url: str, secret: bytes | None = None, tls: ssl.SSLContext | None = None,
                 fmt: str = "gpuaudit", unmapped: str = "base", timeout_s: float = 10.0) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"webhook format {fmt!r}: use one of {', '.join(FORMATS)}")
        self.poster = HttpPoster(url, tls, timeout_s)
        self.secret, self.fmt, self.unmapped = secret, fmt, unmapped

    def render(self, item: Item) -> dict[str, Any] | None:
        """The item's JSON (gpuaudit envelope or OCSF)."""
        return render_json(item, self.fmt, self.unmapped)

    def send(self, batch: Sequence[Any]) -> None:
        """One signed POST for the batch."""
        body = dumps(list(batch)).encode()
        headers = {}
        if self.secret:
            ts = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = ts
            headers[SIGNATURE_HEADER] = "sha256=" + sign(self.secret, ts, body)
        self.poster.post(body, headers)

    def close(self) -> None:
        """Nothing held between requests."""


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """Hex HMAC-SHA256 over ``timestamp + "." + body`` (what receivers recompute)."""
    return hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
