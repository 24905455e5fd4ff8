"""Jobs in cgroups of their own, on this host's real cgroup filesystem (root only).

Device nodes with NVIDIA's major number stand in for GPUs: no driver answers them, so an
open the cgroup lets through fails with ENXIO, and one it denies with EPERM.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import shutil
import signal
import stat
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcsched.agents.cgroups import NVIDIA_MAJOR, Cgroups, Choice, Hierarchy, host_facts
from dcsched.agents.errors import LaunchError
from dcsched.agents.launcher import ExitStatus, Launcher
from dcsched.agents.procs import is_alive, read_stat
from dcsched.agents.state import JobRecord
from tests.conftest import Procs, fake_torchrun
from tests.unit.agents.helpers import launch

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(os.geteuid() != 0, reason="making cgroups needs root"),
]

PYTHON = "/usr/bin/python3"  # the runner and the jobs need only the standard library


@pytest.fixture
def base() -> Iterator[Path]:
    """A folder `nobody` can traverse (pytest's are private to root) with a fake torchrun."""
    if not os.access(PYTHON, os.X_OK):
        pytest.skip("no system python for an unprivileged user")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no unprivileged user 'nobody' on this machine")
    d = Path(tempfile.mkdtemp(prefix="dcsched-cgroup-"))
    d.chmod(0o755)
    fake_torchrun(d / "torchrun")
    try:
        yield d
    finally:
        shutil.rmtree(d)


def hierarchies(which: str) -> tuple[Choice, list[Hierarchy]]:
    facts = host_facts()
    v1 = [h for h in facts.hierarchies if h.version == 1]
    v2 = [h for h in facts.hierarchies if h.version == 2]
    if which == "v1" and any("freezer" in h.controllers for h in v1):
        return Choice("v1", "test: v1 alone, killed through the freezer"), v1
    if which == "v2" and v2:
        return Choice("v2", "test: cgroup2 alone, killed through cgroup.kill"), v2
    if which == "auto":
        choice = Cgroups.detect("auto")
        if choice.kind in ("v1", "v2"):  # a systemd host would make real scopes: not here
            return Choice(choice.kind, choice.reason), list(facts.hierarchies)
    pytest.skip(f"this host has no cgroup {which} hierarchy to test with")


class Parent:
    """A parent cgroup of the test's own, removed (and checked empty) at the end."""

    def __init__(
        self, choice: Choice, hs: list[Hierarchy], gpu_minors: dict[int, int] | None = None
    ) -> None:
        self.name = f"dcsched-test-{uuid.uuid4().hex[:8]}"
        self.cgroups = Cgroups(choice, hs, parent=self.name, gpu_minors=gpu_minors)
        self.mounts = [Path(h.mount) for h in hs]

    def leftovers(self) -> list[str]:
        return [str(p) for m in self.mounts if (m / self.name).is_dir()
                for p in (m / self.name).iterdir() if p.is_dir()]  # fmt: skip

    def close(self) -> None:
        for m in self.mounts:
            d = m / self.name
            for child in d.iterdir() if d.is_dir() else []:
                if child.is_dir():
                    self.cgroups.remove(f"{self.name}/{child.name}")
            if d.is_dir():
                d.rmdir()


def wait_exit(launcher: Launcher, rec: JobRecord, timeout: float = 20.0) -> ExitStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = launcher.poll(rec)
        if status is not None:
            return status
        time.sleep(0.05)
    raise AssertionError("job did not exit")


OPEN_GPUS = """
import errno, os, sys
for name in sys.argv[1:]:
    try:
        os.close(os.open(name, os.O_RDWR))
        print(name, 'opened', flush=True)
    except OSError as exc:
        print(name, errno.errorcode[exc.errno], flush=True)
"""


def test_a_job_opens_only_the_gpus_it_was_given(base: Path) -> None:
    choice, hs = hierarchies("auto")
    if not any("devices" in h.controllers for h in hs):
        pytest.skip("no cgroup v1 devices controller on this host")
    nodes = []
    for minor in (0, 1):
        node = base / f"nvidia{minor}"
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(NVIDIA_MAJOR, minor))
        node.chmod(0o666)  # past the umask: the job's user may open both
        nodes.append(str(node))
    # Outside any job's cgroup both nodes open as far as the (absent) driver.
    for path in nodes:
        with pytest.raises(OSError) as info:
            os.open(path, os.O_RDWR)
        assert info.value.errno != errno.EPERM
    parent = Parent(choice, hs, gpu_minors={0: 0, 1: 1})
    try:
        launcher = Launcher(base / "state", str(base / "torchrun"), runner_python=PYTHON,
                            cgroups=parent.cgroups)  # fmt: skip
        ln = launch(base, [PYTHON, "-c", OPEN_GPUS, *nodes], user="nobody", gpus=[0], env={})
        rec = launcher.start(ln)
        assert rec.cgroup.startswith(parent.name + "/")
        assert wait_exit(launcher, rec).exit_code == 0
        out = Path(rec.log_path).read_text()
        assert f"{nodes[1]} EPERM" in out, out  # the GPU it was not given
        opened = [line for line in out.splitlines() if line.startswith(nodes[0])]
        assert opened and "EPERM" not in opened[0], out  # its own GPU: up to the driver
        launcher.cleanup(rec)
        assert parent.leftovers() == []
    finally:
        parent.close()
    assert not any((m / parent.name).exists() for m in parent.mounts)


# The job's main process starts a child that leaves the session twice over and drops the
# job's environment (so neither the process group nor DCSCHED_JOB_TAG finds it), then both
# ignore SIGTERM.
ESCAPE = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execve(sys.executable, [sys.executable, '-c',
                  'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); '
                  'time.sleep(600)'], {})
    os._exit(0)
x = b"x" * (32 << 20)  # some memory (written, so charged) for the cgroup to count
print('ready', flush=True)
time.sleep(600)
"""


def _escapee(launcher: Launcher, rec: JobRecord) -> int:
    """The double-forked process: in the job's cgroup, with an empty environment."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for pid in launcher.cgroups.pids(rec.cgroup):
            with contextlib.suppress(OSError):
                # (a zombie's environment reads empty too)
                if Path(f"/proc/{pid}/environ").read_bytes() == b"" and is_alive(pid):
                    # (a process just forked in the job's group may read empty for a moment)
                    st = read_stat(pid)
                    if st is not None and st.pgid != rec.pgid:
                        assert pid not in launcher.scanner.pids_of(rec.tag, rec.pgid)
                        return pid
        time.sleep(0.05)
    raise AssertionError("the escaped process never showed up")


@pytest.mark.parametrize("which", ["auto", "v1", "v2"])
def test_cancel_kills_the_whole_cgroup_also_after_a_restart(base: Path, which: str) -> None:
    choice, hs = hierarchies(which)
    parent = Parent(choice, hs)
    try:
        launcher = Launcher(base / "state", str(base / "torchrun"), runner_python=PYTHON,
                            cgroups=parent.cgroups)  # fmt: skip
        rec = launcher.start(launch(base, [PYTHON, "-c", ESCAPE], user="nobody", env={}))
        escapee = _escapee(launcher, rec)
        deadline = time.monotonic() + 20
        while "ready" not in Path(rec.log_path).read_text().splitlines():
            assert time.monotonic() < deadline, "the job never got going"
            time.sleep(0.05)
        escapee_start = read_stat(escapee).starttime  # type: ignore[union-attr]
        everyone = launcher.pids(rec)
        assert {rec.pid, rec.child_pid, escapee} <= set(everyone)
        usage = launcher.usage(rec)
        assert usage is not None and usage.cpu_s is not None and usage.cpu_s > 0
        if any("memory" in h.controllers for h in hs):
            assert usage.memory_bytes is not None and usage.memory_bytes > 16 << 20

        # A restarted agent (here with cgroups turned off since) knows the job by its record.
        restarted = Launcher(base / "state", str(base / "torchrun"), runner_python=PYTHON)
        assert restarted.cgroups.kind == "none"
        rec.cancel_signal = signal.SIGTERM
        restarted.send_signal(rec, signal.SIGTERM)
        time.sleep(0.3)  # everything ignores SIGTERM: still running
        assert restarted.poll(rec) is None and is_alive(escapee, escapee_start)
        rec.cancel_signal = signal.SIGKILL
        restarted.send_signal(rec, signal.SIGKILL)
        assert wait_exit(restarted, rec).signal == signal.SIGKILL
        restarted.cleanup(rec)
        deadline = time.monotonic() + 10
        while any(is_alive(p) for p in everyone) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in everyone if is_alive(p)]
        assert parent.leftovers() == []
    finally:
        parent.close()
    assert not any((m / parent.name).exists() for m in parent.mounts)


def test_a_launch_that_cannot_join_its_cgroup_runs_nothing(base: Path) -> None:
    choice, hs = hierarchies("auto")
    parent = Parent(choice, hs)
    marker = base / "ran"
    try:
        launcher = Launcher(base / "state", str(base / "torchrun"), runner_python=PYTHON,
                            cgroups=parent.cgroups)  # fmt: skip
        real_attach = parent.cgroups.attach

        def attach(rel: str, pid: int, gpus: object = ()) -> None:
            for m in parent.mounts:  # the cgroup vanishes between prepare and attach
                if (m / rel).is_dir():
                    (m / rel).rmdir()
            real_attach(rel, pid)

        parent.cgroups.attach = attach  # type: ignore[method-assign]
        with pytest.raises(LaunchError, match="cgroup"):
            launcher.start(launch(base, ["touch", str(marker)], env={}))
        time.sleep(0.3)
        assert not marker.exists()
        assert parent.leftovers() == []
    finally:
        parent.close()


# Stands in for busctl on a host without systemd: does what StartTransientUnit would do to
# the cgroup tree (a scope under dcsched.slice holding the given pid), or fails as told.
FAKE_BUSCTL = """#!/bin/sh
if [ -n "$FAKE_BUSCTL_FAIL" ]; then echo "$FAKE_BUSCTL_FAIL" >&2; exit 1; fi
while [ "$1" != "ssa(sv)a(sa(sv))" ]; do shift; done
unit=$2
while [ "$1" != "PIDs" ]; do shift; done
mkdir -p "$FAKE_CGROOT/dcsched.slice/$unit"
echo "$4" > "$FAKE_CGROOT/dcsched.slice/$unit/cgroup.procs"
"""


def test_a_systemd_scope_is_joined_before_the_job_runs(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v2 = [h for h in host_facts().hierarchies if h.version == 2]
    if not v2:
        pytest.skip("no cgroup2 hierarchy on this host")
    busctl = base / "bin" / "busctl"
    busctl.parent.mkdir()
    busctl.write_text(FAKE_BUSCTL)
    busctl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{busctl.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CGROOT", v2[0].mount)
    cgroups = Cgroups(Choice("systemd", "test"), v2)
    slice_dir = Path(v2[0].mount) / "dcsched.slice"
    launcher = Launcher(base / "state", str(base / "torchrun"), runner_python=PYTHON,
                        cgroups=cgroups)  # fmt: skip
    code = "import os; print(open('/proc/self/cgroup').read(), flush=True)"
    rec = launcher.start(launch(base, [PYTHON, "-c", code], env={}))
    try:
        assert rec.cgroup.startswith("dcsched.slice/dcsched-j1_0_")
        assert rec.cgroup.endswith(".scope")
        assert wait_exit(launcher, rec).exit_code == 0
        # The job's first line of output already comes from inside the scope.
        assert f"0::/{rec.cgroup}\n" in Path(rec.log_path).read_text()
        launcher.cleanup(rec)
        assert cgroups.pids(rec.cgroup) == []

        monkeypatch.setenv("FAKE_BUSCTL_FAIL", "Access denied")
        marker = base / "ran"
        with pytest.raises(LaunchError, match=r"systemd could not make scope .*Access denied"):
            launcher.start(launch(base, ["touch", str(marker)], env={}, job_id="j2"))
        time.sleep(0.3)
        assert not marker.exists()
    finally:
        # systemd would collect the empty scope; here the test removes what its fake made.
        cgroups.remove(rec.cgroup)
        for d in [*slice_dir.glob("dcsched-*.scope"), slice_dir]:
            if d.is_dir():
                d.rmdir()


def test_sweep_removes_only_empty_cgroups_nobody_keeps(procs: Procs) -> None:
    choice, hs = hierarchies("auto")
    parent = Parent(choice, hs)
    cg = parent.cgroups
    try:
        stale, kept, busy = (cg.prepare(n, []) for n in ("stale", "kept", "busy"))
        sleeper = procs.popen([sys.executable, "-c", "import time; time.sleep(60)"])
        cg.attach(busy, sleeper.pid)
        assert cg.sweep(keep={kept}, min_age_s=60) == []  # all of them too young
        removed = cg.sweep(keep={kept}, min_age_s=0)
        assert {Path(p).name for p in removed} == {"stale"}
        assert cg.pids(stale) == [] and not cg._dirs(stale)
        assert cg._dirs(kept) and cg.pids(busy) == [sleeper.pid]
    finally:
        parent.close()
    assert not any((m / parent.name).exists() for m in parent.mounts)


def test_the_probe_leaves_out_a_hierarchy_the_limits_do_not_need() -> None:
    choice, hs = hierarchies("auto")
    broken = Hierarchy("/dev/null", 1, frozenset({"memory"}))  # cannot be written
    parent = Parent(choice, [*hs, broken])
    try:
        parent.cgroups.probe()
        assert parent.cgroups.kind == choice.kind, parent.cgroups.reason
        assert broken not in parent.cgroups.hierarchies
        assert parent.leftovers() == []  # the probe's own cgroup is gone
    finally:
        parent.mounts.remove(Path("/dev/null"))
        parent.close()
    assert not any((m / parent.name).exists() for m in parent.mounts)
