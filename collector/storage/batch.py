"""A batch as the store receives it: parsed events plus each event's bytes as sent.

The store keeps those bytes, not a re-serialization, so a node's batch
signature (gpuaudit/integrity.py) can be checked against what is stored,
offline, for as long as the events are kept: protobuf promises no
byte-identical re-serialization (map fields have no defined order).
"""

from __future__ import annotations

from collections.abc import Sequence

from gpuaudit.v1 import collector_pb2, events_pb2


class ReceivedBatch(list[events_pb2.Event]):
    """The events of one batch (a list, as the Storage interface takes them), plus
    ``bodies`` (each event's bytes as sent), the node's ``signature`` and the
    DER of the certificate the node connected with (``cert_der``, b"" without TLS)."""

    def __init__(self, events: Sequence[events_pb2.Event], bodies: Sequence[bytes],
                 signature: collector_pb2.BatchSignature | None, cert_der: bytes = b"") -> None:
        super().__init__(events)
        if len(bodies) != len(events):
            raise ValueError(f"{len(bodies)} event bodies for {len(events)} events")
        self.bodies = list(bodies)
        self.signature = signature
        self.cert_der = cert_der


def bodies_of(events: Sequence[events_pb2.Event]) -> list[bytes]:
    """The bytes to store for ``events``: as received when known, else serialized here
    (the collector's own events, tests and tools that store parsed events)."""
    if isinstance(events, ReceivedBatch):
        return events.bodies
    return [ev.SerializeToString() for ev in events]
