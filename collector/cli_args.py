"""Argument types and the usage error shared by the ``gpuaudit`` subcommands.

Each ``*_arg`` type raises ``argparse.ArgumentTypeError``, which argparse turns
into exit 2 with the flag named; ``UsageError`` is for what only a command's
``run`` function can judge (flag combinations, files), and ``collector.cli.main``
turns it into exit 2 too.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable, Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from collector.server import split_listen
from collector.timespec import parse_since


class UsageError(Exception):
    """A flag combination or flag value that cannot work; exit 2 with this message."""


def listen_arg(text: str) -> str:
    """``HOST:PORT``, checked the way the collector will parse it."""
    try:
        split_listen(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def since_arg(text: str) -> Timestamp:
    """A ``--since`` value (see ``collector.timespec``) as a protobuf Timestamp."""
    try:
        moment = parse_since(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


def not_negative(kind: Callable[[str], float | int]) -> Callable[[str], float | int]:
    """An argument type: ``kind(text)``, refused if below 0."""
    def parse(text: str) -> float | int:
        value = _number(kind, text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
        return value

    return parse


def positive(kind: Callable[[str], float | int]) -> Callable[[str], float | int]:
    """An argument type: ``kind(text)``, refused unless above 0."""
    def parse(text: str) -> float | int:
        value = _number(kind, text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value

    return parse


def _number(kind: Callable[[str], float | int], text: str) -> float | int:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def split_values(values: Sequence[str]) -> list[str]:
    """Flatten repeated and comma-separated flag values."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def cidr_list(text: str) -> str:
    """A comma-separated list of networks (``--cluster-cidrs``), checked, returned as given.

    Host bits set (10.0.0.1/24) are refused: the operator most likely meant
    something else, and a wrong cluster boundary mislabels every connection.
    """
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            ipaddress.ip_network(part, strict=True)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{part!r} is not a network: {err}") from None
    return text
