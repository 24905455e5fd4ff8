"""The launcher with real short processes behind a fake torchrun."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dcsched.agents import runner
from dcsched.agents.errors import INVALID, LaunchError
from dcsched.agents.launcher import (
    ExitStatus,
    Launcher,
    check_command,
    ending_words,
    job_env,
    torchrun_argv,
)
from dcsched.agents.procs import TAG_VAR, is_alive
from dcsched.agents.state import JobRecord, StateStore
from dcsched.protocol.config import Config
from tests.conftest import fake_torchrun
from tests.unit.agents.helpers import launch, py


def wait_exit(launcher: Launcher, rec: JobRecord, timeout: float = 10.0) -> ExitStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = launcher.poll(rec)
        if status is not None:
            return status
        time.sleep(0.05)
    raise AssertionError("job did not exit")


def test_torchrun_argv(tmp_path: Path) -> None:
    ln = launch(
        tmp_path,
        ["train.py", "--epochs", "3"],
        nnodes=2,
        nproc_per_node=4,
        node_rank=1,
        master_addr="10.0.0.5",
        master_port=29555,
    )
    assert torchrun_argv(ln, "/opt/torchrun") == [
        "/opt/torchrun", "--nnodes", "2", "--nproc-per-node", "4", "--node-rank", "1",
        "--master-addr", "10.0.0.5", "--master-port", "29555", "train.py", "--epochs", "3",
    ]  # fmt: skip
    ln.python = "/venv/bin/python"
    assert torchrun_argv(ln)[:3] == ["/venv/bin/python", "-m", "torch.distributed.run"]


def test_job_env_layers_agent_job_and_ours(tmp_path: Path) -> None:
    ln = launch(
        tmp_path, ["x"], gpus=[2, 5], env={"NCCL_DEBUG": "WARN", "CUDA_VISIBLE_DEVICES": "9"}
    )
    env = job_env(ln, {"PATH": "/bin", "NCCL_DEBUG": "INFO"}, "tag1")
    assert env["PATH"] == "/bin" and env["NCCL_DEBUG"] == "WARN"
    assert env["CUDA_VISIBLE_DEVICES"] == "2,5"  # the job cannot pick other GPUs
    assert env["DCSCHED_JOB_ID"] == "j1" and env["DCSCHED_NODE_RANK"] == "0"
    assert env[TAG_VAR] == "tag1"


def test_launch_runs_in_workdir_with_env_and_reports_exit_code(
    tmp_path: Path, agent_config: Config
) -> None:
    launcher = Launcher(agent_config.agent.state_dir, agent_config.agent.torchrun)
    code = (
        "import os, sys; print(os.getcwd(), os.environ['CUDA_VISIBLE_DEVICES'], "
        "os.environ['DCSCHED_JOB_ID'], os.getpgid(0) != os.getpid(), flush=True); "
        "print(sys.stdin.read() == '', flush=True); sys.exit(3)"
    )
    ln = launch(tmp_path, py(code), gpus=[1, 3])
    rec = launcher.start(ln)
    assert rec.pgid != os.getpgid(0) and rec.child_pid > 0
    status = wait_exit(launcher, rec)
    assert status == ExitStatus(3, None)
    log = Path(rec.log_path)
    assert log == Path(agent_config.agent.state_dir) / "logs" / "j1" / "node0.log"
    text = log.read_text()
    assert f"{tmp_path} 1,3 j1 True" in text and "True\n" in text
    args = (tmp_path / "torchrun.args").read_text().split("\n")
    assert args == ["--nnodes", "1", "--nproc-per-node", "1", "--node-rank", "0",
                    "--master-addr", "127.0.0.1", "--master-port", str(ln.master_port)]  # fmt: skip


def test_signal_death_is_reported_as_signal(tmp_path: Path, agent_config: Config) -> None:
    launcher = Launcher(agent_config.agent.state_dir, agent_config.agent.torchrun)
    rec = launcher.start(launch(tmp_path, py("import os, signal; os.kill(os.getpid(), 9)")))
    assert wait_exit(launcher, rec) == ExitStatus(None, signal.SIGKILL)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"workdir": "/nonexistent/dir"}, "workdir /nonexistent/dir does not exist"),
        ({"user": "no-such-user-xyz"}, "user 'no-such-user-xyz' does not exist"),
        ({"job_id": "../etc"}, "not a safe file name"),
        ({"gpus": [0, 7]}, r"GPUs \[7\] do not exist"),
        ({"command": []}, "no command"),
        ({"python": "/nonexistent/python"}, "/nonexistent/python not found"),
        ({"command": ["echo", "a\0b"]}, "command argument 1 contains a NUL byte"),
        ({"env": {"A\0": "x"}}, "environment variable name 'A.*' is not valid"),
        ({"env": {"A=B": "x"}}, "environment variable name 'A=B' is not valid"),
        ({"env": {"A": "x\0"}}, "environment variable A contains a NUL byte"),
        ({"workdir": "/tmp\0"}, "workdir contains a NUL byte"),
        ({"user": "root\0"}, "user contains a NUL byte"),
        ({"master_port": 70000}, "master port 70000 is not a TCP port"),
    ],
)
def test_refusals_are_clear(
    tmp_path: Path, agent_config: Config, kw: dict[str, object], message: str
) -> None:
    launcher = Launcher(agent_config.agent.state_dir, agent_config.agent.torchrun)
    ln = launch(tmp_path, ["true"])
    for k, v in kw.items():
        setattr(ln, k, v)
    with pytest.raises(LaunchError, match=message) as info:
        launcher.start(ln, valid_gpus={0, 1, 2, 3})
    assert info.value.code == INVALID
    assert not (Path(agent_config.agent.state_dir) / "logs" / "j1").exists()  # nothing made


def test_missing_torchrun_is_refused(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path / "state", "/nonexistent/torchrun")
    with pytest.raises(LaunchError, match=r"not found on this host \(see \[agent\] torchrun\)"):
        launcher.start(launch(tmp_path, ["true"]))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may start jobs as other users")
def test_another_user_is_refused_when_not_root(tmp_path: Path, agent_config: Config) -> None:
    launcher = Launcher(agent_config.agent.state_dir, agent_config.agent.torchrun)
    other = "root" if pwd.getpwuid(os.geteuid()).pw_name != "root" else "nobody"
    with pytest.raises(LaunchError, match="not root") as info:
        launcher.start(launch(tmp_path, ["true"], user=other))
    assert info.value.code == INVALID


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_job_runs_as_the_submitting_user() -> None:
    nobody = pwd.getpwnam("nobody")
    python = "/usr/bin/python3"  # the runner needs only the standard library
    if not os.access(python, os.X_OK):
        pytest.skip("no system python for an unprivileged user")
    # pytest's tmp folders are private to root: use one that nobody can traverse.
    base = Path(tempfile.mkdtemp(prefix="dcsched-user-"))
    try:
        base.chmod(0o755)
        torchrun = fake_torchrun(base / "torchrun")
        launcher = Launcher(base / "state", str(torchrun), runner_python=python)
        ln = launch(base, ["sh", "-c", "id -u; echo $HOME $USER"], user="nobody", env={})
        rec = launcher.start(ln)
        assert wait_exit(launcher, rec).exit_code == 0
        out = Path(rec.log_path).read_text()
        assert f"{nobody.pw_uid}\n{nobody.pw_dir} nobody" in out
        assert os.stat(rec.log_path).st_uid == nobody.pw_uid
    finally:
        shutil.rmtree(base)


TREE = """
import os, subprocess, sys, time
# like torchrun: a worker in a session of its own, which the group signal does not reach
w = subprocess.Popen([sys.executable, '-c', 'import signal, time; '
                      'signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'],
                     start_new_session=True)
print('worker', w.pid, flush=True)
time.sleep(300)
"""


def _worker_pid(rec: JobRecord) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in Path(rec.log_path).read_text().splitlines():
            if line.startswith("worker "):
                return int(line.split()[1])
        time.sleep(0.05)
    raise AssertionError("no worker")


def test_cancel_kills_the_whole_job_by_pid(tmp_path: Path, agent_config: Config) -> None:
    launcher = Launcher(agent_config.agent.state_dir, agent_config.agent.torchrun)
    rec = launcher.start(launch(tmp_path, py(TREE)))
    worker = _worker_pid(rec)
    pids = launcher.pids(rec)
    assert {rec.pid, rec.child_pid, worker} <= set(pids)
    rec.cancel_signal = signal.SIGTERM
    launcher.send_signal(rec, signal.SIGTERM)
    status = wait_exit(launcher, rec)
    assert status.signal == signal.SIGTERM  # the job's main process died of it
    assert is_alive(worker)  # the worker ignores SIGTERM and is outside the group
    rec.cancel_signal = signal.SIGKILL
    launcher.send_signal(rec, signal.SIGKILL)
    launcher.cleanup(rec)
    deadline = time.monotonic() + 5
    while any(is_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if is_alive(p)]


def test_cleanup_after_exit_kills_leftovers(tmp_path: Path, agent_config: Config) -> None:
    launcher = Launcher(agent_config.agent.state_dir, agent_config.agent.torchrun)
    code = TREE.replace("time.sleep(300)\n", "", 1).rstrip() + "\n"
    code = code.replace("\ntime.sleep(300)", "\nsys.exit(0)")
    rec = launcher.start(launch(tmp_path, py(code)))
    worker = _worker_pid(rec)
    assert wait_exit(launcher, rec) == ExitStatus(0, None)
    assert launcher.cleanup(rec) == [worker]
    deadline = time.monotonic() + 5
    while is_alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_alive(worker)


def test_readoption_after_restart_reports_the_real_exit_code(
    tmp_path: Path, agent_config: Config
) -> None:
    state_dir = agent_config.agent.state_dir
    first = Launcher(state_dir, agent_config.agent.torchrun)
    go = tmp_path / "go"  # the job runs until the test lets it end, however slow the machine
    code = (
        "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.05)\nsys.exit(7)"
    )
    rec = first.start(launch(tmp_path, [*py(code), str(go)]))
    store = StateStore(state_dir)
    store.state.jobs[rec.key] = rec
    store.save()
    del first, store  # the agent "restarts": nothing in memory survives

    store2 = StateStore(state_dir)
    adopted = store2.load().jobs[rec.key]
    second = Launcher(state_dir, agent_config.agent.torchrun)
    assert second.poll(adopted) is None  # still running, recognised by pid and start time
    go.touch()
    assert wait_exit(second, adopted) == ExitStatus(7, None)


def test_a_recycled_pid_is_not_taken_for_the_job(tmp_path: Path, agent_config: Config) -> None:
    launcher = Launcher(agent_config.agent.state_dir, agent_config.agent.torchrun)
    rec = launcher.start(launch(tmp_path, ["sleep", "5"]))
    # Pretend the runner is gone and its pid now belongs to someone else (ourselves).
    rec.pid, rec.starttime = os.getpid(), 1
    os.unlink(rec.status_file) if os.path.exists(rec.status_file) else None
    status = launcher.poll(rec)
    assert status == ExitStatus(None, None, lost=True)
    rec.cancel_signal = signal.SIGKILL
    launcher.send_signal(rec, signal.SIGKILL)
    launcher.cleanup(rec)


def test_runner_module_invocation_writes_status(tmp_path: Path) -> None:
    import subprocess

    status = tmp_path / "s.json"
    rc = subprocess.call(
        [
            sys.executable,
            "-m",
            "dcsched.agents.runner",
            "--status-file",
            str(status),
            "--",
            sys.executable,
            "-c",
            "raise SystemExit(4)",
        ]
    )
    assert rc == 4
    assert status.read_text() == '{"exit_code": 4}'


def test_runner_forwards_a_sigterm_sent_to_it_alone(tmp_path: Path) -> None:
    import subprocess

    status = tmp_path / "s.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcsched.agents.runner", "--status-file", str(status), "--",
         sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"up\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 128 + signal.SIGTERM
    proc.stdout.close()
    assert status.read_text() == '{"signal": 15}'


ROOT_CAUSE = """torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
exit3.py FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-23_03:30:00
  host      : node1
  rank      : 1 (local_rank: 1)
  exitcode  : {code} (pid: 4242) {name}
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""


@pytest.mark.parametrize(
    ("rc", "report", "expected"),
    [
        (1, ROOT_CAUSE.format(code=3, name=""), {"exit_code": 3, "launcher_exit_code": 1}),
        (1, ROOT_CAUSE.format(code=-9, name="(SIGKILL)"), {"signal": 9, "launcher_exit_code": 1}),
        (1, "Traceback ...\nValueError: bad\n", {"exit_code": 1}),
        (0, ROOT_CAUSE.format(code=3, name=""), {"exit_code": 0}),
        (-15, "", {"signal": 15}),
    ],
)
def test_runner_takes_the_workers_exit_code_from_torchruns_report(
    tmp_path: Path, rc: int, report: str, expected: dict[str, int]
) -> None:
    log = tmp_path / "node0.log"
    log.write_text("x" * 100_000 + "\n" + report)
    assert runner.exit_status(rc, str(log)) == expected
    assert runner.exit_status(1, str(tmp_path / "missing.log")) == {"exit_code": 1}


def test_a_failed_worker_code_reaches_the_status(tmp_path: Path, agent_config: Config) -> None:
    launcher = Launcher(agent_config.agent.state_dir, agent_config.agent.torchrun)
    code = f"import sys; print({ROOT_CAUSE.format(code=3, name='')!r}); sys.exit(1)"
    rec = launcher.start(launch(tmp_path, py(code)))
    assert wait_exit(launcher, rec) == ExitStatus(3, None)


WARNED_TREE = """
import os, subprocess, sys, time
# a worker that checkpoints on SIGUSR1; this process stands for torchrun, which SIGUSR1 kills
w = subprocess.Popen([sys.executable, '-c', 'import signal, sys, time\\n'
                      'def on(s, f):\\n'
                      '    open("warned", "w").write(str(s)); sys.exit(0)\\n'
                      'signal.signal(signal.SIGUSR1, on)\\n'
                      'print("ready", flush=True)\\n'
                      'time.sleep(300)'],
                     start_new_session=True)
print('worker', w.pid, flush=True)
w.wait()
print('torchrun outlived the signal', flush=True)
"""


def test_the_warning_signal_goes_to_the_workers_not_torchrun(
    tmp_path: Path, agent_config: Config
) -> None:
    launcher = Launcher(agent_config.agent.state_dir, agent_config.agent.torchrun)
    rec = launcher.start(launch(tmp_path, py(WARNED_TREE)))
    worker = _worker_pid(rec)
    deadline = time.monotonic() + 60  # the worker has its handler in place
    while "\nready\n" not in Path(rec.log_path).read_text():  # not the command line's "ready"
        assert time.monotonic() < deadline, Path(rec.log_path).read_text()
        time.sleep(0.05)
    assert launcher.signal_workers(rec, signal.SIGUSR1) == [worker]
    assert wait_exit(launcher, rec).exit_code == 0
    assert (tmp_path / "warned").read_text() == str(int(signal.SIGUSR1))
    assert "torchrun outlived the signal" in Path(rec.log_path).read_text()


def test_a_command_that_is_not_a_python_script_runs_through_no_python(tmp_path: Path) -> None:
    ln = launch(tmp_path, ["bash", "run.sh"])
    assert ln.no_python  # as the daemon sets it for a command not ending .py
    argv = torchrun_argv(ln, "/opt/torchrun")
    assert argv[:2] == ["/opt/torchrun", "--no-python"] and argv[-2:] == ["bash", "run.sh"]
    assert "--no-python" not in torchrun_argv(launch(tmp_path, ["train.py"]))


@pytest.mark.parametrize(
    ("command", "no_python", "message"),
    [
        (["missing.py"], False, "script missing.py not found in the workdir"),
        (["no-such-program-xyz"], True, "command no-such-program-xyz not found on this host"),
        (["./nope.sh"], True, "command ./nope.sh not found on this host"),
    ],
)
def test_a_command_that_is_not_there_is_refused(
    tmp_path: Path, agent_config: Config, command: list[str], no_python: bool, message: str
) -> None:
    launcher = Launcher(agent_config.agent.state_dir, agent_config.agent.torchrun)
    with pytest.raises(LaunchError, match=message) as info:
        launcher.start(launch(tmp_path, command, no_python=no_python))
    assert info.value.code == INVALID


def test_a_script_in_the_workdir_or_a_module_is_not_refused(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("")
    check_command(launch(tmp_path, ["train.py"]), str(tmp_path), "/bin")
    check_command(launch(tmp_path, ["-m", "pkg.train"]), str(tmp_path), "/bin")
    check_command(launch(tmp_path, ["sh", "-c", "true"]), str(tmp_path), "/bin:/usr/bin")


@pytest.mark.parametrize(
    ("code", "sig", "reason", "line"),
    [
        (0, None, "", "ended: exit code 0"),
        (3, None, "", "ended: exit code 3"),
        (None, 9, "", "ended: signal 9 (SIGKILL)"),
        (None, 15, "timeout", "stopped: the time limit was reached: signal 15 (SIGTERM)"),
        (None, 15, "node_fail", "stopped: another node of the job was lost: signal 15"),
        (None, None, "lost", "its process was lost (killed from outside the agent)"),
    ],
)
def test_the_logs_last_line_says_how_the_node_ended(
    code: int | None, sig: int | None, reason: str, line: str
) -> None:
    assert ending_words(code, sig, reason).startswith(line)
