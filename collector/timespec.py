"""Parsing the times users type: ``--since 10m`` or ``--since 2024-05-01T12:00:00Z``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(?:\d+[smhd])+")
_PART = re.compile(r"(\d+)([smhd])")

SINCE_HELP = "a duration back from now (30s, 10m, 2h, 7d, 1h30m) or an RFC3339 time"


def parse_duration(text: str) -> timedelta:
    """``30s``, ``10m``, ``2h``, ``7d`` or combinations like ``1h30m``; ValueError otherwise."""
    if not _DURATION.fullmatch(text):
        raise ValueError(f"{text!r} is not a duration like 30s, 10m, 2h, 7d or 1h30m")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(text))
    return timedelta(seconds=seconds)


def parse_rfc3339(text: str) -> datetime:
    """An RFC3339 timestamp (offset required, ``Z`` allowed) as an aware datetime."""
    try:
        # RFC3339 allows lower-case "t" and "z"; fromisoformat does not.
        moment = datetime.fromisoformat(text.upper())
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC3339 time like 2024-05-01T12:00:00Z") from None
    # RFC3339 requires an offset; guessing local time vs UTC would shift an
    # audit window by hours without anyone noticing.
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset; add Z or an offset like +02:00")
    return moment


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """The moment ``text`` names: ``now`` minus a duration, or an RFC3339 time."""
    text = text.strip()
    if _DURATION.fullmatch(text):
        return (now or datetime.now(UTC)) - parse_duration(text)
    if text[:1].isdigit() and ("-" in text or ":" in text):
        return parse_rfc3339(text)
    raise ValueError(f"{text!r} is not {SINCE_HELP}")
