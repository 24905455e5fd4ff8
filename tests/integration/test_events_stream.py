"""`GET /v1/events` through the client and `dcctl events`, against a real daemon on a real
broker: a job's states in order, resuming from a cursor, a daemon restart (reconnection
and reset), giving up on a daemon gone, and the CLI as a user runs it."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

from dcsched.client import Client, DaemonUnreachable, EventStream, StreamEvent
from tests.conftest import PROCESS_TIMEOUT, Broker, Procs
from tests.integration.daemon_harness import (
    ScriptedAgent,
    api,
    run_on,
    running_daemon,
    until,
    write_config,
)

SPEC = {
    "name": "ev",
    "command": ["train.py"],
    "workdir": "/tmp",
    "resources": {"nodes": 1, "gpus_per_node": 2, "time_limit": "10m"},
}


class Reader:
    """Iterates a stream in a thread, as a program would; closed on leaving."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.events: list[StreamEvent] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for ev in self.stream:
                self.events.append(ev)
        except BaseException as exc:
            self.error = exc

    def states(self, job_id: int) -> list[str]:
        """The job's states in the order they came, each once in a row."""
        out: list[str] = []
        for e in list(self.events):
            if e.kind == "job" and e.data.get("id") == job_id and e.data["state"] not in out[-1:]:
                out.append(e.data["state"])
        return out

    def __enter__(self) -> Reader:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stream.close()
        self.thread.join(20)
        assert not self.thread.is_alive(), "the stream did not end on close()"


def seq(cursor: str) -> int:
    return int(cursor.rpartition("-")[2])


async def test_a_job_s_states_arrive_in_order_and_resume_from_a_cursor(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix)
    async with running_daemon(conf) as d, ScriptedAgent(mosquitto, prefix, "n1") as agent:
        client = Client(d.config.daemon.socket)
        await until(lambda: len(d.cluster.nodes) == 1, what="node n1")
        with Reader(client.events(kinds="job", timeout=10)) as r:
            await until(lambda: r.events, timeout=20, what="the hello")
            hello = r.events[0]
            assert (hello.kind, hello.data) == ("hello", {"cursor": hello.cursor})
            job_id = await api(client, "submit", SPEC)
            await run_on(agent, client, job_id)
            await agent.exit(str(job_id), 0, 3)
            await until(lambda: "FAILED" in r.states(job_id), timeout=30, what="FAILED")
            assert r.states(job_id) == ["PENDING", "STARTING", "RUNNING", "FAILED"]
            assert {e.kind for e in r.events[1:]} == {"job"}  # ?kinds=job: no node events
            cursors = [seq(e.cursor) for e in r.events]
            assert cursors == sorted(cursors) and len(set(cursors[1:])) == len(cursors) - 1
            last = [e for e in r.events if e.kind == "job"][-1]
            assert last.data["user"] and last.data["reason"], last
            assert r.error is None
        # From the hello's cursor, the same changes again (kept in the daemon's ring).
        with Reader(client.events(since=hello.cursor, kinds=["job"], timeout=10)) as again:
            await until(lambda: "FAILED" in again.states(job_id), timeout=20, what="replay")
            assert again.states(job_id) == ["PENDING", "STARTING", "RUNNING", "FAILED"]
            assert again.events[0].kind == "job"  # a resumed stream has no hello
        # A cursor that cannot be resumed: reset first, with the cursor to go on from.
        with Reader(client.events(since="nosuchepoch-3", timeout=10)) as reset:
            await until(lambda: reset.events, timeout=20, what="the reset")
            assert reset.events[0].kind == "reset"
            assert reset.events[0].cursor == reset.events[0].data["cursor"] == d.hub.cursor()


async def test_a_daemon_restart_is_a_reconnection_then_a_reset(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix)
    async with running_daemon(conf) as d:
        client = Client(d.config.daemon.socket)
        follower = Reader(client.events(timeout=60))
        quitter = Reader(client.events(timeout=1.0))
        await until(lambda: follower.events and quitter.events, timeout=20, what="the hellos")
        first = await api(client, "submit", SPEC)
        await until(lambda: follower.states(first) == ["PENDING"], timeout=20, what="PENDING")
    # The daemon is gone: the quitter gives up with the client's usual error.
    await until(lambda: not quitter.thread.is_alive(), timeout=30, what="the quitter giving up")
    assert isinstance(quitter.error, DaemonUnreachable), quitter.error
    with follower:
        async with running_daemon(conf) as d2:
            await until(
                lambda: any(e.kind == "reset" for e in follower.events),
                timeout=30,
                what="the reset after the restart",
            )
            second = await api(client, "submit", SPEC)
            await until(lambda: follower.states(second), timeout=20, what="the second job")
            kinds = [e.kind for e in follower.events]
            assert kinds.count("hello") == 1 and kinds.count("reset") == 1, kinds
            reset_at = kinds.index("reset")
            assert follower.events[reset_at].cursor.startswith(d2.hub.epoch)
            assert follower.states(second) == ["PENDING"]
            assert follower.error is None


def _lines(proc: subprocess.Popen[str], into: list[str]) -> threading.Thread:
    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            into.append(line)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


async def _interrupt(proc: subprocess.Popen[str], reader: threading.Thread) -> int:
    proc.send_signal(signal.SIGINT)
    rc = await asyncio.to_thread(proc.wait, 30)
    await asyncio.to_thread(reader.join, 10)
    return rc


@PROCESS_TIMEOUT
async def test_dcctl_events_prints_changes_and_ends_on_ctrl_c(
    tmp_path: Path, mosquitto: Broker, prefix: str, procs: Procs
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix)
    async with running_daemon(conf) as d:
        client = Client(d.config.daemon.socket)
        dcctl = [sys.executable, "-m", "dcsched.cli.dcctl", "--socket", d.config.daemon.socket]
        err = tmp_path / "json.err"
        with err.open("w") as err_file:
            proc = procs.popen(
                [*dcctl, "events", "--json"], stdout=subprocess.PIPE, stderr=err_file, text=True
            )
        out: list[str] = []
        reader = _lines(proc, out)
        await until(lambda: out, timeout=60, what="the hello line")
        hello = json.loads(out[0])
        assert hello["kind"] == "hello" and hello["cursor"] == hello["data"]["cursor"], hello
        job_id = await api(client, "submit", SPEC)

        def submitted() -> bool:
            objs = [json.loads(line) for line in list(out)]
            return any(
                o["kind"] == "job" and o["data"]["id"] == job_id and o["data"]["state"] == "PENDING"
                for o in objs
            )

        await until(submitted, timeout=30, what="the submit event")
        assert all(json.loads(line)["cursor"] for line in out)
        assert await _interrupt(proc, reader) == 0
        assert "Traceback" not in err.read_text(), err.read_text()

        # Human lines, from the hello's cursor: the submit again.
        err = tmp_path / "human.err"
        with err.open("w") as err_file:
            proc = procs.popen(
                [*dcctl, "events", "--since", hello["cursor"], "--kinds", "job"],
                stdout=subprocess.PIPE,
                stderr=err_file,
                text=True,
            )
        out = []
        reader = _lines(proc, out)
        line = re.compile(rf"^\d\d:\d\d:\d\d  job {job_id}  PENDING\b")
        await until(lambda: any(line.match(x) for x in list(out)), timeout=60, what="the line")
        assert await _interrupt(proc, reader) == 0
        assert "Traceback" not in err.read_text(), err.read_text()
