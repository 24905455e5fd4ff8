"""Shared fixtures: a real Mosquitto per test session on a free port, with its own config;
and the processes a test starts, none of which may outlive it.

No process of a test run outlives it, however the test or the run ends:

- `procs` (or `tracked_processes` for a wider scope) starts processes in sessions of their
  own, with a tag in their environment that everything they start inherits (a daemon's
  agents, a job's detached runner, torchrun's workers, each in a session of its own). Its
  finalizer kills the sessions, then every tagged process, until none is left.
- Every test is tagged that way through os.environ too (`_no_process_outlives_its_test`):
  what it starts otherwise (a plain Popen, an agent or daemon in its own event loop, and
  the jobs those start) is killed when it ends.
- Tests that start processes use pytest-timeout's `signal` method with `func_only`: the
  timeout raises in the test itself, so the finalizers run, and it cannot fire in the middle
  of a finalizer. (The `thread` method ends the run with os._exit(1): no finalizer runs.)
- If the run dies anyway (killed, os._exit), a guard process started at configure time
  kills every process carrying this run's token, which all of them inherit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dcsched.daemon.children import Guard, sweep, tagged_pids

RUN_VAR = "DCSCHED_TEST_RUN"
TAG_VAR = "DCSCHED_TEST_TAG"
# For tests that start processes: see the module's docstring. The timeout is the ini's.
PROCESS_TIMEOUT = pytest.mark.timeout(method="signal", func_only=True)
_RUN_GUARD = pytest.StashKey[Guard]()


def pytest_configure(config: pytest.Config) -> None:
    if RUN_VAR in os.environ:  # a pytest run inside a test: the outer run's guard covers it
        return
    token = uuid.uuid4().hex
    os.environ[RUN_VAR] = token  # every process of the run inherits it
    # The guard sweeps when this process exits, however it exits; it is not closed here.
    config.stash[_RUN_GUARD] = Guard.start(token, var=RUN_VAR)


@dataclass
class Procs:
    """What one test (or one fixture) starts, and everything that starts in turn."""

    tag: str
    started: list[subprocess.Popen[Any]] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1", **extra, TAG_VAR: self.tag}

    def popen(
        self, argv: Sequence[str], env: dict[str, str] | None = None, **kw: Any
    ) -> subprocess.Popen[Any]:
        """subprocess.Popen in a session of its own, tagged."""
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(argv, env=self.env(**(env or {})), **kw)
        self.started.append(proc)
        return proc

    def alive(self) -> list[int]:
        """Every live process of ours, at any depth, however it was reparented."""
        return tagged_pids(TAG_VAR, self.tag)

    def wait_gone(self, timeout: float = 60.0) -> list[int]:
        """Polls until no process of ours is left; what is left at the deadline."""
        deadline = time.monotonic() + timeout
        while (left := self.alive()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def kill_all(self) -> list[int]:
        """SIGKILLs the sessions we started, then every tagged process; returns the pids
        that were still alive."""
        left = self.alive()
        for proc in self.started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        left += sweep(TAG_VAR, self.tag)
        for proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        return sorted(set(left))


@contextlib.contextmanager
def tracked_processes(name: str) -> Iterator[Procs]:
    procs = Procs(f"{name}-{uuid.uuid4().hex[:12]}")
    try:
        yield procs
    finally:
        procs.kill_all()


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tags every test: whatever process it starts, however (a plain Popen, an agent or a
    daemon in the test's own event loop and the jobs they start, a broker of its own),
    inherits the tag from os.environ, and is killed at the end, pass or fail. (`procs`
    does the same for what it starts, first, with sessions and a tag of its own; a fixture
    of a wider scope is set up before this one, untagged.)"""
    tag = f"{request.node.name}-{uuid.uuid4().hex[:12]}"
    before = os.environ.get(TAG_VAR)
    os.environ[TAG_VAR] = tag
    try:
        yield
    finally:
        if before is None:
            del os.environ[TAG_VAR]
        else:
            os.environ[TAG_VAR] = before
        sweep(TAG_VAR, tag)


@pytest.fixture
def procs(request: pytest.FixtureRequest) -> Iterator[Procs]:
    """Starts processes for one test; none of them outlives it, pass or fail."""
    with tracked_processes(request.node.name) as p:
        yield p


def fake_torchrun(path: Path) -> Path:
    """An executable standing in for torchrun: it drops torchrun's options (and
    `--no-python`) and runs the job's command as it is."""
    path.write_text('#!/bin/sh\n[ "$1" = --no-python ] && shift\nshift 10\nexec "$@"\n')
    path.chmod(0o755)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


@dataclass
class Broker:
    host: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def _binary() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.fail("mosquitto is not installed: apt-get install mosquitto")
    return binary


def start_mosquitto(
    workdir: Path, extra_conf: str = "", env: dict[str, str] | None = None
) -> Broker:
    binary = _binary()
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "max_queued_messages 100000\n"
        f"{extra_conf}"
    )
    with (workdir / "mosquitto.log").open("wb") as log:  # the child keeps its own copy
        proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        wait_port("127.0.0.1", port)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Broker("127.0.0.1", port, proc)


def restart_mosquitto(broker: Broker, workdir: Path) -> None:
    """Starts a stopped broker again on the same port with the same config."""
    with (workdir / "mosquitto.log").open("ab") as log:
        broker.proc = subprocess.Popen(
            [_binary(), "-c", str(workdir / "mosquitto.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_port(broker.host, broker.port)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    # Untagged: it outlives the test that happens to set it up.
    untagged = {k: v for k, v in os.environ.items() if k != TAG_VAR}
    broker = start_mosquitto(tmp_path_factory.mktemp("mosquitto"), env=untagged)
    yield broker
    broker.proc.terminate()
    broker.proc.wait(10)


# --- PostgreSQL: the second store backend ----------------------------------------------------

# The server the store's PostgreSQL tests use (trust auth); each test gets a database of its
# own there, dropped afterwards. Without a reachable server those tests are skipped.
PG_SERVER = os.environ.get("DCSCHED_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'dcsched[daemon]')")
    try:
        with psycopg.connect(f"{PG_SERVER}/postgres", connect_timeout=3):
            pass
    except psycopg.Error as exc:
        why = " ".join(str(exc).split())
        pytest.skip(f"no PostgreSQL at {PG_SERVER} ({why}); set DCSCHED_TEST_POSTGRES")
    return PG_SERVER


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database for one test: its URL."""
    import psycopg

    name = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield f"{postgres_server}/{name}"
    finally:
        with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's store lives, once per backend: a SQLite file, a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "s.db")
    return str(request.getfixturevalue("postgres_url"))
