"""The one duration grammar: Slurm's clock forms, unit forms, and the caller's bare unit."""

from __future__ import annotations

import pytest

from dcsched.protocol.durations import format_duration, parse_duration, parse_seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        # Slurm's forms; a bare number is minutes
        (90, 5400),
        ("90", 5400),
        ("5", 300),
        ("90:30", 5430),  # MM:SS
        ("1:30:00", 5400),  # HH:MM:SS
        ("100:00:00", 360000),  # the leading field is unbounded
        ("2-12", 216000),  # D-HH
        ("2-12:30", 217800),  # D-HH:MM
        ("1-00:00:10", 86410),  # D-HH:MM:SS
        # unit forms
        ("90m", 5400),
        ("4h", 14400),
        ("2d", 172800),
        ("1w", 604800),
        ("30s", 30),
        ("1h30m", 5400),
        ("1.5h", 5400),
        (" 4H ", 14400),
        ("1h 30m", 5400),
    ],
)
def test_forms(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("value", "seconds"), [(90, 90), ("90", 90), (1.5, 1.5), ("2m", 120)])
def test_config_numbers_are_seconds(value: object, seconds: float) -> None:
    assert parse_seconds(value) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "cannot read"),
        ("4x", "cannot read"),
        ("-5", "cannot read"),
        ("h", "cannot read"),
        ("7 days", "cannot read"),
        ("1:2:3:4", "cannot read"),
        ("1-", "cannot read"),
        (0, "must be positive"),
        ("0:00", "must be positive"),
        (True, "expected a duration"),
        ([1], "expected a duration"),
        ("1:60", "below 60"),
        ("1:30:75", "below 60"),
        ("1-24", "below 24"),
        ("1-10:99", "below 60"),
        (float("inf"), "must be positive"),
    ],
)
def test_bad_forms_say_why(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


def test_a_bad_form_lists_what_to_write() -> None:
    with pytest.raises(ValueError, match='"4h"'):
        parse_duration("four hours")


@pytest.mark.parametrize("seconds", [1, 59, 3600, 5430, 86399, 86410, 30 * 86400])
def test_format_reads_back(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds
