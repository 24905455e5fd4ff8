"""How a job ended, in one short text: its exit status and its reason, for every view
(`dcctl show`, `dcctl queue --all`, dctop's jobs and history)."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import Any

ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")


def exit_text(exit_code: int | None, sig: int | None) -> str:
    """ "exit 3", "signal 9 (SIGKILL)", or "" when no process reported one."""
    if sig:
        try:
            return f"signal {sig} ({signal.Signals(sig).name})"
        except ValueError:
            return f"signal {sig}"
    return "" if exit_code is None else f"exit {exit_code}"


def end_text(job: Mapping[str, Any]) -> str:
    """ "exit 3 (node 0 (n1) ended with exit code 3)"; a job that never ran a process says
    so: "no exit status (launch refused on n1: workdir /x does not exist on this host)"."""
    status = exit_text(job.get("exit_code"), job.get("signal"))
    reason = str(job.get("reason") or "")
    if not status and job.get("state") in ENDED and job.get("state") != "COMPLETED":
        status = "no exit status" if reason else ""
    if status and reason:
        return f"{status} ({reason})"
    return status or reason
