"""The wrapper every job runs under: `python -m dcsched.agents.runner --status-file F -- ARGV`.

It starts ARGV in its own process group, forwards SIGTERM/SIGINT sent to it alone, waits,
and writes the exit code or signal to the status file. So an agent restarted while a job
runs (and thus no longer its parent) still learns the job's real exit status.

With `--ready-fd N` it first detaches (forks; the first process exits at once, so the agent
never keeps a child of its own) and writes {"pid", "child_pid"} or {"error"} to fd N once
ARGV has started. Standard library only: the agent also runs it as a script with `python -I`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from types import FrameType
from typing import Any


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cancel_marker(status_file: str) -> str:
    """Exists while the agent signals the whole group: the child has the signal already."""
    return status_file + ".cancel"


def _report(fd: int, data: dict[str, Any]) -> None:
    if fd >= 0:
        os.write(fd, json.dumps(data).encode() + b"\n")
        os.close(fd)


def run(cmd: list[str], status_file: str, ready_fd: int = -1) -> int:
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []
    marker = cancel_marker(status_file)

    def forward(signum: int, _frame: FrameType | None) -> None:
        if os.path.exists(marker):
            return
        if child is None:
            pending.append(signum)
        else:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    try:
        child = subprocess.Popen(cmd)
    except OSError as exc:
        msg = f"cannot start {cmd[0] if cmd else '(empty command)'}: {exc.strerror or exc}"
        print(f"[dcsched] {msg}", file=sys.stderr, flush=True)
        write_json_atomic(status_file, {"exit_code": 127, "error": msg})
        _report(ready_fd, {"error": msg})
        return 127
    _report(ready_fd, {"pid": os.getpid(), "child_pid": child.pid})
    for signum in pending:
        child.send_signal(signum)
    rc = child.wait()
    write_json_atomic(status_file, {"exit_code": rc} if rc >= 0 else {"signal": -rc})
    return rc if rc >= 0 else 128 - rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dcsched.agents.runner")
    p.add_argument("--status-file", required=True)
    p.add_argument("--ready-fd", type=int, default=-1)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd: list[str] = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("no command after --")
    if args.ready_fd >= 0 and os.fork() > 0:
        os._exit(0)  # the agent reaps this first process; the job runs under the fork
    return run(cmd, args.status_file, args.ready_fd)


if __name__ == "__main__":
    sys.exit(main())
