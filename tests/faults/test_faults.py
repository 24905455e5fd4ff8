"""End to end: the daemon's fault semantics with real processes. Each test has a Mosquitto,
a `dcd` and `dc-agent`s of its own (sim GPUs, real torchrun jobs), and breaks one of them:
an agent restarted or gone, the broker killed, a master port taken, a launch refused, a
request refused, the state disk full; and the event stream is read across reconnects."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcsched.client import ApiError
from tests.conftest import PROCESS_TIMEOUT, Procs
from tests.faults.harness import ENDED, EventStream, Rig, alive, until

pytestmark = [pytest.mark.e2e, pytest.mark.faults, PROCESS_TIMEOUT]


@pytest.fixture
def rig(procs: Procs, tmp_path: Path) -> Iterator[Rig]:
    """A cluster of one agent ("node1", two sim GPUs), node_timeout_s = 20."""
    r = Rig.up(tmp_path, procs)
    yield r
    # procs' finalizer kills every process, jobs included, pass or fail.


def _stays(rig: Rig, job_ids: list[int], state: str, seconds: float) -> None:
    """Polls throughout `seconds`: every job is `state` every time."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for job_id in job_ids:
            job = rig.job(job_id)
            assert job["state"] == state, (job, rig.logs())
        time.sleep(0.25)


def _started(rig: Rig, name: str) -> int:
    """Waits until the job script `name` runs (inside torchrun): its worker's pid."""
    f = rig.jobs_dir / f"{name}.go.started"
    return int(until(lambda: f.exists() and f.read_text(), 120, f"{name} to start"))


# --- 1. an agent restarted keeps its jobs --------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_agent_restart_keeps_its_jobs_and_their_exit_codes(rig: Rig, sig: int) -> None:
    ok = rig.submit(rig.spec("ok", rig.marker("ok"), 0))
    bad = rig.submit(rig.spec("bad", rig.marker("bad"), 3))
    jobs = [ok, bad]
    for j in jobs:
        rig.wait(j, {"RUNNING"})
    workers = {j: _started(rig, n) for j, n in ((ok, "ok"), (bad, "bad"))}
    launchers = {j: rig.job(j)["node_parts"][0]["pid"] for j in jobs}
    watched = [*workers.values(), *launchers.values()]
    assert all(alive(p) for p in watched)

    rig.stop_agent("node1", sig)
    # Down for ~3 s (well under node_timeout_s = 20): the jobs stay RUNNING throughout.
    _stays(rig, jobs, "RUNNING", 3.0)
    rig.start_agent("node1")
    deadline = time.monotonic() + 60
    while True:
        _stays(rig, jobs, "RUNNING", 0.5)
        nodes = {n["host"]: n["state"] for n in rig.client.nodes()}
        if nodes.get("node1") == "up":
            break
        assert time.monotonic() < deadline, f"node1 did not come back: {nodes}\n{rig.logs()}"
    # Back, the agent re-adopts its jobs and the daemon leaves them alone.
    _stays(rig, jobs, "RUNNING", 5.0)
    assert all(alive(p) for p in watched), rig.logs()
    assert not list(rig.jobs_dir.glob("*.terminated")), "a job was sent SIGTERM"
    agent_log = (rig.dir / "node1.log").read_text()
    assert agent_log.count("re-adopting job") >= 2, agent_log

    # Then they end on their own, and their real exit codes are recorded.
    rig.marker("ok").touch()
    rig.marker("bad").touch()
    done = rig.wait(ok, ENDED)
    assert done["state"] == "COMPLETED" and done["exit_code"] == 0, (done, rig.logs())
    failed = rig.wait(bad, ENDED)
    assert failed["state"] == "FAILED" and failed["exit_code"] == 3, (failed, rig.logs())
    assert not [e for j in jobs for e in rig.job(j)["events"] if e["state"] == "NODE_FAIL"]


# --- 2. an agent gone for good -------------------------------------------------------------------


def test_an_agent_gone_for_good_fails_its_job_after_node_timeout(
    procs: Procs, tmp_path: Path
) -> None:
    timeout_s = 8.0
    rig = Rig.up(tmp_path, procs, node_timeout_s=timeout_s)
    job_id = rig.submit(rig.spec("lost", rig.marker("lost")))
    rig.wait(job_id, {"RUNNING"})
    rig.stop_agent("node1", signal.SIGKILL)
    killed = time.monotonic()
    # Not at once: an agent that went away may be restarting.
    _stays(rig, [job_id], "RUNNING", 1.5)
    job = rig.wait(job_id, ENDED, timeout=timeout_s + 60)
    assert job["state"] == "NODE_FAIL", (job, rig.logs())
    assert "node1" in job["reason"], job
    # A lower bound only (an early NODE_FAIL is the bug), with slack for telemetry sent late.
    assert time.monotonic() - killed > timeout_s / 2, job


# --- 3. a broker crash does not lose exits -------------------------------------------------------


def test_exits_during_a_broker_outage_are_not_lost(rig: Rig) -> None:
    names = ("a", "b")
    jobs = [rig.submit(rig.spec(n, rig.marker(n))) for n in names]
    for j in jobs:
        rig.wait(j, {"RUNNING"})
    workers = [_started(rig, n) for n in names]
    launchers = [rig.job(j)["node_parts"][0]["pid"] for j in jobs]

    rig.kill_broker()
    until(
        lambda: rig.health_status()[1].get("broker_connected") is False,
        30,
        "the daemon to see the broker gone",
    )
    for n in names:
        rig.marker(n).touch()
    # The jobs end while the broker is down; the agent keeps their exits.
    until(lambda: not any(alive(p) for p in workers + launchers), 60, "the jobs to exit")
    agent_log = rig.dir / "node1.log"
    until(lambda: agent_log.read_text().count("exited: code 0") >= 2, 30, "the agent to see it")
    for j in jobs:
        assert rig.job(j)["state"] == "RUNNING"

    rig.start_broker()  # the same port, an empty broker (no persistence)
    for j in jobs:
        job = rig.wait(j, ENDED, timeout=120)
        assert job["state"] == "COMPLETED" and job["exit_code"] == 0, (job, rig.logs())


# --- 4. a master port taken ----------------------------------------------------------------------


def test_a_taken_master_port_is_retried_with_another(procs: Procs, tmp_path: Path) -> None:
    # A listening socket on the range's first port, as another program would hold it.
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        for _ in range(50):
            first = int.from_bytes(os.urandom(2), "big") % 20000 + 30000
            try:
                holder.bind(("0.0.0.0", first))
                break
            except OSError:
                continue
        holder.listen()
        rig = Rig.up(tmp_path, procs, port_range=f"{first}-{first + 9}")
        marker = rig.marker("port")
        marker.touch()  # it ends as soon as it runs
        job_id = rig.submit(rig.spec("port", marker))
        job = rig.wait(job_id, ENDED, timeout=120)
        assert job["state"] == "COMPLETED", (job, rig.logs())
        assert job["master_port"] != first and first < job["master_port"] <= first + 9, job
        assert any(f"master port {first} is in use" in e["detail"] for e in job["events"]), job
        assert not [e for e in job["events"] if e["state"] == "FAILED"], job
        shown = rig.cli("dcctl", "show", str(job_id)).stdout
        assert f"Master = 127.0.0.1:{job['master_port']}" in shown, shown
    finally:
        holder.close()


# --- 5. a launch the agent refuses ---------------------------------------------------------------


def test_a_refused_launch_fails_at_once_with_the_agents_reason(rig: Rig) -> None:
    missing = rig.dir / "no-such-dir"
    job_id = rig.submit(rig.spec("nowhere", rig.marker("nowhere"), workdir=str(missing)))
    job = rig.wait(job_id, ENDED, timeout=60)
    assert job["state"] == "FAILED", (job, rig.logs())
    assert f"workdir {missing} does not exist" in job["reason"], job
    assert "node1" in job["reason"], job
    queue = rig.cli("dcctl", "queue", "--all").stdout
    line = next((ln for ln in queue.splitlines() if ln.split()[:1] == [str(job_id)]), "")
    assert "FAILED" in line, queue
    assert "does not exist" in line, queue


# --- 6. the API refuses at submit ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "over"),
    [
        ("env", {"env": {"OMP_NUM_THREADS": "1", "BAD": "a\x00b"}}),
        ("command", {"command": ["train.py", "--x\x00y"]}),
    ],
)
def test_a_nul_byte_is_refused_at_submit(rig: Rig, where: str, over: dict[str, object]) -> None:
    before = rig.client.jobs(all_states=True)
    with pytest.raises(ApiError) as err:
        rig.submit(rig.spec("nul", rig.marker("nul"), **over))
    assert err.value.status == 400, err.value
    assert err.value.code == "invalid_request"
    assert "NUL" in err.value.message and where in err.value.message, err.value.message
    assert rig.client.jobs(all_states=True) == before


# --- 7. the state disk full ----------------------------------------------------------------------


def _fill(path: Path) -> None:
    """Writes `path` until the filesystem has no room left."""
    with open(path, "ab", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            chunk = b"x" * size
            while True:
                try:
                    f.write(chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break


def _mount(args: list[str]) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount {args[-1]}: {done.stderr.strip()}")


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _unhealthy(rig: Rig) -> dict[str, object] | None:
    status, body = rig.health_status()
    return body if status == 503 and body.get("storage_ok") is False else None


def _broken_store_answers(rig: Rig, says: str) -> None:
    """Health says the store is broken, with the reason; a submit gets 503 and the reason."""
    health = until(lambda: _unhealthy(rig), 60, "GET /v1/health to answer 503 for the store")
    assert health["ok"] is False, health
    assert any("store" in str(p) for p in health["problems"]), health  # type: ignore[attr-defined]
    status, body = rig.raw("POST", "/v1/jobs", rig.spec("more", rig.marker("more")))
    assert status == 503, body
    assert says in body["error"]["message"].lower(), body  # the store's own reason
    assert body["error"]["code"] == "unavailable", body


def _exit_waits(rig: Rig, job_id: int, worker: int) -> None:
    """The job ends while the store cannot be written: its exit waits, it is not dropped."""
    rig.marker("full").touch()
    until(lambda: not alive(worker), 60, "the job to exit")
    agent_log = rig.dir / "node1.log"
    until(lambda: "exited: code 0" in agent_log.read_text(), 30, "the agent to see the exit")
    assert rig.job(job_id)["state"] == "RUNNING"


def _stops_on_sigterm(rig: Rig) -> None:
    assert rig.daemon is not None
    rig.daemon.send_signal(signal.SIGTERM)
    try:
        rig.daemon.wait(30)
    except subprocess.TimeoutExpired:
        why = f"dcd did not stop in 30 s with its store broken\n{rig.logs()}"
        raise AssertionError(why) from None


def _running_job(rig: Rig, state_dir: Path) -> tuple[int, int]:
    rig.start_broker()
    rig.start_daemon(state_dir=state_dir, telemetry_flush_s=1.0)
    rig.start_agent("node1")
    rig.wait_nodes_up("node1")
    job_id = rig.submit(rig.spec("full", rig.marker("full")))
    rig.wait(job_id, {"RUNNING"})
    return job_id, _started(rig, "full")


def test_a_full_state_disk_answers_503_and_keeps_exits(procs: Procs, tmp_path: Path) -> None:
    """Health says so, submits get 503 with the reason, an exit that arrives meanwhile is
    applied once the disk has room again, and SIGTERM still stops the daemon."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount(["-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)])
    try:
        rig = Rig(tmp_path, procs)
        job_id, worker = _running_job(rig, disk / "state")
        filler = disk / "filler"
        _fill(filler)
        _broken_store_answers(rig, "disk is full")
        _exit_waits(rig, job_id, worker)
        filler.unlink()
        until(lambda: rig.health_status()[0] == 200, 60, "health back to ok")
        job = rig.wait(job_id, ENDED, timeout=60)
        assert job["state"] == "COMPLETED" and job["exit_code"] == 0, (job, rig.logs())
        assert rig.client.submit(rig.spec("after", rig.marker("full"))) > job_id
        _fill(filler)  # a full disk must not keep the daemon from stopping
        until(lambda: _unhealthy(rig), 60, "GET /v1/health to answer 503 again")
        _stops_on_sigterm(rig)
    finally:
        procs.kill_all()
        _unmount(disk)


def test_a_state_disk_gone_read_only_keeps_exits_for_the_next_start(
    procs: Procs, tmp_path: Path
) -> None:
    """The state dir's filesystem turns read-only under the daemon (ext4 errors=remount-ro,
    as a failing disk does): health and submits say so, SIGTERM stops the daemon, and the
    admin's way out (the state copied to a good disk, the daemon started there) loses no
    exit that arrived meanwhile: the agent keeps it until a daemon acknowledges it."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root and mkfs.ext4 for a loop-mounted ext4")
    image, disk = tmp_path / "ext4.img", tmp_path / "disk"
    with image.open("wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    disk.mkdir()
    _mount(["-o", "loop,errors=remount-ro", str(image), str(disk)])
    try:
        rig = Rig(tmp_path, procs)
        job_id, worker = _running_job(rig, disk / "state")
        device = Path(_source(disk)).name
        Path(f"/sys/fs/ext4/{device}/trigger_fs_error").write_text("1")
        _broken_store_answers(rig, "read-only")
        _exit_waits(rig, job_id, worker)
        _stops_on_sigterm(rig)
        moved = tmp_path / "moved"
        shutil.copytree(disk / "state", moved)
        rig.start_daemon(state_dir=moved)
        job = rig.wait(job_id, ENDED, timeout=60)
        assert job["state"] == "COMPLETED" and job["exit_code"] == 0, (job, rig.logs())
    finally:
        procs.kill_all()
        _unmount(disk)


def _source(path: Path) -> str:
    out = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", str(path)], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


# --- 8. the event stream -------------------------------------------------------------------------


def test_the_event_stream_resumes_from_its_cursor(rig: Rig) -> None:
    stream = EventStream(rig.socket)
    try:
        hello = stream.next(30)
        assert hello.event == "hello" and hello.id, hello
        marker = rig.marker("sse")
        marker.touch()
        job_id = rig.submit(rig.spec("sse", marker))
        seen = stream.collect(
            lambda e: e.event == "job" and e.data["id"] == job_id and e.data["state"] in ENDED,
            120,
        )
    finally:
        stream.close()
    mine = [e for e in seen if e.event == "job" and e.data["id"] == job_id]
    states = [e.data["state"] for e in mine]
    assert states[0] == "PENDING", states  # submit
    assert "RUNNING" in states, states  # start
    assert states[-1] == "COMPLETED", states  # end
    assert all(e.id.startswith(hello.id.rpartition("-")[0] + "-") for e in seen), seen
    seqs = [e.seq for e in seen]
    assert seqs == sorted(set(seqs)) and seqs[0] > hello.seq, seqs

    # Resuming from the submit's cursor gives what followed it, once each, in order.
    cursor = mine[0].id
    after = [e for e in seen if e.seq > mine[0].seq]
    again = EventStream(rig.socket, f"since={cursor}")
    try:
        resumed = again.collect(lambda e: e.seq >= after[-1].seq, 30)
    finally:
        again.close()
    assert [(e.id, e.event, e.data) for e in resumed] == [(e.id, e.event, e.data) for e in after], (
        resumed,
        after,
    )

    # A cursor the daemon cannot resume from: a reset, then the stream follows on.
    bogus = EventStream(rig.socket, "since=bogus-12")
    try:
        first = bogus.next(30)
        assert first.event == "reset", first
        assert "cursor" in first.data and first.id == first.data["cursor"], first
    finally:
        bogus.close()
