"""The wrapper every job runs under: `python -m dcsched.agents.runner --status-file F -- ARGV`.

It starts ARGV in its own process group, forwards SIGTERM/SIGINT sent to it alone, waits,
and writes the exit code or signal to the status file: for torchrun, which exits 1 whenever
a worker fails, the failed worker's code from torchrun's report in the log. So an agent
restarted while a job runs (and no longer its parent) still learns the real exit status.

With `--status-fd N` it writes the status through that descriptor instead of by name: the
agent opens the file in a folder only root writes to, so the job's user never needs a
writable folder there (a user-owned folder is where symlinks aimed at root are planted).

With `--ready-fd N` it first detaches (forks; the first process exits at once, so the agent
never keeps a child of its own) and writes {"pid", "child_pid"} or {"error"} to fd N once
ARGV has started. Standard library only: the agent also runs it as a script with `python -I`.

With `--hold-fd N` it first waits for one byte on fd N: meanwhile the agent moves it into
the job's cgroup, so everything the job starts is in it from the first instruction. An
end of file instead (the agent could not place it) makes it exit at once, running nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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


def write_json_fd(fd: int, data: dict[str, Any]) -> None:
    """Writes into the empty file the agent made; a reader sees an empty file (still running)
    or the whole JSON (one small write)."""
    buf = json.dumps(data).encode()
    done = 0
    while done < len(buf):
        done += os.pwrite(fd, buf[done:], done)
    os.fsync(fd)


def cancel_marker(status_file: str) -> str:
    """Exists while the agent signals the whole group: the child has the signal already."""
    return status_file + ".cancel"


# torchrun exits 1 whatever its workers' exit codes were; the worker's own code is in the
# "Root Cause" block it prints (torch.distributed.elastic ChildFailedError, stable since 1.9).
_ROOT_CAUSE = "Root Cause (first observed failure):"
_EXITCODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)", re.MULTILINE)
_TAIL_BYTES = 64 * 1024


def worker_exit_code(log_file: str) -> int | None:
    """The first failed worker's exit code from torchrun's failure report, if the log has one
    (negative: killed by that signal)."""
    try:
        with open(log_file, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - _TAIL_BYTES))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    at = tail.rfind(_ROOT_CAUSE)
    if at < 0:
        return None
    m = _EXITCODE.search(tail, at)
    return int(m.group(1)) if m else None


def exit_status(rc: int, log_file: str) -> dict[str, Any]:
    if rc < 0:
        return {"signal": -rc}
    if rc == 1 and log_file:
        worker = worker_exit_code(log_file)
        if worker is not None and worker != 0:
            key, value = ("exit_code", worker) if worker > 0 else ("signal", -worker)
            return {key: value, "launcher_exit_code": rc}
    return {"exit_code": rc}


def _report(fd: int, data: dict[str, Any]) -> None:
    if fd >= 0:
        os.write(fd, json.dumps(data).encode() + b"\n")
        os.close(fd)


def run(
    cmd: list[str], status_file: str, ready_fd: int = -1, log_file: str = "", status_fd: int = -1
) -> int:
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []
    marker = cancel_marker(status_file)

    def write_status(data: dict[str, Any]) -> None:
        if status_fd >= 0:
            write_json_fd(status_fd, data)
        else:
            write_json_atomic(status_file, data)

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
        write_status({"exit_code": 127, "error": msg})
        _report(ready_fd, {"error": msg})
        return 127
    _report(ready_fd, {"pid": os.getpid(), "child_pid": child.pid})
    for signum in pending:
        child.send_signal(signum)
    rc = child.wait()
    write_status(exit_status(rc, log_file))
    return rc if rc >= 0 else 128 - rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dcsched.agents.runner")
    p.add_argument("--status-file", required=True)
    p.add_argument("--status-fd", type=int, default=-1, help="write the status through this fd")
    p.add_argument("--ready-fd", type=int, default=-1)
    p.add_argument("--log-file", default="", help="the job's log, for torchrun's failure report")
    p.add_argument("--hold-fd", type=int, default=-1, help="wait for a byte on this fd first")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd: list[str] = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("no command after --")
    if args.hold_fd >= 0:
        go = os.read(args.hold_fd, 1)
        os.close(args.hold_fd)
        if not go:
            return 125  # the agent gave up on this launch; it reports why
    if args.ready_fd >= 0 and os.fork() > 0:
        os._exit(0)  # the agent reaps this first process; the job runs under the fork
    return run(cmd, args.status_file, args.ready_fd, args.log_file, args.status_fd)


if __name__ == "__main__":
    sys.exit(main())
