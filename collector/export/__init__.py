"""Exports a SOC can ingest: OCSF JSON (file, webhook, HEC), syslog RFC 5425 with
CEF, Splunk HEC and a signed webhook; each sink behind one interface
(:class:`collector.export.base.Sink`) with its own bounded queue, retries and
counted drops (:class:`collector.export.hub.ExportHub`). docs/exports.md."""

from collector.export.base import Item, Sink, SinkError
from collector.export.hub import ExportHub

__all__ = ["ExportHub", "Item", "Sink", "SinkError"]
