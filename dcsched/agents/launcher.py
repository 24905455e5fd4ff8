"""Starts, watches and stops a job's node part: torchrun under the runner wrapper.

The runner detaches from the agent, so every job, launched by this agent process or by an
earlier one, is watched the same way: through its status file and /proc. That is what lets
a restarted agent re-adopt running jobs and still report their real exit codes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcsched.agents import runner
from dcsched.agents.errors import LaunchError
from dcsched.agents.procs import TAG_VAR, ProcScanner, is_alive, kill_group, kill_pids, read_stat
from dcsched.agents.state import JobRecord
from dcsched.protocol.messages import Launch

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_START_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class ExitStatus:
    exit_code: int | None
    signal: int | None
    lost: bool = False  # gone without a status file and without a cancel: killed from outside


def torchrun_argv(launch: Launch, torchrun: str = "torchrun") -> list[str]:
    head = [launch.python, "-m", "torch.distributed.run"] if launch.python else [torchrun]
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


def read_status_file(path: str) -> ExitStatus | None:
    try:
        with open(path) as f:
            data: dict[str, Any] = json.load(f)
    except (OSError, ValueError):
        return None
    code, sig = data.get("exit_code"), data.get("signal")
    return ExitStatus(
        int(code) if code is not None else None, int(sig) if sig is not None else None
    )


class Launcher:
    def __init__(
        self, state_dir: str | Path, torchrun: str = "torchrun", runner_python: str = ""
    ) -> None:
        self.logs_dir = Path(state_dir) / "logs"
        self.torchrun = torchrun
        # Any Python 3.11+ runs the runner (standard library only); the job's user must be
        # able to execute it.
        self.runner_python = runner_python or sys.executable
        self.scanner = ProcScanner()

    def paths(self, job_id: str, node_rank: int) -> tuple[Path, Path]:
        d = self.logs_dir / job_id
        return d / f"node{node_rank}.log", d / f"node{node_rank}.status"

    # --- start --------------------------------------------------------------------------------

    def start(self, launch: Launch, valid_gpus: set[int] | None = None) -> JobRecord:
        """Starts the node part; blocks for the runner's start-up (tens of ms)."""
        if not _JOB_ID.match(launch.job_id):
            raise LaunchError(f"job id {launch.job_id!r} is not a safe file name")
        if not launch.command:
            raise LaunchError("the job has no command")
        if valid_gpus is not None and (bad := sorted(set(launch.gpus) - valid_gpus)):
            raise LaunchError(f"GPUs {bad} do not exist on this host (it has {sorted(valid_gpus)})")
        user, popen_user = self._user(launch.user)
        workdir = launch.workdir or (user.pw_dir if user else os.getcwd())
        if not os.path.isdir(workdir):
            raise LaunchError(f"workdir {workdir} does not exist on this host")
        tag = secrets.token_hex(8)
        env = job_env(launch, dict(os.environ), tag, user)
        argv = torchrun_argv(launch, self.torchrun)
        if shutil.which(argv[0], path=env.get("PATH")) is None:
            hint = "[torchrun] python" if launch.python else "[agent] torchrun"
            raise LaunchError(f"{argv[0]} not found on this host (see {hint})")

        log_path, status_path = self.paths(launch.job_id, launch.node_rank)
        # The job's user writes its status file there: the folders must be traversable.
        self.logs_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        log_path.parent.mkdir(exist_ok=True)
        for stale in (status_path, Path(runner.cancel_marker(str(status_path)))):
            stale.unlink(missing_ok=True)
        if popen_user:
            os.chown(log_path.parent, popen_user["user"], popen_user["group"])
        read_fd, write_fd = os.pipe()
        try:
            with open(log_path, "wb") as log:
                if popen_user:
                    os.fchown(log.fileno(), popen_user["user"], popen_user["group"])
                log.write(f"[dcsched] {shlex.join(argv)}\n".encode())
                log.flush()
                # -I: the runner needs only the standard library, and the job's workdir or
                # PYTHONPATH must not shadow it.
                proc = subprocess.Popen(
                    [self.runner_python, "-I", runner.__file__, "--status-file", str(status_path),
                     "--ready-fd", str(write_fd), "--log-file", str(log_path), "--", *argv],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=workdir, env=env, start_new_session=True, pass_fds=(write_fd,),
                    **popen_user,
                )  # fmt: skip
            os.close(write_fd)
            write_fd = -1
            try:
                proc.wait(_START_TIMEOUT_S)  # the first runner process exits after its fork
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise LaunchError("the job runner did not start in time") from None
            ready = _read_ready(read_fd, _START_TIMEOUT_S)
        except OSError as exc:
            raise LaunchError(f"cannot start the job: {exc}") from None
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
        if "error" in ready:
            raise LaunchError(str(ready["error"]))
        pid = int(ready["pid"])
        st = read_stat(pid)
        return JobRecord(
            job_id=launch.job_id,
            node_rank=launch.node_rank,
            pid=pid,
            pgid=proc.pid,  # the first runner process made the session and group
            starttime=st.starttime if st else 0,
            child_pid=int(ready["child_pid"]),
            tag=tag,
            log_path=str(log_path),
            status_file=str(status_path),
            gpus=list(launch.gpus),
            cmd_ids=[launch.cmd_id],
            started_ts=time.time(),
        )

    def _user(self, name: str) -> tuple[pwd.struct_passwd | None, dict[str, Any]]:
        """The job's user, and the Popen arguments that switch to it (none if it is us)."""
        if not name:
            return None, {}
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise LaunchError(f"user {name!r} does not exist on this host") from None
        euid = os.geteuid()
        if pw.pw_uid == euid:
            return pw, {}
        if euid != 0:
            me = pwd.getpwuid(euid).pw_name
            raise LaunchError(f"the agent runs as {me}, not root: it cannot start a job as {name}")
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
        return self.scanner.pids_of(rec.tag, rec.pgid)

    def send_signal(self, rec: JobRecord, sig: int) -> None:
        """SIGTERM goes to the job's group (torchrun then stops its workers in order);
        SIGKILL goes to the group and to every process that carries the job's tag."""
        Path(runner.cancel_marker(rec.status_file)).touch()
        kill_group(rec.pgid, sig)
        if sig == signal.SIGKILL:
            kill_pids(self.pids(rec), sig)

    def cleanup(self, rec: JobRecord) -> list[int]:
        """After the job ended: kill whatever of it is left (a worker torchrun left behind)."""
        # The runner itself may still be on its way out after writing the status file.
        left = [p for p in self.pids(rec) if p != rec.pid]
        if left:
            kill_group(rec.pgid, signal.SIGKILL)
            kill_pids(left, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.unlink(runner.cancel_marker(rec.status_file))
        return left


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
