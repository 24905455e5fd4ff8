"""No name a job's user controls is followed as root: the log, status and cancel files of a
job, and FetchLog's reads."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcsched.agents.errors import INVALID, LaunchError
from dcsched.agents.launcher import ExitStatus, Launcher, read_status_file
from dcsched.agents.logs import read_chunk
from dcsched.agents.state import JobRecord
from dcsched.protocol.messages import FetchLog
from tests.conftest import fake_torchrun
from tests.unit.agents.helpers import launch

pytestmark = pytest.mark.faults  # the attacks of docs/reliability.md

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run jobs as a user")
SYSTEM_PYTHON = "/usr/bin/python3"  # the runner needs only the standard library


@pytest.fixture
def base() -> Iterator[Path]:
    """A folder an unprivileged user can traverse (pytest's tmp folders are root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="dcsched-files-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


@pytest.fixture
def user() -> pwd.struct_passwd:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip("no system python for an unprivileged user")
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no unprivileged user 'nobody' on this machine")


@pytest.fixture
def precious(base: Path) -> Path:
    """A root-owned file that a symlink attack aims at."""
    target = base / "precious"
    target.write_text("root's secret\n")
    target.chmod(0o600)
    return target


def fingerprint(path: Path) -> tuple[str, int, int, int]:
    st = path.lstat()
    return path.read_text(), st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def user_launcher(base: Path) -> Launcher:
    torchrun = fake_torchrun(base / "torchrun")
    return Launcher(base / "state", str(torchrun), runner_python=SYSTEM_PYTHON)


def wait_exit(launcher: Launcher, rec: JobRecord, timeout: float = 10.0) -> ExitStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = launcher.poll(rec)
        if status is not None:
            return status
        time.sleep(0.05)
    raise AssertionError("job did not exit")


@needs_root
@pytest.mark.parametrize("name", ["node0.log", "node0.status", "node0.status.cancel"])
def test_a_planted_symlink_is_refused_and_its_target_untouched(
    base: Path, user: pwd.struct_passwd, precious: Path, name: str
) -> None:
    launcher = user_launcher(base)
    before = fingerprint(precious)
    # What an earlier agent version left: the job's folder given to its user, who links a
    # job file to a file of root's before requeueing the job.
    job_dir = base / "state" / "logs" / "j1"
    job_dir.mkdir(parents=True)
    os.chown(job_dir, user.pw_uid, user.pw_gid)
    (job_dir / name).symlink_to(precious)
    os.lchown(job_dir / name, user.pw_uid, user.pw_gid)
    with pytest.raises(LaunchError, match=f"{name} is a symbolic link") as info:
        launcher.start(launch(base, ["true"], user=user.pw_name, env={}))
    assert info.value.code == INVALID
    assert fingerprint(precious) == before
    assert (job_dir / name).is_symlink()  # left for a person to look at
    st = job_dir.stat()  # the folder is root's again: nothing new can be planted
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)


@needs_root
def test_a_requeued_job_cannot_redirect_its_files(
    base: Path, user: pwd.struct_passwd, precious: Path
) -> None:
    launcher = user_launcher(base)
    before = fingerprint(precious)
    first = launcher.start(launch(base, ["sh", "-c", "echo first; id -u"], user="nobody", env={}))
    assert wait_exit(launcher, first) == ExitStatus(0, None)
    log = Path(first.log_path)
    assert f"first\n{user.pw_uid}\n" in log.read_text()
    assert log.stat().st_uid == user.pw_uid  # the log is the user's; its folder is not
    assert log.parent.stat().st_uid == 0 and Path(first.status_file).stat().st_uid == 0
    # The user tries to swap the job's files for links to root's file: the folder refuses.
    for name in ("node0.log", "node0.status", "node0.status.cancel"):
        plant = subprocess.run(
            ["ln", "-sf", str(precious), str(log.parent / name)],
            user=user.pw_uid,
            group=user.pw_gid,
            capture_output=True,
            check=False,
        )
        assert plant.returncode != 0 and b"Permission denied" in plant.stderr
    second = launcher.start(
        launch(base, ["sh", "-c", "echo second; exit 3"], cmd_id="c2", user="nobody", env={})
    )
    assert wait_exit(launcher, second) == ExitStatus(3, None)
    launcher.send_signal(second, signal.SIGTERM)  # the cancel marker, after the exit: harmless
    assert "second" in log.read_text() and "first" not in log.read_text()
    assert fingerprint(precious) == before


def test_the_cancel_marker_is_not_made_through_a_link(base: Path, tmp_path: Path) -> None:
    status = base / "node0.status"
    target = base / "made-by-root"
    Path(f"{status}.cancel").symlink_to(target)
    rec = JobRecord(
        job_id="j", node_rank=0, pid=0, pgid=0, starttime=0, child_pid=0, tag="t",
        log_path=str(base / "node0.log"), status_file=str(status),
    )  # fmt: skip
    Launcher(tmp_path / "state").send_signal(rec, signal.SIGTERM)
    assert not target.exists()


def test_status_and_log_reads_never_follow_a_link(base: Path, precious: Path) -> None:
    status = base / "node0.status"
    status.write_text('{"exit_code": 0}')
    assert read_status_file(str(status)) == ExitStatus(0, None)
    link = base / "linked.status"
    link.symlink_to(status)
    assert read_status_file(str(link)) is None

    log = base / "node0.log"
    log.symlink_to(precious)
    chunk = read_chunk("h", FetchLog(cmd_id="f", job_id="j", node_rank=0), str(log))
    assert "symbolic link" in chunk.error and chunk.data == "" and chunk.size == 0
    # A FIFO in a log's place must not hang the agent.
    fifo = base / "node1.log"
    os.mkfifo(fifo)
    chunk = read_chunk("h", FetchLog(cmd_id="f", job_id="j", node_rank=1), str(fifo))
    assert "not a regular file" in chunk.error
