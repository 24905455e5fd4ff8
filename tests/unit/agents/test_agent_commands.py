"""The agent's command handling against a recording fake of the MQTT client."""

from __future__ import annotations

import random
import re
import signal
import socket
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dcsched.agents.agent import BACKOFF_MAX_S, Agent, backoff_delay
from dcsched.agents.errors import INVALID, PORT_IN_USE, AgentError
from dcsched.agents.procs import is_alive
from dcsched.protocol.codec import sign
from dcsched.protocol.config import ClusterConfig, Config
from dcsched.protocol.messages import (
    Ack,
    AckExit,
    Cancel,
    FetchLog,
    JobExited,
    JobReport,
    JobStarted,
    Launch,
    QueryJob,
    Signal,
)
from tests.unit.agents.helpers import KEY, FakeClient, launch, make_agent, py, until, wait_jobs_done


def launches(tmp_path: Path) -> int:
    return len(list((tmp_path / "state" / "logs").glob("*/node*.log")))


async def test_a_repeated_cmd_id_is_acked_again_and_runs_once(
    tmp_path: Path, agent_config: Config
) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    marker = tmp_path / "runs"
    cmd = launch(tmp_path, py(f"open({str(marker)!r}, 'a').write('x')"))
    await agent.handle(client, cmd)  # type: ignore[arg-type]
    await agent.handle(client, cmd)  # type: ignore[arg-type]
    acks = [e for e in client.events() if isinstance(e, Ack)]
    assert len(acks) == 2 and acks[0] == acks[1] and acks[0].ok
    await wait_jobs_done(agent)
    assert marker.read_text() == "x"
    outbox = agent.store.state.outbox
    assert [type(e) for e in outbox] == [JobStarted, JobExited]
    assert isinstance(outbox[1], JobExited) and outbox[1].exit_code == 0 and not outbox[1].reason

    # ... also after a restart: executed ids live in the state file.
    again = make_agent(agent_config, tmp_path)
    again.store.load()
    client2 = FakeClient()
    await again.handle(client2, cmd)  # type: ignore[arg-type]
    assert client2.events() == [acks[0]]
    assert marker.read_text() == "x"


async def test_a_launch_of_a_running_job_is_acked_without_a_second_launch(
    tmp_path: Path, agent_config: Config
) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    await agent.handle(client, launch(tmp_path, ["sleep", "30"]))  # type: ignore[arg-type]
    await agent.handle(client, launch(tmp_path, ["sleep", "30"], cmd_id="c2"))  # type: ignore[arg-type]
    assert [e.ok for e in client.events() if isinstance(e, Ack)] == [True, True]
    assert len(agent.jobs) == 1 and agent.jobs["j1#0"].cmd_ids == ["c1", "c2"]
    await agent.handle(client, Cancel(cmd_id="c3", job_id="j1", grace_s=2))  # type: ignore[arg-type]
    await wait_jobs_done(agent)


async def test_cancel_terms_then_kills_and_reports(tmp_path: Path, agent_config: Config) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    stubborn = py(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    await agent.handle(client, launch(tmp_path, stubborn))  # type: ignore[arg-type]
    rec = agent.jobs["j1#0"]
    log = Path(rec.log_path)
    await until(lambda: "up" in log.read_text().splitlines())
    pids = agent.launcher.pids(rec)
    await agent.handle(client, Cancel(cmd_id="c2", job_id="j1", grace_s=0.5))  # type: ignore[arg-type]
    await wait_jobs_done(agent)
    exited = agent.store.state.outbox[-1]
    assert isinstance(exited, JobExited)
    assert exited.reason == "cancelled" and exited.signal == signal.SIGKILL
    assert pids and not [p for p in pids if is_alive(p)]
    last = log.read_text().splitlines()[-1]  # the log says how it ended, last
    assert last == "[dcsched] stopped: cancelled: signal 9 (SIGKILL)"

    # A cancel of a job that already exited here says again how it ended.
    await agent.handle(client, Cancel(cmd_id="c3", job_id="j1"))  # type: ignore[arg-type]
    assert agent.store.state.outbox[-1] == exited
    await agent.handle(client, Cancel(cmd_id="c4", job_id="never"))  # type: ignore[arg-type]
    ack = client.events()[-1]
    assert isinstance(ack, Ack) and ack.ok and "does not run on unit" in ack.error


async def test_cancel_with_grace_lets_the_job_stop(tmp_path: Path, agent_config: Config) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    await agent.handle(client, launch(tmp_path, ["sleep", "30"]))  # type: ignore[arg-type]
    # A grace far longer than the wait: however slow the machine, SIGTERM alone ends it.
    await agent.handle(client, Cancel(cmd_id="c2", job_id="j1", grace_s=300, reason="timeout"))  # type: ignore[arg-type]
    await wait_jobs_done(agent)
    exited = agent.store.state.outbox[-1]
    assert isinstance(exited, JobExited)
    assert (exited.reason, exited.signal) == ("timeout", signal.SIGTERM)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"workdir": "/nonexistent"}, "workdir /nonexistent does not exist"),
        ({"command": ["echo", "a\0b"]}, "command argument 1 contains a NUL byte"),
        ({"env": {"X": "a\0b"}}, "environment variable X contains a NUL byte"),
        ({"env": {"X\0": "a"}}, "environment variable name"),
        ({"workdir": "/tmp\0x"}, "workdir contains a NUL byte"),
        ({"user": "a\0b"}, "user contains a NUL byte"),
        ({"user": "no-such-user-xyz"}, "user 'no-such-user-xyz' does not exist"),
        ({"gpus": [9]}, r"GPUs \[9\] do not exist"),
    ],
)
async def test_a_launch_that_cannot_run_here_is_refused_as_invalid_every_time(
    tmp_path: Path, agent_config: Config, kw: dict[str, Any], message: str
) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    cmd = launch(tmp_path, **{"command": ["true"], **kw})
    await agent.handle(client, cmd)  # type: ignore[arg-type]
    (ack,) = client.events()
    assert isinstance(ack, Ack) and not ack.ok and ack.code == INVALID
    assert re.search(message, ack.error)
    # The Ack is the whole answer: no launch_failed exit besides it, nothing started.
    assert agent.store.state.outbox == [] and not agent.jobs and launches(tmp_path) == 0
    # A retry (the daemon missed the Ack) is answered the same, also after a restart.
    await agent.handle(client, cmd)  # type: ignore[arg-type]
    again = make_agent(agent_config, tmp_path)
    again.store.load()
    await again.handle(client, cmd)  # type: ignore[arg-type]
    assert client.events() == [ack, ack, ack]


async def test_another_launch_failure_is_answered_and_ends_the_node_part(
    tmp_path: Path, agent_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = make_agent(agent_config, tmp_path)

    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(agent.launcher, "start", broken)
    client = FakeClient()
    await agent.handle(client, launch(tmp_path, ["true"]))  # type: ignore[arg-type]
    (ack,) = client.events()
    assert isinstance(ack, Ack) and not ack.ok and ack.code == "" and "a bug" in ack.error
    (exited,) = agent.store.state.outbox
    assert isinstance(exited, JobExited) and exited.reason == "launch_failed"
    assert exited.launch_id == "c1"


async def test_rank_0_refuses_a_master_port_in_use(tmp_path: Path, agent_config: Config) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        cmd = launch(tmp_path, ["true"], master_port=port)
        await agent.handle(client, cmd)  # type: ignore[arg-type]
        await agent.handle(client, cmd)  # type: ignore[arg-type]
        ack = client.events()[0]
        assert isinstance(ack, Ack) and not ack.ok and ack.code == PORT_IN_USE
        assert ack.error == f"master port {port} is in use on unit"
        assert client.events() == [ack, ack]  # remembered under its cmd_id
        assert agent.store.state.outbox == [] and launches(tmp_path) == 0
        # Another rank does not serve the port: it launches.
        rank1 = launch(tmp_path, ["true"], cmd_id="c2", node_rank=1, nnodes=2, master_port=port)
        await agent.handle(client, rank1)  # type: ignore[arg-type]
        assert client.events()[-1].ok
    # The daemon retries with another port.
    await agent.handle(client, launch(tmp_path, ["true"], cmd_id="c3"))  # type: ignore[arg-type]
    assert client.events()[-1].ok and client.events()[-1].cmd_id == "c3"
    await wait_jobs_done(agent)


async def test_query_job_reports_running_ranks_and_last_exits(
    tmp_path: Path, agent_config: Config
) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    await agent.handle(client, launch(tmp_path, ["true"], node_rank=1, nnodes=3))  # type: ignore[arg-type]
    await wait_jobs_done(agent)
    await agent.handle(client, launch(tmp_path, ["sleep", "30"], cmd_id="c2", nnodes=3))  # type: ignore[arg-type]
    await agent.handle(client, QueryJob(cmd_id="q1", job_id="j1"))  # type: ignore[arg-type]
    report = client.events()[-1]
    assert isinstance(report, JobReport) and report.host == "unit" and report.cmd_id == "q1"
    assert report.running == [0]
    (ex,) = report.exits
    assert (ex.node_rank, ex.exit_code, ex.launch_id) == (1, 0, "c1")
    # A question is answered every time, and never remembered.
    await agent.handle(client, QueryJob(cmd_id="q1", job_id="j1"))  # type: ignore[arg-type]
    assert client.events()[-1] == report and agent.store.command("q1") is None
    await agent.handle(client, QueryJob(cmd_id="q2", job_id="other"))  # type: ignore[arg-type]
    assert client.events()[-1] == JobReport(host="unit", cmd_id="q2", job_id="other")
    await agent.handle(client, Cancel(cmd_id="c3", job_id="j1", grace_s=2))  # type: ignore[arg-type]
    await wait_jobs_done(agent)


async def test_unsigned_or_forged_commands_are_dropped(
    tmp_path: Path, agent_config: Config
) -> None:
    agent = make_agent(agent_config, tmp_path, key=True)
    cmd = launch(tmp_path, ["true"])
    client = FakeClient([
        sign(cmd, None, host="unit"),  # unsigned
        sign(cmd, b"x" * 32, host="unit"),  # wrong key
        sign(cmd, KEY, host="other"),  # for another host
        b"{garbage",
    ])  # fmt: skip
    await agent._receive(client)  # type: ignore[arg-type]
    assert client.published == []
    assert sum(agent.dropped.values()) == 4
    assert agent.dropped["wrong_host"] == 1 and agent.dropped["bad_signature"] == 2
    assert launches(tmp_path) == 0
    good = FakeClient([sign(cmd, KEY, host="unit")])
    await agent._receive(good)  # type: ignore[arg-type]
    assert [type(e) for e in good.events()] == [Ack]
    await wait_jobs_done(agent)


async def test_fetch_log(tmp_path: Path, agent_config: Config) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    await agent.handle(client, launch(tmp_path, ["echo", "hello from the job"]))  # type: ignore[arg-type]
    await wait_jobs_done(agent)
    await agent.handle(client, FetchLog(cmd_id="f1", job_id="j1", node_rank=0))  # type: ignore[arg-type]
    chunk = client.events()[-1]
    assert "hello from the job" in chunk.data and chunk.size > 0 and not chunk.error
    await agent.handle(client, FetchLog(cmd_id="f2", job_id="j1", node_rank=3))  # type: ignore[arg-type]
    assert "no log" in client.events()[-1].error


async def test_telemetry_maps_job_pids_to_its_gpus(tmp_path: Path, agent_config: Config) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    await agent.handle(client, launch(tmp_path, ["sleep", "30"], gpus=[2, 3]))  # type: ignore[arg-type]
    msg = agent.sample(list(agent.jobs.values()))
    rec = agent.jobs["j1#0"]
    assert msg.simulated and msg.host == "unit" and len(msg.gpus) == 4
    (procs,) = msg.jobs
    assert procs.gpus == [2, 3] and rec.child_pid in procs.pids
    assert msg.gpus[2].pids == procs.pids and msg.gpus[0].pids == []
    assert agent.sample([]).seq == msg.seq + 1
    await agent.handle(client, Cancel(cmd_id="c2", job_id="j1", grace_s=2))  # type: ignore[arg-type]
    await wait_jobs_done(agent)


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    rng = random.Random(1)
    d = [backoff_delay(a, rng) for a in range(12)]
    assert 0.25 <= d[0] <= 0.5 and 0.5 <= d[1] <= 1.0
    assert all(x <= BACKOFF_MAX_S for x in d) and d[-1] >= BACKOFF_MAX_S / 2
    assert len({round(backoff_delay(3), 6) for _ in range(5)}) > 1


def test_launch_message_has_what_torchrun_needs() -> None:
    fields = set(Launch.__struct_fields__)
    assert {"nnodes", "nproc_per_node", "node_rank", "master_addr", "master_port"} <= fields
    assert pytest is not None


def test_the_agent_refuses_to_start_without_a_key_unless_insecure(
    tmp_path: Path, agent_config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(AgentError, match=r"no \[cluster\] key_file.*--insecure"):
        Agent(agent_config)
    Agent(agent_config, insecure=True)
    assert "INSECURE" in caplog.text


async def test_a_command_is_not_accepted_again_after_an_agent_restart(
    tmp_path: Path, agent_config: Config
) -> None:
    agent = make_agent(agent_config, tmp_path, key=True)
    ack = sign(AckExit(cmd_id="a1", job_id="j1", node_rank=0), KEY, host="unit", epoch=7)
    await agent._receive(FakeClient([ack]))  # type: ignore[arg-type]
    assert not agent.dropped
    restarted = make_agent(agent_config, tmp_path, key=True)
    restarted.store.load()
    restarted.verifier.replay = restarted.store.state.replay  # as run() does
    older = sign(AckExit(cmd_id="a2", job_id="j1", node_rank=0), KEY, host="unit", epoch=6)
    await restarted._receive(FakeClient([ack, older]))  # type: ignore[arg-type]
    assert restarted.dropped == {"replayed": 1, "stale_epoch": 1}


async def test_during_a_rotation_the_agent_accepts_the_new_and_the_previous_key(
    tmp_path: Path, agent_config: Config
) -> None:
    new, old = tmp_path / "new.key", tmp_path / "old.key"
    new.write_bytes(b"n" * 32)
    old.write_bytes(b"o" * 32)
    cluster = ClusterConfig(key_file=str(new), previous_key_file=str(old))
    agent = Agent(msgspec.structs.replace(agent_config, cluster=cluster))
    acks = [
        sign(AckExit(cmd_id=f"a{i}", job_id="j", node_rank=0), key, host="unit")
        for i, key in enumerate((b"n" * 32, b"o" * 32, b"x" * 32))
    ]
    await agent._receive(FakeClient(acks))  # type: ignore[arg-type]
    assert agent.dropped == {"bad_signature": 1}
    with pytest.raises(AgentError, match="previous_key_file is set without key_file"):
        Agent(
            msgspec.structs.replace(agent_config, cluster=ClusterConfig(previous_key_file=str(old)))
        )


# Stands for torchrun (which SIGUSR1 would kill): its child, the worker, checkpoints on SIGUSR1
# and exits 0; so does this process once its worker is gone.
CHECKPOINTING = """
import subprocess, sys
w = subprocess.Popen([sys.executable, '-c', 'import signal, sys, time\\n'
                      'def on(s, f):\\n'
                      '    open("warned", "a").write(str(s) + "\\\\n"); sys.exit(0)\\n'
                      'signal.signal(signal.SIGUSR1, on)\\n'
                      'open("ready", "w").close()\\n'
                      'time.sleep(60)'])
sys.exit(w.wait())
"""


async def test_a_cancel_with_a_warning_signals_the_workers_and_waits_for_them(
    tmp_path: Path, agent_config: Config
) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    await agent.handle(client, launch(tmp_path, py(CHECKPOINTING)))  # type: ignore[arg-type]
    await until((tmp_path / "ready").exists)
    stop = Cancel(
        cmd_id="c2", job_id="j1", grace_s=5, reason="requeued", signal=signal.SIGUSR1,
        signal_lead_s=30,
    )  # fmt: skip
    await agent.handle(client, stop)  # type: ignore[arg-type]
    await wait_jobs_done(agent, timeout=15)  # well before the 30 s lead: no SIGTERM needed
    assert (tmp_path / "warned").read_text() == f"{int(signal.SIGUSR1)}\n"
    exited = agent.store.state.outbox[-1]
    assert isinstance(exited, JobExited)
    assert (exited.exit_code, exited.signal) == (0, None)


async def test_a_signal_command_reaches_the_workers(tmp_path: Path, agent_config: Config) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    await agent.handle(client, launch(tmp_path, py(CHECKPOINTING)))  # type: ignore[arg-type]
    await until((tmp_path / "ready").exists)
    await agent.handle(client, Signal(cmd_id="s1", job_id="j1", signal=signal.SIGUSR1))  # type: ignore[arg-type]
    await agent.handle(client, Signal(cmd_id="s2", job_id="nope", signal=signal.SIGUSR1))  # type: ignore[arg-type]
    acks = {e.cmd_id: e for e in client.events() if isinstance(e, Ack)}
    assert acks["s1"].ok and not acks["s1"].error
    assert "does not run" in acks["s2"].error
    await wait_jobs_done(agent, timeout=15)
    assert (tmp_path / "warned").read_text() == f"{int(signal.SIGUSR1)}\n"
    exited = agent.store.state.outbox[-1]
    assert isinstance(exited, JobExited) and exited.exit_code == 0


async def test_a_plain_cancel_cuts_a_warnings_lead_short(
    tmp_path: Path, agent_config: Config
) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    await agent.handle(client, launch(tmp_path, ["sleep", "60"]))  # type: ignore[arg-type]
    requeue = Cancel(
        cmd_id="c2", job_id="j1", grace_s=5, reason="requeued", signal=signal.SIGUSR1,
        signal_lead_s=60,
    )  # fmt: skip
    await agent.handle(client, requeue)  # type: ignore[arg-type]
    await until(lambda: agent.jobs["j1#0"].warned_ts is not None)
    # (a grace no load runs out: SIGTERM alone ends it)
    await agent.handle(client, Cancel(cmd_id="c3", job_id="j1", grace_s=300))  # type: ignore[arg-type]
    await wait_jobs_done(agent, timeout=15)  # not the 60 s lead
    exited = agent.store.state.outbox[-1]
    assert isinstance(exited, JobExited)
    assert (exited.reason, exited.signal) == ("cancelled", signal.SIGTERM)
