"""Running dcsub and dcctl as a user would, for the end-to-end tests."""

from __future__ import annotations

import subprocess
import sys


def run_cli(socket: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`args` starts with "dcsub" or "dcctl"; the command talks to the daemon at `socket`."""
    prog = {"dcsub": "dcsched.cli.dcsub", "dcctl": "dcsched.cli.dcctl"}[args[0]]
    out = subprocess.run(
        [sys.executable, "-m", prog, "--socket", socket, *args[1:]],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and out.returncode != 0:
        raise AssertionError(f"{args} failed ({out.returncode}): {out.stderr}")
    return out
