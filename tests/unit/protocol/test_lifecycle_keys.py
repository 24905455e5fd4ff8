"""Job file keys for signals, requeue and arrays: `signal`, `requeue`, `max_restarts`, `array`."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from dcsched.protocol.jobspec import (
    DEFAULT_MAX_RESTARTS,
    JobSpecError,
    max_restarts,
    parse_array,
    parse_dependencies,
    parse_signal,
    preemptible,
    validate_spec,
    warning_signal,
)


def spec(**kw: Any) -> dict[str, Any]:
    return {"name": "t", "command": ["t.py"], "resources": {"time_limit": "1h"}, **kw}


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("USR1@300", (signal.SIGUSR1, 300)),
        ("SIGUSR2@90", (signal.SIGUSR2, 90)),
        ("usr1", (signal.SIGUSR1, 60)),
        ("TERM@5", (signal.SIGTERM, 5)),
    ],
)
def test_signal(text: str, want: tuple[int, int]) -> None:
    assert parse_signal(text) == want


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("KILL@10", "cannot be a warning"),
        ("STOP", "cannot be a warning"),
        ("NOPE@10", "names no signal"),
        ("USR1@5m", "not a number of seconds"),
        ("USR1@0", "out of range"),
    ],
)
def test_bad_signal(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_signal(text)


@pytest.mark.parametrize(
    ("text", "tasks", "limit"),
    [
        ("0-3", (0, 1, 2, 3), None),
        ("0-99%8", tuple(range(100)), 8),
        ("0-15:4", (0, 4, 8, 12), None),
        ("1,3,5", (1, 3, 5), None),
        ("0-2,7,10-14:2%2", (0, 1, 2, 7, 10, 12, 14), 2),
        ("5", (5,), None),
    ],
)
def test_array(text: str, tasks: tuple[int, ...], limit: int | None) -> None:
    assert parse_array(text) == (tasks, limit)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("5-1", "empty range"),
        ("0-9%0", "positive"),
        ("a-b", "cannot read"),
        ("0-5000", "more than 1000"),
        ("0-3:0", "empty range"),
        ("", "cannot read"),
    ],
)
def test_bad_array(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_array(text)


def test_valid_keys_round_trip() -> None:
    s = validate_spec(spec(signal="USR1@300", requeue=True, max_restarts=2, array="0-3%2"))
    d = {"signal": s.signal, "requeue": s.requeue, "max_restarts": s.max_restarts}
    assert warning_signal(d) == (signal.SIGUSR1, 300)
    assert max_restarts(d) == 2
    assert max_restarts({"requeue": True}) == DEFAULT_MAX_RESTARTS
    assert max_restarts({}) == 0
    assert warning_signal({}) is None


@pytest.mark.parametrize(
    ("keys", "want"),
    [
        ({}, False),
        ({"requeue": True}, True),  # a job that may be requeued may be preempted
        ({"requeue": True, "preemptible": False}, False),  # unless it opts out
        ({"preemptible": True}, True),
        ({"requeue": False, "preemptible": True}, True),
    ],
)
def test_preemptible_follows_requeue_unless_set(keys: dict[str, Any], want: bool) -> None:
    s = validate_spec(spec(**keys))
    assert preemptible({"requeue": s.requeue, "preemptible": s.preemptible}) is want


@pytest.mark.parametrize(
    ("over", "key", "words"),
    [
        ({"signal": "KILL@3"}, "signal", "cannot be a warning"),
        ({"signal": "USR1@3600"}, "signal", "not less than the time limit"),
        ({"max_restarts": 2}, "max_restarts", "requeue = true"),
        ({"requeue": True, "max_restarts": -1}, "max_restarts", "out of range"),
        ({"array": "9-1"}, "array", "empty range"),
        ({"requeue": "yes"}, "requeue", "Expected `bool`"),
    ],
)
def test_bad_keys_name_the_key(over: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(JobSpecError) as err:
        validate_spec(spec(**over))
    (problem,) = err.value.problems
    assert problem.key == key
    assert words in str(problem)


def test_dependency_kinds() -> None:
    s = validate_spec(spec(dependency=["after:3", "afterok:12_4:13", "singleton"]))
    assert parse_dependencies(s.dependency) == (
        ("after", "3"),
        ("afterok", "12_4"),
        ("afterok", "13"),
    )
    with pytest.raises(JobSpecError, match="cannot read"):
        validate_spec(spec(dependency=["before:3"]))
