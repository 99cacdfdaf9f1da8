"""Parsing of --since values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from collector.timespec import parse_duration, parse_rfc3339, parse_since

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("2h", 7200), ("7d", 604800), ("1h30m", 5400), ("0s", 0),
     ("1d2h3m4s", 93784)],
)  # fmt: skip
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_since(text, now=NOW) == NOW - timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["10", "10x", "m10", "-5m", "1.5h", "10M", "", "1 h"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01t10:00:00.123456789z", datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2024-05-01 10:00:00-05:30",
         datetime(2024, 5, 1, 10, tzinfo=timezone(-timedelta(hours=5, minutes=30)))),
    ],
)  # fmt: skip
def test_rfc3339(text, expected):
    assert parse_since(text, now=NOW) == expected


def test_rfc3339_needs_an_offset():
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_since("2024-05-01T10:00:00")


@pytest.mark.parametrize("text", ["2024-13-01T00:00:00Z", "2024-05-01T25:00:00Z"])
def test_rfc3339_rejects_impossible_times(text):
    with pytest.raises(ValueError, match="not an RFC3339 time"):
        parse_rfc3339(text)


@pytest.mark.parametrize("text", ["yesterday", "10x", "", "now"])
def test_since_rejects_garbage_with_a_helpful_message(text):
    with pytest.raises(ValueError, match=r"duration back from now \(30s, 10m"):
        parse_since(text)


def test_since_defaults_to_the_real_clock():
    before = datetime.now(UTC)
    moment = parse_since("1m")
    assert before - timedelta(minutes=1, seconds=5) < moment <= datetime.now(UTC)
