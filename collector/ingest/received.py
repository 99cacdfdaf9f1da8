"""Ingest reads raw requests: each event's bytes exactly as the node sent them.

Those bytes are what the store keeps (collector.storage.batch.ReceivedBatch)
and what the node signed.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import DecodeError

from collector.storage.batch import ReceivedBatch
from gpuaudit import integrity
from gpuaudit.tls import PEER_CERT_KEY
from gpuaudit.v1 import collector_pb2, collector_pb2_grpc


class RawBatch:
    """What Ingest's request deserializer gives: the parsed batch and its raw bytes."""

    __slots__ = ("batch", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.batch = collector_pb2.EventBatch.FromString(raw)  # DecodeError for garbage

    def received(self, cert_der: bytes = b"") -> ReceivedBatch:
        try:
            bodies = integrity.event_bodies(self.raw)
        except integrity.WireError as err:  # FromString accepted it, so this cannot be
            raise DecodeError(str(err)) from err
        sig = self.batch.signature if self.batch.HasField("signature") else None
        return ReceivedBatch(self.batch.events, bodies, sig, cert_der)


def peer_cert_der(context: Any) -> bytes:
    """DER of the client certificate of this TLS connection, b"" when there is none."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = (context.auth_context() or {}).get(PEER_CERT_KEY, [b""])[0]
    if not pem:
        return b""
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


class _Capture:
    """Stands in for a server to capture the generated method handlers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, _handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.service, self.handlers = service, dict(handlers)


def add_collector_service(servicer: Any, server: grpc.aio.Server) -> None:
    """Register the Collector service on ``server``, with Ingest reading raw bytes.

    The generated registration is reused for every other method (and any added
    to the proto later); only Ingest's request deserializer is replaced by
    :class:`RawBatch`.
    """
    capture = _Capture()
    collector_pb2_grpc.add_CollectorServicer_to_server(servicer, capture)
    ingest = capture.handlers["Ingest"]
    capture.handlers["Ingest"] = grpc.stream_stream_rpc_method_handler(
        ingest.stream_stream, request_deserializer=RawBatch,
        response_serializer=ingest.response_serializer)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(capture.service, capture.handlers),))
    # grpc-stubs predates registered methods (grpcio >= 1.63); the generated code calls it too
    server.add_registered_method_handlers(  # type: ignore[attr-defined]
        capture.service, capture.handlers)
