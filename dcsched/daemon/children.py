"""Child processes that never outlive the process that started them (Linux).

Two mechanisms, because one is not enough for `dcd demo`:

- `die_with_parent(sig)`: a preexec_fn that asks the kernel (prctl PR_SET_PDEATHSIG) to
  send `sig` to the child when its parent dies, SIGKILL included. It covers the broker and
  the agents, the demo's own children.
- `Guard`: a tiny separate process that sweeps away every process carrying a token in its
  environment once the parent is gone. It covers what the agents start: a job's runner
  detaches from its agent on purpose (so that a restarted agent re-adopts it), so jobs are
  no descendants of the agent, and a death signal to the agent never reaches them. The
  environment is inherited by the runner, torchrun and every worker (each in a session of
  its own), however they are reparented, so a token in it finds them all.

The guard learns that its parent died from a pipe: the parent holds the only write end, so
the guard's read returns EOF when the parent exits in any way (SIGKILL included) or closes
it. That has no race: a parent already dead before the guard reads gives EOF at once.

This file also runs as a script with `python -I` (`guard` below), so it imports only the
standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import IO

PR_SET_PDEATHSIG = 1

# dlopen(NULL): the symbols already loaded, libc's among them (find_library would run ldconfig).
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
if _prctl is not None:  # variadic in C: pass full-width arguments
    _prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    _prctl.restype = ctypes.c_int


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A preexec_fn: the child gets `sig` when the parent dies (None where there is no
    prctl: not Linux).

    The kernel sends it when the *thread* that forked the child exits, so start such
    children from the main thread (asyncio's subprocess functions do, from the loop). It
    is also cleared when the child changes its user or group: a child that drops root
    privileges is no longer tied. Everything it calls is looked up here, before the fork:
    the child only calls it.
    """
    if _prctl is None:
        return None
    parent = os.getpid()
    prctl, getppid, kill, getpid = _prctl, os.getppid, os.kill, os.getpid

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The parent may have died between the fork and the prctl: then nobody will send
        # the signal, and the child was reparented already.
        if getppid() != parent:
            kill(getpid(), sig)

    return preexec


# --- finding and killing processes by an environment token ----------------------------------


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return ""
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest[0] if rest else ""


def tagged_pids(var: str, value: str) -> list[int]:
    """Live processes whose environment holds var=value (other users' processes are
    unreadable unless we are root, and skipped)."""
    item = f"{var}={value}".encode()
    me, found = os.getpid(), list[int]()
    if not os.path.isdir("/proc"):
        return found
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if item in env.split(b"\0") and _state(int(name)) not in ("", "Z", "X"):
            found.append(int(name))
    return sorted(found)


def sweep(var: str, value: str, timeout: float = 30.0) -> list[int]:
    """SIGKILLs every process tagged var=value, again until none is left (one may fork
    between a scan and its kill); returns the pids it killed."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while (found := tagged_pids(var, value)) and time.monotonic() < deadline:
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed += [p for p in found if p not in killed]
        time.sleep(0.05)
    return killed


# --- the guard ------------------------------------------------------------------------------


class Guard:
    """A process that kills everything tagged with `token` once this process is gone.

    Put `env()` into every child's environment; call `close()` after a clean stop to have
    the guard sweep what is left (normally nothing) and exit.
    """

    def __init__(self, var: str, token: str, proc: subprocess.Popen[bytes], write_fd: int) -> None:
        self.var = var
        self.token = token
        self.proc = proc
        self._write_fd = write_fd

    @classmethod
    def start(
        cls,
        token: str,
        log: IO[bytes] | int = subprocess.DEVNULL,
        var: str = "DCSCHED_GUARD_TOKEN",
    ) -> Guard:
        read_fd, write_fd = os.pipe()  # both close-on-exec: no other child holds the write end
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", __file__, "guard", "--fd", str(read_fd), "--var", var,
                 "--token", token],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                pass_fds=(read_fd,),
                # Out of the terminal's session: closing the terminal must not stop it.
                start_new_session=True,
            )  # fmt: skip
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        return cls(var, token, proc, write_fd)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**(os.environ if base is None else base), self.var: self.token}

    def close(self, timeout: float = 60.0) -> int | None:
        """Lets the guard sweep now and waits for it (blocking); its exit status."""
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


def guard(fd: int, var: str, token: str, out: IO[str] = sys.stdout) -> list[int]:
    """Blocks until the pipe's write end is closed, then sweeps."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    while os.read(fd, 4096):
        pass
    killed = sweep(var, token)
    if killed:
        print(f"dcsched guard: killed {len(killed)} left-over processes: {killed}", file=out)
    return killed


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="children.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("guard", help="sweep tagged processes once the pipe closes")
    g.add_argument("--fd", type=int, required=True)
    g.add_argument("--var", required=True)
    g.add_argument("--token", required=True)
    args = p.parse_args(None if argv is None else list(argv))
    guard(args.fd, args.var, args.token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
