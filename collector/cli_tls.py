"""TLS for the ``gpuaudit`` command: the flag group, what the flags resolve to,
the client channel to a collector, and one-sentence reasons when an RPC fails.

The collector, agent, events and status subcommands share the same flags:
mutual TLS from ``--tls-dir`` (or ``$GPUAUDIT_TLS_DIR``) or single files, or
an explicit ``--insecure``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from collector.cli_args import UsageError
from gpuaudit.tls import TlsConfigError, TlsFiles
from gpuaudit.v1 import collector_pb2_grpc

TLS_DIR_ENV = "GPUAUDIT_TLS_DIR"

RPC_TIMEOUT_S = 10.0
"""Deadline for every client RPC; a collector slower than this is reported."""


def add_tls_flags(p: argparse.ArgumentParser, example: str) -> None:
    """Add the TLS group; ``example`` says which ``certs init`` directory fits."""
    g = p.add_argument_group(
        "TLS", "mutual TLS is required unless --insecure; make certificates with "
        f"`gpuaudit certs init` (this command uses {example})",
    )
    g.add_argument("--tls-dir", metavar="DIR", default=None,
                   help=f"directory with ca.crt, tls.crt, tls.key (default: ${TLS_DIR_ENV})")
    g.add_argument("--tls-ca", metavar="PEM", type=Path, help="CA certificate(s) to trust "
                   "(own PKI; overrides DIR/ca.crt)")
    g.add_argument("--tls-cert", metavar="PEM", type=Path,
                   help="own certificate, leaf first (overrides DIR/tls.crt)")
    g.add_argument("--tls-key", metavar="PEM", type=Path,
                   help="own private key, unencrypted (overrides DIR/tls.key)")
    g.add_argument("--insecure", action="store_true",
                   help="plaintext gRPC with no authentication: for a laptop or a test only")


def resolve_tls(args: argparse.Namespace, address: str) -> TlsFiles | None:
    """The TLS files the flags name (checked), or None for ``--insecure``.

    Exactly one of TLS or ``--insecure``; an explicit ``--insecure`` wins over
    ``$GPUAUDIT_TLS_DIR`` (a flag beats the environment). Raises UsageError.
    """
    explicit = args.tls_dir or args.tls_ca or args.tls_cert or args.tls_key
    if args.insecure and explicit:
        raise UsageError("--insecure and --tls-* flags exclude each other: pass one or the other")
    if args.insecure:
        if not is_loopback(address):
            print(f"gpuaudit {args.command}: warning: --insecure on {address}: traffic is "
                  "plaintext and unauthenticated; anyone who can reach it can read or forge "
                  "events", file=sys.stderr)
        return None
    files = _tls_files(args, args.tls_dir or os.environ.get(TLS_DIR_ENV) or None)
    try:
        files.check()
    except TlsConfigError as err:
        raise UsageError(str(err)) from None
    return files


def _tls_files(args: argparse.Namespace, tls_dir: str | None) -> TlsFiles:
    base = TlsFiles.from_dir(tls_dir) if tls_dir else None
    ca = args.tls_ca or (base and base.ca)
    cert = args.tls_cert or (base and base.cert)
    key = args.tls_key or (base and base.key)
    if ca and cert and key:
        return TlsFiles(ca=ca, cert=cert, key=key)
    if base is None and not (args.tls_ca or args.tls_cert or args.tls_key):
        raise UsageError(
            f"no TLS certificate: pass --tls-dir DIR (or set ${TLS_DIR_ENV}; make one with "
            "`gpuaudit certs init --out DIR`), or --insecure for plaintext"
        )
    missing = [f for f, v in (("--tls-ca", ca), ("--tls-cert", cert), ("--tls-key", key)) if not v]
    raise UsageError(f"{', '.join(missing)} missing: pass all three, or --tls-dir DIR")


def is_loopback(address: str) -> bool:
    """True if ``HOST:PORT`` can only be reached from this machine."""
    host, _, _ = address.rpartition(":")
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextmanager
def collector_stub(args: argparse.Namespace) -> Iterator[collector_pb2_grpc.CollectorStub]:
    """A Collector stub over mutual TLS with the reader certificate, or plaintext."""
    tls = resolve_tls(args, args.collector)
    if tls is None:
        channel = grpc.insecure_channel(args.collector)
    else:
        channel = grpc.secure_channel(args.collector, tls.channel_credentials())
    with channel:
        yield collector_pb2_grpc.CollectorStub(channel)


# Substrings of gRPC's handshake failure details (BoringSSL / TSI wording).
_HANDSHAKE_MARKS = ("handshake", "ssl", "tls", "certificate", "tsi_")


def rpc_failure(address: str, err: grpc.RpcError) -> str:
    """One sentence for a failed RPC, naming the collector's address."""
    code = err.code() if isinstance(err, grpc.Call) else None
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return f"the collector at {address} refused this certificate: {details}"
    if "WRONG_VERSION_NUMBER" in (details or ""):
        return (f"the collector at {address} speaks plaintext (it runs --insecure), not TLS: "
                "pass --insecure too, or restart it with --tls-dir")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN) and any(
        m in (details or "").lower() for m in _HANDSHAKE_MARKS
    ):
        return (f"TLS handshake with the collector at {address} failed ({details}); check that "
                "both certificates come from the same CA, have not expired, and that the "
                "collector's certificate names this address (`gpuaudit certs init "
                "--collector-name`), or whether the collector runs --insecure")
    if code == grpc.StatusCode.UNAVAILABLE:
        return (f"cannot reach the collector at {address} ({details}); "
                "is `gpuaudit collector` running there (with TLS, unless you passed "
                "--insecure)?")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the collector at {address} did not answer within {RPC_TIMEOUT_S:g}s"
    return f"the collector at {address} answered {code.name if code else 'an error'}: {details}"
