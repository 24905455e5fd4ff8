"""dctop against a real daemon (tests/integration/daemon_harness.py) on a real Mosquitto,
with scripted agents: what the daemon reports shows up, and actions reach it."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from dcsched.client import ApiError, Client
from dcsched.tui.app import DctopApp
from dcsched.tui.screens import ConfirmScreen, DrainScreen, JobDetailScreen
from tests.conftest import Broker
from tests.integration.daemon_harness import ScriptedAgent, api, running_daemon, write_config
from tests.tui.helpers import notices, select, table, wait_for

SPEC = {
    "name": "tui-test",
    "command": ["train.py"],
    "workdir": "/tmp",
    "resources": {"nodes": 1, "gpus_per_node": 2, "time_limit": "10m"},
    "hold": True,
}


async def test_dctop_on_a_real_daemon(tmp_path: Path, mosquitto: Broker) -> None:
    prefix = f"tui-{uuid.uuid4().hex[:8]}"
    conf = write_config(tmp_path, mosquitto, prefix)
    async with (
        running_daemon(conf) as d,
        ScriptedAgent(mosquitto, prefix, "n1", gpus=2),
        ScriptedAgent(mosquitto, prefix, "n2", gpus=2),
    ):
        client = Client(d.config.daemon.socket)
        job_id = str(await api(client, "submit", SPEC))
        app = DctopApp(client, interval=0.2)
        async with app.run_test(size=(140, 40)) as pilot:
            cluster = table(app, "cluster")
            await wait_for(pilot, lambda: app.live, what="the event stream")
            await wait_for(pilot, lambda: set(cluster.rows) == {"n1", "n2"}, what="nodes")
            await wait_for(pilot, lambda: app.snapshot and len(app.snapshot.gpus) == 4)
            # the agents report 50 % on every GPU: the map shows it
            await wait_for(pilot, lambda: "○50" in cluster.rows["n1"][2].text, what="util")

            # release the held job from the Jobs view; the daemon starts it
            await pilot.press("3")
            jobs = table(app, "jobs")
            await wait_for(pilot, lambda: job_id in jobs.rows, what="the job")
            await select(pilot, app, "jobs", job_id)
            await pilot.press("r")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await wait_for(pilot, lambda: jobs.rows[job_id][4].text != "HELD", what="release")
            # live: the release came by the event stream, and reads since were partial
            assert app.feed.events > 0 and app.state.partial_reads > 0

            await pilot.press("enter")
            assert isinstance(app.screen, JobDetailScreen)
            screen = app.screen
            await wait_for(pilot, lambda: screen.detail is not None, what="job detail")
            await pilot.press("c")
            await pilot.press("y")
            await wait_for(
                pilot,
                lambda: d.store is not None and any("cancel sent" in n for n in notices(app)),
                what="cancel",
            )
            await pilot.press("escape")

            # drain n2 from the cluster view (an admin: root, or a permission message)
            await pilot.press("1")
            await select(pilot, app, "cluster", "n2")
            await pilot.press("d")
            assert isinstance(app.screen, DrainScreen)
            await pilot.press(*"maintenance", "enter")
            if os.getuid() == 0:
                await wait_for(
                    pilot, lambda: "drained" in cluster.rows["n2"][1].text, what="drained"
                )
                assert "maintenance" in cluster.rows["n2"][1].text
                await pilot.press("u", "y")
                await wait_for(pilot, lambda: cluster.rows["n2"][1].text == "up", what="resume")
            else:
                await wait_for(
                    pilot, lambda: any("permission" in n for n in notices(app)), what="refusal"
                )
        job = await api(client, "job", int(job_id))
        assert job["state"] in ("CANCELLED", "COMPLETING", "PENDING", "STARTING")
        # what the live mode reads: telemetry as columns, jobs by id, processes in history
        cols = await api(client, "gpu_columns")
        full = await api(client, "gpus")
        assert cols["keys"] == [f"{g['host']}/{g['index']}" for g in full]
        assert len(cols["util"]) == len(full)
        assert [j["id"] for j in await api(client, "jobs_by_id", [int(job_id), 999999])] == [
            int(job_id)
        ]
        hist = await api(client, "node_history", "n1")
        assert "procs" in hist and "jobs" in hist


class NoStream(Client):
    """The daemon reached without its event stream (a proxy that buffers it, say)."""

    def events(self, *args: Any, **kw: Any) -> Any:
        raise ApiError(404, "not_found", "no /v1/events here", {})


class OlderDaemon(NoStream):
    """A daemon older than `changed_since`: it ignores the query and lists the jobs."""

    def jobs_changed_since(self, cursor: str = "") -> dict[str, Any]:
        return dict(self.request("GET", "/v1/jobs", query={"ignored_by_older": cursor}))


async def test_polling_fallback_reads_only_what_changed(tmp_path: Path, mosquitto: Broker) -> None:
    prefix = f"tui-{uuid.uuid4().hex[:8]}"
    conf = write_config(tmp_path, mosquitto, prefix)
    async with running_daemon(conf) as d, ScriptedAgent(mosquitto, prefix, "n1", gpus=2):
        client = Client(d.config.daemon.socket)
        first = await api(client, "jobs_changed_since", "")
        assert first["reset"] and first["jobs"] == []  # no cursor yet: read everything
        head = await api(client, "submit", dict(SPEC, array="0-1"))
        rows = {j["id"]: j for j in await api(client, "jobs")}
        tasks = {f"{j['array_job_id']}_{j['array_task_id']}": str(i) for i, j in rows.items()}
        assert set(tasks) == {f"{head}_0", f"{head}_1"}
        # the query answers the changes since the cursor, with the changed jobs' rows
        got = await api(client, "jobs_changed_since", first["cursor"])
        assert not got["reset"] and {j["id"] for j in got["jobs"]} == set(rows)
        quiet = await api(client, "jobs_changed_since", got["cursor"])
        assert quiet == {
            "cursor": got["cursor"],
            "reset": False,
            "jobs": [],
            "nodes_changed": False,
        }
        stale = await api(client, "jobs_changed_since", "gone-1")  # another daemon start
        assert stale["reset"]

        # dctop without the stream polls the query; a task is shown, and acted on, as 123_1
        app = DctopApp(NoStream(d.config.daemon.socket), interval=0.2)
        async with app.run_test(size=(140, 40)) as pilot:
            jobs = table(app, "jobs")
            await pilot.press("3")
            task = tasks[f"{head}_1"]
            await wait_for(pilot, lambda: task in jobs.rows, what="the task")
            assert app.read_mode == "changes" and "events" in app.live_error
            assert jobs.rows[task][0].text == f"{head}_1"
            await select(pilot, app, "jobs", task)
            await pilot.press("r")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await wait_for(pilot, lambda: jobs.rows[task][4].text != "HELD", what="release")
            assert jobs.rows[tasks[f"{head}_0"]][4].text == "HELD"
            assert app.state.full_reads == 1 and app.state.partial_reads > 0

        # a daemon older than the query: every read a full one, still right
        app = DctopApp(OlderDaemon(d.config.daemon.socket), interval=0.2)
        async with app.run_test(size=(140, 40)) as pilot:
            await pilot.press("3")
            jobs = table(app, "jobs")
            await wait_for(pilot, lambda: tasks[f"{head}_0"] in jobs.rows, what="the jobs")
            assert app.read_mode == "full" and app.state.full_reads == 0
