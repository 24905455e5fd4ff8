"""Logs: plain lines with levels on stderr; under journald, the level as a priority."""

from __future__ import annotations

import subprocess
import sys

CODE = (
    "from dcsched import setup_logging; import logging; setup_logging('info');"
    " logging.getLogger('dcsched.x').warning('disk full'); logging.getLogger('y').debug('no')"
)


def run(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout == ""
    return out.stderr


def test_journald_gets_priorities_and_no_timestamps() -> None:
    assert run({"JOURNAL_STREAM": "8:1234"}) == "<4>WARNING dcsched.x: disk full\n"


def test_a_terminal_gets_timestamps() -> None:
    line = run({})
    assert line.endswith(" WARNING dcsched.x: disk full\n") and line[:4].isdigit()
