"""Starts, watches and stops a job's node part: torchrun under the runner wrapper.

The runner detaches from the agent, so every job, launched by this agent process or by an
earlier one, is watched the same way: through its status file and /proc. That is what lets
a restarted agent re-adopt running jobs and still report their real exit codes.

A job's files live in `logs/<job>/`, a folder only root (the agent) writes to: the agent
creates each file afresh there, never through a symlink, and hands the job's user the log
file alone (by fchown on its fd); the runner writes the status through an fd it inherits.
So no name a user controls is ever followed as root.

Where the host has cgroups (see cgroups.py), the runner starts held: the agent moves it into
the job's own cgroup, which fences the GPUs it was not given, and only then lets it go on.
Cancel's SIGKILL and the clean-up after the job's end kill the whole cgroup.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pwd
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcsched.agents import runner
from dcsched.agents.cgroups import CgroupError, Cgroups, Usage
from dcsched.agents.errors import INVALID, PORT_IN_USE, LaunchError
from dcsched.agents.logs import open_no_follow
from dcsched.agents.procs import TAG_VAR, ProcScanner, is_alive, kill_group, kill_pids, read_stat
from dcsched.agents.state import JobRecord
from dcsched.protocol.messages import Launch

log = logging.getLogger("dcsched.agent")

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_START_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class ExitStatus:
    exit_code: int | None
    signal: int | None
    lost: bool = False  # gone without a status file and without a cancel: killed from outside


def torchrun_argv(launch: Launch, torchrun: str = "torchrun") -> list[str]:
    head = [launch.python, "-m", "torch.distributed.run"] if launch.python else [torchrun]
    if launch.no_python:  # a program, not a Python script: torchrun execs it as it is
        head.append("--no-python")
    return [
        *head,
        "--nnodes", str(launch.nnodes),
        "--nproc-per-node", str(launch.nproc_per_node),
        "--node-rank", str(launch.node_rank),
        "--master-addr", launch.master_addr,
        "--master-port", str(launch.master_port),
        *launch.command,
    ]  # fmt: skip


def job_env(
    launch: Launch, base: dict[str, str], tag: str, user: pwd.struct_passwd | None = None
) -> dict[str, str]:
    env = dict(base)
    if user is not None:
        env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    env.setdefault("PYTHONUNBUFFERED", "1")  # so `dcctl logs -f` sees output as it happens
    env.update(launch.env)
    env.update(
        CUDA_VISIBLE_DEVICES=",".join(str(g) for g in launch.gpus),
        # NVML numbers GPUs in PCI order; CUDA must count the same way for the indexes to match.
        CUDA_DEVICE_ORDER="PCI_BUS_ID",
        DCSCHED_JOB_ID=launch.job_id,
        DCSCHED_NODE_RANK=str(launch.node_rank),
    )
    env[TAG_VAR] = tag
    return env


def valid_job_id(job_id: str) -> bool:
    """A job id is a file name under logs/: no path, no dot-dot."""
    return bool(_JOB_ID.match(job_id))


def check_launch(launch: Launch, valid_gpus: set[int] | None = None) -> None:
    """Refuses, with code INVALID, what could never run here; before anything is forked."""
    if not valid_job_id(launch.job_id):
        raise LaunchError(f"job id {launch.job_id!r} is not a safe file name", INVALID)
    if not launch.command:
        raise LaunchError("the job has no command", INVALID)
    # exec() takes C strings: a NUL byte would raise deep inside subprocess.
    texts = [(f"command argument {i}", a) for i, a in enumerate(launch.command)]
    texts += [("workdir", launch.workdir), ("user", launch.user), ("[torchrun] python",
              launch.python or ""), ("master address", launch.master_addr)]  # fmt: skip
    for k, v in launch.env.items():
        if not k or "=" in k or "\0" in k:
            raise LaunchError(f"environment variable name {k!r} is not valid", INVALID)
        texts.append((f"environment variable {k}", v))
    for what, text in texts:
        if "\0" in text:
            raise LaunchError(f"the job's {what} contains a NUL byte", INVALID)
    if not 0 < launch.master_port < 65536:
        raise LaunchError(f"master port {launch.master_port} is not a TCP port", INVALID)
    if valid_gpus is not None and (bad := sorted(set(launch.gpus) - valid_gpus)):
        raise LaunchError(
            f"GPUs {bad} do not exist on this host (it has {sorted(valid_gpus)})", INVALID
        )


def _missing(path: str) -> bool:
    """Known not to be there; a folder root may not read (NFS root_squash) proves nothing."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def check_command(launch: Launch, workdir: str, path: str | None) -> None:
    """Refuses, with code INVALID, a command that is not there: a script missing from the
    workdir, a program found neither there (a path) nor on the job's PATH (a name)."""
    first = launch.command[0]
    if not launch.no_python:
        # -m MODULE: Python finds it, or says why in the log
        if not first.startswith("-") and _missing(os.path.join(workdir, first)):
            raise LaunchError(
                f"script {first} not found in the workdir {workdir} on this host", INVALID
            )
        return
    if "/" in first:
        if not _missing(os.path.join(workdir, first)):
            return
    elif shutil.which(first, path=path) is not None:
        return
    raise LaunchError(
        f"command {first} not found on this host (a path is looked up in the workdir "
        f"{workdir}, a name on PATH); it runs through torchrun --no-python as it is not a "
        "Python script",
        INVALID,
    )


def ending_words(exit_code: int | None, sig: int | None, reason: str) -> str:
    """The log's last line, written by the agent when the node's part ends."""
    why = {
        "timeout": "stopped: the time limit was reached",
        "cancelled": "stopped: cancelled",
        "requeued": "stopped: requeued (it will run again)",
        "node_fail": "stopped: another node of the job was lost",
        "failed": "stopped: another node of the job failed",
        "lost": "its process was lost (killed from outside the agent)",
    }.get(reason, "")
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        status = f"signal {sig} ({name})"
    elif exit_code is not None:
        status = f"exit code {exit_code}"
    else:
        status = "no exit status"
    return f"{why or 'ended'}: {status}"


def check_port_free(port: int, host: str) -> None:
    """Binds the master port as torchrun's store will (every address, SO_REUSEADDR, IPv6
    dual-stack where the host has IPv6), then lets it go: a port taken now fails the job's
    rendezvous later, with an error nobody reads."""
    families = [socket.AF_INET6, socket.AF_INET] if socket.has_ipv6 else [socket.AF_INET]
    for family in families:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.bind(("::" if family == socket.AF_INET6 else "", port))
            return
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise LaunchError(f"master port {port} is in use on {host}", PORT_IN_USE) from None
            if family == families[-1]:
                raise LaunchError(f"cannot bind master port {port} on {host}: {exc}") from None
            # No IPv6 here: try IPv4 alone.


def read_status_file(path: str) -> ExitStatus | None:
    try:
        with open_no_follow(path) as f:
            data: dict[str, Any] = json.load(f)
    except (OSError, ValueError):
        return None  # not there yet, or still empty: the job runs
    code, sig = data.get("exit_code"), data.get("signal")
    return ExitStatus(
        int(code) if code is not None else None, int(sig) if sig is not None else None
    )


class Launcher:
    def __init__(
        self,
        state_dir: str | Path,
        torchrun: str = "torchrun",
        runner_python: str = "",
        host: str = "",
        cgroups: Cgroups | None = None,
    ) -> None:
        self.logs_dir = Path(state_dir) / "logs"
        self.torchrun = torchrun
        self.host = host or os.uname().nodename
        # Any Python 3.11+ runs the runner (standard library only); the job's user must be
        # able to execute it.
        self.runner_python = runner_python or sys.executable
        self.scanner = ProcScanner()
        # Without one, jobs get no cgroup; a restarted agent still finds those they have.
        self.cgroups = cgroups or Cgroups.detect("off")

    def paths(self, job_id: str, node_rank: int) -> tuple[Path, Path]:
        d = self.logs_dir / job_id
        return d / f"node{node_rank}.log", d / f"node{node_rank}.status"

    # --- start --------------------------------------------------------------------------------

    def start(self, launch: Launch, valid_gpus: set[int] | None = None) -> JobRecord:
        """Starts the node part; blocks for the runner's start-up (tens of ms)."""
        check_launch(launch, valid_gpus)
        user, popen_user = self._user(launch.user)
        workdir = launch.workdir or (user.pw_dir if user else os.getcwd())
        if not os.path.isdir(workdir):
            raise LaunchError(f"workdir {workdir} does not exist on this host", INVALID)
        tag = secrets.token_hex(8)
        env = job_env(launch, dict(os.environ), tag, user)
        argv = torchrun_argv(launch, self.torchrun)
        if shutil.which(argv[0], path=env.get("PATH")) is None:
            hint = "[torchrun] python" if launch.python else "[agent] torchrun"
            raise LaunchError(f"{argv[0]} not found on this host (see {hint})", INVALID)
        check_command(launch, workdir, env.get("PATH"))
        if launch.node_rank == 0:
            check_port_free(launch.master_port, self.host)

        log_path, status_path = self.paths(launch.job_id, launch.node_rank)
        try:
            cgroup = self.cgroups.prepare(f"{launch.job_id}_{launch.node_rank}_{tag}", launch.gpus)
        except CgroupError as exc:
            raise LaunchError(str(exc)) from None
        try:
            ready, pgid = self._spawn(launch, argv, env, workdir, popen_user, cgroup)
        except BaseException:
            # Nothing of the job may outlive a failed start, nor its cgroup.
            self.cgroups.remove(cgroup)
            raise
        pid = int(ready["pid"])
        st = read_stat(pid)
        return JobRecord(
            job_id=launch.job_id,
            node_rank=launch.node_rank,
            pid=pid,
            pgid=pgid,
            starttime=st.starttime if st else 0,
            child_pid=int(ready["child_pid"]),
            tag=tag,
            log_path=str(log_path),
            status_file=str(status_path),
            gpus=list(launch.gpus),
            cmd_ids=[launch.cmd_id],
            started_ts=time.time(),
            cgroup=cgroup,
        )

    def _spawn(
        self,
        launch: Launch,
        argv: list[str],
        env: dict[str, str],
        workdir: str,
        popen_user: dict[str, Any],
        cgroup: str,
    ) -> tuple[dict[str, Any], int]:
        """Starts the runner (held until it is in `cgroup`); returns its report and the
        process group it made."""
        log_path, status_path = self.paths(launch.job_id, launch.node_rank)
        fds: list[int] = []
        read_fd, write_fd = os.pipe()
        hold_r, hold_w = os.pipe() if cgroup else (-1, -1)
        try:
            dir_fd = self._job_dir(launch.job_id)
            fds.append(dir_fd)
            self._clear(dir_fd, Path(runner.cancel_marker(str(status_path))))
            log_fd = self._create(dir_fd, log_path)
            fds.append(log_fd)
            status_fd = self._create(dir_fd, status_path)
            fds.append(status_fd)
            if popen_user:
                os.fchown(log_fd, popen_user["user"], popen_user["group"])
            os.write(log_fd, f"[dcsched] {shlex.join(argv)}\n".encode())
            hold = ["--hold-fd", str(hold_r)] if cgroup else []
            # -I: the runner needs only the standard library, and the job's workdir or
            # PYTHONPATH must not shadow it.
            proc = subprocess.Popen(
                [self.runner_python, "-I", runner.__file__, "--status-file", str(status_path),
                 "--status-fd", str(status_fd), "--ready-fd", str(write_fd),
                 "--log-file", str(log_path), *hold, "--", *argv],
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
                cwd=workdir, env=env, start_new_session=True,
                pass_fds=(write_fd, status_fd, *([hold_r] if cgroup else [])),
                **popen_user,
            )  # fmt: skip
            os.close(write_fd)
            write_fd = -1
            if cgroup:
                os.close(hold_r)
                hold_r = -1
                try:
                    self.cgroups.attach(cgroup, proc.pid, launch.gpus)
                except CgroupError as exc:
                    proc.kill()  # still held: it has run nothing of the job's
                    proc.wait()
                    raise LaunchError(str(exc)) from None
                os.write(hold_w, b"1")
            try:
                proc.wait(_START_TIMEOUT_S)  # the first runner process exits after its fork
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise LaunchError("the job runner did not start in time") from None
            ready = _read_ready(read_fd, _START_TIMEOUT_S)
        except ValueError as exc:  # what check_launch missed that exec() cannot take
            raise LaunchError(f"the job cannot be started: {exc}", INVALID) from None
        except OSError as exc:
            raise LaunchError(f"cannot start the job: {exc}") from None
        finally:
            for fd in (read_fd, write_fd, hold_r, hold_w, *fds):
                if fd >= 0:
                    os.close(fd)
        if "error" in ready:
            raise LaunchError(str(ready["error"]))
        return ready, proc.pid  # the first runner process made the session and group

    def _job_dir(self, job_id: str) -> int:
        """An fd of logs/<job>/, a folder of ours that nobody else may write to."""
        self.logs_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        path = self.logs_dir / job_id
        logs_fd = os.open(self.logs_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(job_id, 0o755, dir_fd=logs_fd)
            try:
                fd = os.open(
                    job_id, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                    dir_fd=logs_fd,
                )  # fmt: skip
            except OSError as exc:
                raise _unexpected(path, "is not a folder", exc) from None
        finally:
            os.close(logs_fd)
        st = os.fstat(fd)
        me = os.geteuid()
        if st.st_uid != me or st.st_mode & 0o022:
            # An earlier agent version gave the folder to the job's user: take it back (what
            # the user left in it is cleared or refused below, never followed).
            try:
                os.fchown(fd, me, os.getegid())
                os.fchmod(fd, 0o755)
            except OSError as exc:
                os.close(fd)
                raise _unexpected(path, "belongs to someone else", exc) from None
        return fd

    @staticmethod
    def _clear(dir_fd: int, path: Path) -> None:
        """Removes the file an earlier run left; refuses anything else (a symlink, a FIFO)."""
        try:
            st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise LaunchError(
                f"{path} is {kind}, not a file this agent wrote: refusing to launch over it "
                "(remove it)",
                INVALID,
            )
        os.unlink(path.name, dir_fd=dir_fd)  # unlink never follows a link

    def _create(self, dir_fd: int, path: Path) -> int:
        self._clear(dir_fd, path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(path.name, flags, 0o644, dir_fd=dir_fd)
        except FileExistsError as exc:
            raise _unexpected(path, "appeared while the job was starting", exc) from None

    def _user(self, name: str) -> tuple[pwd.struct_passwd | None, dict[str, Any]]:
        """The job's user, and the Popen arguments that switch to it (none if it is us)."""
        if not name:
            return None, {}
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise LaunchError(f"user {name!r} does not exist on this host", INVALID) from None
        euid = os.geteuid()
        if pw.pw_uid == euid:
            return pw, {}
        if euid != 0:
            me = pwd.getpwuid(euid).pw_name
            raise LaunchError(
                f"the agent runs as {me}, not root: it cannot start a job as {name}", INVALID
            )
        groups = os.getgrouplist(pw.pw_name, pw.pw_gid)
        return pw, {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": groups}

    # --- watch and stop ----------------------------------------------------------------------

    def poll(self, rec: JobRecord) -> ExitStatus | None:
        """None while the job runs; then its exit status."""
        status = read_status_file(rec.status_file)
        if status is not None:
            return status
        if is_alive(rec.pid, rec.starttime):
            return None
        # The runner may have written its status between our two looks.
        status = read_status_file(rec.status_file)
        if status is not None:
            return status
        return ExitStatus(None, rec.cancel_signal, lost=rec.cancel_signal is None)

    def pids(self, rec: JobRecord) -> list[int]:
        """The job's processes: its tag or group, and whatever else is in its cgroup (one
        that cleared its environment and left the session)."""
        found = set(self.scanner.pids_of(rec.tag, rec.pgid))
        return sorted(found.union(self.cgroups.pids(rec.cgroup)) if rec.cgroup else found)

    def usage(self, rec: JobRecord) -> Usage | None:
        """CPU time and memory of the job's processes on this host, from its cgroup."""
        return self.cgroups.usage(rec.cgroup) if rec.cgroup else None

    def send_signal(self, rec: JobRecord, sig: int) -> None:
        """SIGTERM goes to the job's group (torchrun then stops its workers in order);
        SIGKILL goes to the group and to every process that carries the job's tag."""
        # Never through a link: the folder of a job from an earlier agent version is the user's.
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        with contextlib.suppress(OSError):  # without it the child gets the signal twice
            os.close(os.open(runner.cancel_marker(rec.status_file), flags, 0o644))
        kill_group(rec.pgid, sig)
        if sig == signal.SIGKILL:
            if rec.cgroup:
                self.cgroups.kill(rec.cgroup)  # all of it at once, whatever it did to hide
            kill_pids(self.pids(rec), sig)

    def signal_workers(self, rec: JobRecord, sig: int) -> list[int]:
        """`sig` to the job's workers alone (torchrun's children), by pid: torchrun itself
        passes on only SIGTERM, SIGINT, SIGHUP and SIGQUIT, and SIGUSR1 would kill it. The
        pids sent to; if torchrun has no child yet, every process of the job but the runner
        and torchrun."""
        pids = [p for p in self.pids(rec) if p not in (rec.pid, rec.child_pid)]
        workers = [p for p in pids if (st := read_stat(p)) is not None and st.ppid == rec.child_pid]
        targets = workers or pids
        kill_pids(targets, sig)
        return targets

    def cleanup(self, rec: JobRecord) -> list[int]:
        """After the job ended: kill whatever of it is left (a worker torchrun left behind)."""
        # The runner itself may still be on its way out after writing the status file.
        left = [p for p in self.pids(rec) if p != rec.pid]
        if left:
            kill_group(rec.pgid, signal.SIGKILL)
            kill_pids(left, signal.SIGKILL)
        if rec.cgroup and not self.cgroups.remove(rec.cgroup):
            log.warning(
                "job %s node %d: its cgroup %s is still busy; left in place",
                rec.job_id, rec.node_rank, rec.cgroup,
            )  # fmt: skip
        with contextlib.suppress(OSError):
            os.unlink(runner.cancel_marker(rec.status_file))
        return left


def _unexpected(path: Path, what: str, exc: OSError) -> LaunchError:
    return LaunchError(
        f"{path} {what} ({exc.strerror or exc}): refusing to launch over it", INVALID
    )


def _read_ready(fd: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LaunchError("the job runner did not report in time")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    try:
        data: dict[str, Any] = json.loads(buf)
    except ValueError:
        raise LaunchError("the job runner died before starting the job") from None
    return data
