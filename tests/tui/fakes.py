"""Fakes for dctop's tests: an in-memory source built from recorded fixture JSON (snapshot
tests), and a fake daemon, a small aiohttp server on a Unix socket that serves the same
fixtures and records every POST (Pilot tests through the real dcsched.client.Client)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from dcsched.client import ApiError

FIXTURES = Path(__file__).parent / "fixtures"
#: the clock the snapshot tests run on: a few seconds after the fixtures were recorded
NOW = 1795403520.0


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def finished_jobs() -> list[dict[str, Any]]:
    done = load("job_1.json")
    failed = copy.deepcopy(done)
    failed.update(
        id=3, state="FAILED", exit_code=1, reason="NonZeroExitCode", end_ts=done["end_ts"] + 5
    )
    cancelled = copy.deepcopy(done)
    cancelled.update(
        id=14,
        name="sleeper",
        state="CANCELLED",
        exit_code=None,
        signal=15,
        end_ts=done["end_ts"] + 20,
    )
    return [cancelled, failed, done]


class FixtureSource:
    """The Source protocol over the recorded fixtures, in memory (no socket)."""

    def __init__(self, *, explain: bool = True, fairshare: bool = True) -> None:
        self.with_explain, self.with_fairshare = explain, fairshare
        self.actions: list[tuple[str, ...]] = []

    def cluster(self) -> dict[str, Any]:
        return dict(load("cluster.json"))

    def nodes(self) -> list[dict[str, Any]]:
        return list(load("nodes.json")["nodes"])

    def gpus(self) -> list[dict[str, Any]]:
        return list(load("gpus.json")["gpus"])

    def jobs(self, *, all_states: bool = False) -> list[dict[str, Any]]:
        jobs = list(load("jobs.json")["jobs"])
        return jobs + finished_jobs() if all_states else jobs

    def job(self, job_id: int | str) -> dict[str, Any]:
        path = FIXTURES / f"job_{job_id}.json"
        if not path.exists():
            raise ApiError(404, "not_found", f"no job {job_id}", {})
        return dict(json.loads(path.read_text()))

    def job_action(self, job_id: int | str, action: str) -> dict[str, Any]:
        self.actions.append(("job", str(job_id), action))
        return self.job(job_id)

    def node_action(self, host: str, action: str, reason: str = "") -> dict[str, Any]:
        self.actions.append(("node", host, action, reason))
        return {"host": host, "drained": action == "drain"}

    def logs(
        self, job_id: int | str, node: int = 0, offset: int = -1, max_bytes: int = 65536
    ) -> dict[str, Any]:
        path = FIXTURES / f"logs_{job_id}.json"
        if not path.exists():
            raise ApiError(404, "not_found", f"job {job_id} has not started on any node yet", {})
        return dict(json.loads(path.read_text()))

    def node_history(self, host: str) -> dict[str, Any]:
        path = FIXTURES / f"history_{host}.json"
        if not path.exists():
            raise ApiError(404, "not_found", f"no telemetry from {host!r}", {})
        return dict(json.loads(path.read_text()))

    def explain(self, job_id: int | str) -> dict[str, Any]:
        path = FIXTURES / f"explain_{job_id}.json"
        if not self.with_explain or not path.exists():
            raise ApiError(404, "http_404", "Not Found", {})
        return dict(json.loads(path.read_text()))

    def fairshare(self) -> dict[str, Any]:
        if not self.with_fairshare:
            raise ApiError(404, "http_404", "Not Found", {})
        return dict(load("fairshare.json"))


@dataclass
class FakeDaemon:
    """What the fake daemon answers and what it was asked."""

    socket: str
    posts: list[tuple[str, Any]] = field(default_factory=list)
    #: POST path -> (status, code, message) to answer with an error instead
    errors: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    runner: web.AppRunner | None = None
    site: web.UnixSite | None = None

    async def go_down(self) -> None:
        """The daemon goes away: its socket refuses connections, and the connections that
        clients keep open between calls close, as they do when a real dcd exits."""
        assert self.site is not None and self.runner is not None
        await self.site.stop()
        assert self.runner.server is not None
        for handler in list(self.runner.server.connections):
            handler.force_close()

    async def come_back(self) -> None:
        assert self.runner is not None
        with contextlib.suppress(FileNotFoundError):
            Path(self.socket).unlink()
        self.site = web.UnixSite(self.runner, self.socket)
        await self.site.start()


def _app(fake: FakeDaemon) -> web.Application:
    source = FixtureSource()

    def err(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"error": {"code": code, "message": message}}, status=status)

    @web.middleware
    async def gate(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except ApiError as exc:
            return err(exc.status, exc.code, exc.message)

    async def get(request: web.Request) -> web.Response:
        p = request.path
        mi = request.match_info
        if p == "/v1/cluster":
            return web.json_response(source.cluster())
        if p == "/v1/nodes":
            return web.json_response({"nodes": source.nodes()})
        if p == "/v1/gpus":
            return web.json_response({"gpus": source.gpus()})
        if p == "/v1/jobs":
            return web.json_response({"jobs": source.jobs(all_states="all" in request.query)})
        if p == "/v1/fairshare":
            return web.json_response(source.fairshare())
        if "host" in mi:
            return web.json_response(source.node_history(mi["host"]))
        job_id = mi["job_id"]
        if p.endswith("/logs"):
            return web.json_response(source.logs(job_id))
        if p.endswith("/explain"):
            return web.json_response(source.explain(job_id))
        if p.endswith("/efficiency"):  # as the daemon sums a running job's use so far
            if source.job(job_id).get("start_ts") is None:
                return err(404, "not_found", f"job {job_id} has not run")
            return web.json_response({"gpu_hours": 1.5, "energy_kwh": 0.42, "mean_util": 61.0})
        return web.json_response(source.job(job_id))

    async def post(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        fake.posts.append((request.path, body))
        if request.path in fake.errors:
            return err(*fake.errors[request.path])
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[gate])
    r = app.router
    for path in (
        "/v1/cluster",
        "/v1/nodes",
        "/v1/gpus",
        "/v1/jobs",
        "/v1/fairshare",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/logs",
        "/v1/jobs/{job_id}/explain",
        "/v1/jobs/{job_id}/efficiency",
        "/v1/nodes/{host}/history",
    ):
        r.add_get(path, get)
    for path in ("/v1/jobs/{job_id}/{action}", "/v1/nodes/{host}/{action}"):
        r.add_post(path, post)
    return app


@contextlib.asynccontextmanager
async def fake_daemon(directory: Path) -> AsyncIterator[FakeDaemon]:
    fake = FakeDaemon(str(directory / "fake-dcd.sock"))
    fake.runner = runner = web.AppRunner(_app(fake))
    await runner.setup()
    await fake.come_back()
    try:
        yield fake
    finally:
        await runner.cleanup()
        await asyncio.sleep(0)
