"""docs/user-guide.md is run: its job files are written out, and every command of its `sh`
blocks is parsed by its program's own argparse and, in order, run against a real daemon
with two scripted nodes of four GPUs (gpu01, gpu02). Commands that run until Ctrl-C
(`dcctl logs -f`, `dcctl events`, `dctop`, `dcd demo`) are only parsed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import io
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from dcsched.cli import dcctl, dcsim, dcsub
from dcsched.daemon import main as dcd
from dcsched.protocol.messages import Cancel
from tests.conftest import Broker
from tests.integration.daemon_harness import (
    ScriptedAgent,
    launches,
    running_daemon,
    until,
    write_config,
)

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "user-guide.md"
TRACES = ROOT.parent / "shared" / "traces"


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```", GUIDE.read_text(), re.M | re.S)


def _commands() -> list[list[str]]:
    return [shlex.split(line) for b in _blocks("sh") for line in b.splitlines() if line.strip()]


def _parsers() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    from dcsched.tui.app import build_parser as dctop

    return {
        "dcsub": dcsub.build_parser,
        "dcctl": dcctl.build_parser,
        "dcsim": dcsim.build_parser,
        "dcd": dcd.build_parser,
        "dctop": dctop,
    }


# commands after which the scripted agents act (start launches, end stopped jobs)
_SETTLE = ("release", "resume", "requeue", "cancel")


def _runs(words: list[str]) -> bool:
    if words[0] == "dcctl":
        return words[1] not in ("logs", "events")
    return words[0] in ("dcsub", "dcsim")


def _run(words: list[str], sock: str) -> tuple[int, str]:
    prog, *rest = words
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        match prog:
            case "dcsub":
                rc = dcsub.main([*rest, "--socket", sock])
            case "dcctl":
                rc = dcctl.main(["--socket", sock, *rest])
            case _:
                rc = dcsim.main(
                    [w.replace("../shared/traces", str(TRACES)) for w in rest]
                    + ["--progress", "never"]
                )
    return rc, out.getvalue()


def test_every_command_of_the_guide_parses() -> None:
    parsers = _parsers()
    commands = _commands()
    assert len(commands) > 20
    for words in commands:
        assert words[0] in parsers, words
        parsers[words[0]]().parse_args(words[1:])


async def test_the_guide_runs_on_a_real_daemon(
    tmp_path: Path, mosquitto: Broker, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (TRACES / "tiny60.csv").is_file():
        pytest.skip(f"no trace at {TRACES}")
    for block in _blocks("toml"):
        name = block.splitlines()[0].removeprefix("# ").strip()
        (tmp_path / name).write_text(block)
    monkeypatch.chdir(tmp_path)
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix, admins=[getpass.getuser()])) as d,
        ScriptedAgent(mosquitto, prefix, "gpu01", gpus=4) as a1,
        ScriptedAgent(mosquitto, prefix, "gpu02", gpus=4) as a2,
    ):
        started: set[str] = set()
        stopped: set[str] = set()

        async def act_as_agents(words: list[str]) -> None:
            """The scripted nodes start every launch they got and end every job they are
            told to stop (one warned first exits at once, as a checkpointing job does), as
            real agents would."""
            if words[0] != "dcsub" and words[1] not in (*_SETTLE, "drain"):
                return
            # A scheduling pass that began after the command and has applied its starts
            # (the pass in flight may have missed it; a pass counts itself before it
            # starts jobs, so the one after it), and the launches it made delivered.
            target = d.scheduling.stats.passes + 3

            def scheduled() -> bool:
                d.scheduling.wake.set()
                return d.scheduling.stats.passes >= target

            await until(scheduled, what="a scheduling pass after the command")
            launching = {
                p.launch_id
                for j in d.model.jobs.values()
                for p in j.parts
                if p.state == "launching"
            }
            await until(
                lambda: launching <= {ln.cmd_id for ln in launches(a1, a2)},
                what="the launches delivered",
            )

            async def stopped_jobs_ended() -> bool:
                for agent in (a1, a2):  # a cancel may still be on its way: looked at again
                    for cmd in list(agent.commands):
                        if isinstance(cmd, Cancel) and cmd.cmd_id not in stopped:
                            stopped.add(cmd.cmd_id)
                            job = int(cmd.job_id)
                            for rank in sorted(
                                {ln.node_rank for ln in launches(agent, job_id=job)}
                            ):
                                code, sig = (0, None) if cmd.signal else (None, 15)
                                await agent.exit(cmd.job_id, rank, code, sig, cmd.reason)
                return all(j.state != "COMPLETING" for j in d.model.jobs.values())

            await until(stopped_jobs_ended, what="stopped jobs ended")
            for agent in (a1, a2):
                for launch in launches(agent):
                    if launch.cmd_id not in started:
                        started.add(launch.cmd_id)
                        await agent.start(launch.job_id, launch.node_rank)

        nodes = d.cluster.nodes
        await until(
            lambda: len(nodes) == 2 and all(d.cluster.state(n) == "up" for n in nodes.values()),
            what="both nodes up",
        )
        ran = 0
        outputs: dict[str, str] = {}
        for words in _commands():
            if not _runs(words):
                continue
            rc, out = await asyncio.to_thread(_run, words, d.config.daemon.socket)
            assert rc == 0, f"{shlex.join(words)}:\n{out}"
            outputs[" ".join(words[:3])] = out
            await act_as_agents(words)
            ran += 1
        assert ran >= 20
    # what the guide says the commands show
    assert "Dependency: waits for afterok:1 (1 is " in outputs["dcctl explain 3"]
    assert "gpu01: draining (jobs 1 still run there" in outputs["dcctl drain gpu[01-02]"]
    assert "2|CANCELLED|" not in outputs["dcctl queue --all"]
    assert "cancelled by" in outputs["dcctl queue --all"]
    assert "CANCELLED" in outputs["dcctl queue --since"]
    assert "gpu[01-02]" in outputs["dcctl queue --format"]  # job 1's nodes, as a hostlist
    # arrays: how many tasks, one line for the waiting ones with the limit, whole or a task
    assert (
        "Submitted array job 7: 8 tasks, 7_0 to 7_7, at most 2 at once"
        in outputs["dcsub sweep.toml"]
    )
    assert "Submitted array job 15: 4 tasks, 15_0 to 15_3" in outputs["dcsub --array 0-3"]
    queue = outputs["dcctl queue --state"]
    assert "7_[0-7%2]" in queue and "15_[0-3]" in queue, queue
    assert "job 7_7: HELD" in outputs["dcctl hold 7"]
    assert outputs["dcctl release 7_2"].strip() == "job 7_2: PENDING"
    assert "job 15_3: CANCELLED" in outputs["dcctl cancel 15"]
    assert outputs["dcctl update 7"].count("time_limit 00:30:00") == 8
    assert "driver update" in outputs["dcctl show-node gpu01"]  # its drain history
    assert "hold" in outputs["dcctl audit --since"] and "job 7" in outputs["dcctl audit --since"]
    # the checkpointing job: requeued with its warning, run again with a restart counted
    shown = outputs["dcctl show 1"]
    assert "Signal = USR1@300" in shown and "Restarts = 1" in shown, shown
