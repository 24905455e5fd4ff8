"""dcctl queue --format (squeue's field codes) and --since/--until times, without a daemon."""

from __future__ import annotations

import argparse
import datetime

import pytest

from dcsched.cli import queue_format
from dcsched.cli.dcctl import build_parser, when

RUNNING = {
    "id": 12,
    "name": "llama-ft",
    "user": "alice",
    "account": "vision",
    "qos": "normal",
    "state": "RUNNING",
    "elapsed_s": 90,
    "time_limit_s": 3600,
    "nodes": 2,
    "gpus_per_node": 4,
    "hosts": ["gpu001", "gpu002"],
    "gpu_util": 87.4,
    "reason": "",
}
PENDING = {**RUNNING, "id": 13, "state": "PENDING", "hosts": [], "reason": "Resources"}
PENDING.pop("elapsed_s")
FAILED = {
    **RUNNING,
    "id": 11,
    "state": "FAILED",
    "exit_code": 3,
    "reason": "node 0 (gpu001) ended with exit code 3",
}
REFUSED = {
    **RUNNING,
    "id": 10,
    "state": "FAILED",
    "hosts": [],
    "reason": "launch refused on gpu001: workdir /x does not exist on this host",
}


def test_the_default_format_is_the_classic_table() -> None:
    out = queue_format.render(queue_format.DEFAULT, [RUNNING, PENDING]).splitlines()
    assert out[0].split() == [
        "JOBID", "NAME", "USER", "ACCOUNT", "STATE", "TIME", "LIMIT", "NODES", "GPUS", "UTIL",
        "NODELIST(REASON)",
    ]  # fmt: skip
    assert out[1].split()[-1] == "gpu[001-002]" and "87%" in out[1]
    assert out[2].endswith("(Resources)")


@pytest.mark.parametrize(
    ("fmt", "job", "line"),
    [
        ("%i|%t|%L", RUNNING, "12|R|00:58:30"),
        ("%.6i %5j|", RUNNING, "    12 llama|"),  # right-justified; cut to the width
        ("%i %R", FAILED, "11 exit 3 (node 0 (gpu001) ended with exit code 3)"),
        ("%r", REFUSED, "no exit status (launch refused on gpu001: workdir /x does not exist"),
        ("%N %D %b", RUNNING, "gpu[001-002] 2 8"),
        ("%i 100%%", RUNNING, "12 100%"),
    ],
)
def test_fields(fmt: str, job: dict, line: str) -> None:
    assert queue_format.render(fmt, [job], header=False).startswith(line)


@pytest.mark.parametrize(("fmt", "words"), [("%i %Y", "unknown field %Y"), ("x", "no field")])
def test_bad_formats_say_why(fmt: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        queue_format.parse(fmt)


def test_times_for_since_and_until() -> None:
    now = 1_000_000.0
    assert when("2h", now) == now - 7200
    assert when("now-30m", now) == now - 1800
    assert when("90", now) == now - 5400  # a bare number is minutes
    assert when("1-00", now) == now - 86400
    assert when("now", now) == now
    assert when("2026-11-25T14:30") == datetime.datetime(2026, 11, 25, 14, 30).timestamp()
    with pytest.raises(argparse.ArgumentTypeError, match="cannot read 'yesterday'"):
        when("yesterday", now)


def test_hosts_are_hostlist_expressions() -> None:
    a = build_parser().parse_args(["drain", "gpu[001-003],login", "--reason", "fan"])
    assert a.hosts == ["gpu001", "gpu002", "gpu003", "login"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["resume", "gpu[3-1]"])
