"""Collector flags for the export sinks, and the hub they describe.

``add_export_flags(parser)`` adds them to ``gpuaudit collector``; the layered
config (collector/cli_config.py) picks them up as keys like every other flag.
``hub_from_args(args)`` builds the :class:`ExportHub`, or returns None when no
sink is configured. Secrets (the HEC token, the webhook key) are read from files
named by flags, never taken on the command line where ``ps`` would show them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from collector.cli_args import not_negative, positive, split_values
from collector.export import ExportHub, Sink
from collector.export.filesink import JsonFileSink
from collector.export.http import FORMATS as JSON_FORMATS
from collector.export.http import HecSink, WebhookSink
from collector.export.syslog import (
    DEFAULT_FACILITY,
    DEFAULT_PEN,
    FACILITIES,
    SyslogFormatter,
    SyslogSink,
    tls_context,
)
from collector.export.syslog import FORMATS as SYSLOG_FORMATS
from collector.export.worker import POLICIES


class ExportConfigError(ValueError):
    """A sink's flags do not work together (exit 2 with this message)."""


def add_export_flags(p: argparse.ArgumentParser) -> None:
    """The ``--export-*``, ``--ocsf-*``, ``--syslog*``, ``--hec-*`` and ``--webhook-*`` flags."""
    g = p.add_argument_group("exports (docs/exports.md)")
    g.add_argument("--export-queue", type=positive(int), default=10_000, metavar="N",
                   help="items each sink may hold while its receiver is slow or down")
    g.add_argument("--export-batch", type=positive(int), default=100, metavar="N",
                   help="items per delivery (one POST, one write)")
    g.add_argument("--export-drop", choices=POLICIES, default="drop_oldest",
                   help="which item a full sink queue drops (counted either way)")
    g.add_argument("--export-kinds", choices=("all", "events", "findings"), default="all",
                   help="export events, findings or both")
    g.add_argument("--export-types", default="", metavar="TYPE[,TYPE]",
                   help="export only these event types, comma-separated (gpu.open; process.* "
                   "for a family); default: all")
    g.add_argument("--export-drain", type=not_negative(float), default=5.0, metavar="S",
                   help="seconds the sinks get at shutdown to deliver what is queued")
    g.add_argument("--ocsf-unmapped", choices=("base", "skip"), default="base",
                   help="OCSF outputs: event types without an OCSF class as Base Event, or skip")
    g.add_argument("--ocsf-file", metavar="PATH", help="append OCSF JSON lines to PATH")
    g.add_argument("--ocsf-file-max-bytes", type=positive(int), default=100 << 20, metavar="N",
                   help="rotate --ocsf-file at this size")
    g.add_argument("--ocsf-file-keep", type=not_negative(int), default=5, metavar="N",
                   help="rotated files kept (PATH.1 ... PATH.N)")
    g.add_argument("--syslog", metavar="HOST:PORT",
                   help="send syslog RFC 5424 over TLS (RFC 5425, usually port 6514)")
    g.add_argument("--syslog-format", choices=SYSLOG_FORMATS, default="cef",
                   help="MSG as CEF, or RFC 5424 structured data + gpuaudit JSON")
    g.add_argument("--syslog-facility", choices=sorted(FACILITIES), default=DEFAULT_FACILITY)
    g.add_argument("--syslog-pen", type=positive(int), default=DEFAULT_PEN, metavar="N",
                   help="IANA enterprise number in the SD-ID gpuaudit@N")
    g.add_argument("--syslog-ca", metavar="PEM", help="CA to verify the receiver (default: system)")
    g.add_argument("--syslog-cert", metavar="PEM", help="client certificate, if the receiver asks")
    g.add_argument("--syslog-key", metavar="PEM", help="its key")
    g.add_argument("--syslog-server-name", metavar="NAME",
                   help="name the receiver's certificate must carry (default: HOST)")
    g.add_argument("--syslog-plaintext", action="store_true",
                   help="plain TCP instead of TLS (a local relay only)")
    _add_http_flags(g, "hec", "Splunk HEC base URL, e.g. https://splunk:8088")
    g.add_argument("--hec-token-file", metavar="PATH", help="file holding the HEC token")
    g.add_argument("--hec-index", default="", help="HEC index (default: the token's)")
    g.add_argument("--hec-source", default="gpuaudit")
    g.add_argument("--hec-sourcetype", default="",
                   help="default gpuaudit:event / gpuaudit:finding "
                   "(gpuaudit:ocsf:event / ...:finding with --hec-format ocsf)")
    _add_http_flags(g, "webhook", "POST JSON arrays to this URL")
    g.add_argument("--webhook-secret-file", metavar="PATH",
                   help="HMAC-SHA256 key: sign each POST (X-Gpuaudit-Signature)")


def _add_http_flags(g: Any, name: str, what: str) -> None:
    g.add_argument(f"--{name}-url", metavar="URL", help=what)
    g.add_argument(f"--{name}-format", choices=JSON_FORMATS, default="gpuaudit",
                   help="gpuaudit's JSON or OCSF")
    g.add_argument(f"--{name}-ca", metavar="PEM", help="CA to verify the server (default: system)")


def hub_from_args(args: argparse.Namespace) -> ExportHub | None:
    """The hub for the configured sinks (not started), or None when there is none.
    Raises :class:`ExportConfigError` for unusable flags (a missing secret file...)."""
    sinks = _sinks(args)
    if not sinks:
        return None
    kinds = {"all": ("event", "finding"), "events": ("event",),
             "findings": ("finding",)}[args.export_kinds]
    return ExportHub(sinks, queue_max=args.export_queue, batch_max=args.export_batch,
                     policy=args.export_drop, kinds=kinds,  # type: ignore[arg-type]
                     types=split_values([args.export_types]))


def _sinks(args: argparse.Namespace) -> list[Sink]:
    sinks: list[Sink] = []
    try:
        if args.ocsf_file:
            sinks.append(JsonFileSink(args.ocsf_file, args.ocsf_file_max_bytes,
                                      args.ocsf_file_keep, "ocsf", args.ocsf_unmapped))
        if args.syslog:
            sinks.append(_syslog(args))
        if args.hec_url:
            token = _secret(args.hec_token_file, "--hec-token-file").decode().strip()
            sinks.append(HecSink(args.hec_url, token, _https(args.hec_ca), args.hec_format,
                                 args.hec_index, args.hec_source, args.hec_sourcetype,
                                 args.ocsf_unmapped))
        if args.webhook_url:
            secret = (_secret(args.webhook_secret_file, "--webhook-secret-file").strip()
                      if args.webhook_secret_file else None)
            sinks.append(WebhookSink(args.webhook_url, secret, _https(args.webhook_ca),
                                     args.webhook_format, args.ocsf_unmapped))
    except (OSError, ValueError) as err:
        raise ExportConfigError(str(err)) from None
    return sinks


def _syslog(args: argparse.Namespace) -> SyslogSink:
    host, sep, port = args.syslog.rpartition(":")
    if not sep or not port.isdigit():
        raise ExportConfigError(f"--syslog {args.syslog!r}: use HOST:PORT (TLS: usually 6514)")
    tls = None if args.syslog_plaintext else tls_context(args.syslog_ca, args.syslog_cert,
                                                         args.syslog_key)
    fmt = SyslogFormatter(args.syslog_format, args.syslog_facility, args.syslog_pen)
    return SyslogSink(host.strip("[]"), int(port), fmt, tls, args.syslog_server_name)


def _https(ca: str | None) -> Any:
    return tls_context(ca)


def _secret(path: str | None, flag: str) -> bytes:
    if not path:
        raise ExportConfigError(f"{flag} is needed")
    data = Path(path).read_bytes()
    if not data.strip():
        raise ExportConfigError(f"{flag} {path} is empty")
    return data
