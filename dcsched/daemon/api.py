"""HTTP+JSON API on a Unix socket. The caller is who the kernel says (SO_PEERCRED).

Every error is JSON: {"error": {"code": ..., "message": ...}} with a message a person can act on.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dcsched import __version__
from dcsched.daemon.errors import (
    Conflict,
    DaemonError,
    InvalidRequest,
    NoSuchThing,
    PermissionDenied,
    Unavailable,
)
from dcsched.daemon.jobs import Caller
from dcsched.daemon.peercred import peer_uid, user_name
from dcsched.daemon.states import ACTIVE, QUEUED, JobState, TransitionError
from dcsched.daemon.store import Job, JobNode
from dcsched.protocol.jobspec import JobSpecError, validate_spec
from dcsched.scheduler import explain, fairshare_report

if TYPE_CHECKING:
    from dcsched.daemon.service import Daemon

log = logging.getLogger("dcsched.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")


def _error(status: int, code: str, message: str, **details: Any) -> web.Response:
    body = {"error": {"code": code, "message": message, **details}}
    return web.json_response(body, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except DaemonError as exc:
        return _error(exc.http_status, exc.code, exc.message, **exc.details)
    except TransitionError as exc:  # another request changed the job first
        return _error(409, "conflict", f"{exc}; it changed meanwhile, look again")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(exc.status, "http_" + str(exc.status), exc.reason)
        raise
    except Exception:
        log.exception("API handler failed on %s %s", request.method, request.path)
        return _error(500, "internal", "the daemon hit an internal error; see its log")


def caller(request: web.Request) -> Caller:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        raise PermissionDenied("this API answers only on its Unix socket")
    uid = peer_uid(sock)
    name = user_name(uid)
    d = request.app[DAEMON]
    return Caller(uid, name, uid == 0 or name in d.config.daemon.admins)


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the request body is not JSON: {exc}") from None


def _int_arg(text: str, what: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n < 2**63:
        raise InvalidRequest(f"{text!r} is not a valid {what}")
    return n


def _job_id(request: web.Request) -> int:
    return _int_arg(request.match_info["job_id"], "job id (a number)")


def job_view(d: Daemon, job: Job, parts: list[JobNode] | None = None) -> dict[str, Any]:
    out = job.to_dict()
    now = time.time()
    info = d.scheduling.stats.last.pending.get(str(job.id))
    if info is not None and job.state in QUEUED:
        out["reasons"] = list(info.reasons)
        out["priority"] = info.priority
        out["est_start"] = info.est_start
    if job.start_ts is not None:
        out["elapsed_s"] = (job.end_ts or now) - job.start_ts
    if parts is not None:
        out["node_parts"] = [p.to_dict() for p in parts]
        out["hosts"] = [p.host for p in parts]
        if job.state in ACTIVE:
            utils = [u for p in parts if (u := d.ingest.job_util(p.host, p.gpus)) is not None]
            out["gpu_util"] = sum(utils) / len(utils) if utils else None
    return out


class Api:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        app = web.Application(middlewares=[_errors], client_max_size=1024 * 1024)
        app[DAEMON] = daemon
        r = app.router
        r.add_get("/v1/health", self.health)
        r.add_get("/v1/whoami", self.whoami)
        r.add_get("/v1/jobs", self.list_jobs)
        r.add_post("/v1/jobs", self.submit)
        r.add_get("/v1/jobs/{job_id}", self.show)
        r.add_post("/v1/jobs/{job_id}/cancel", self.cancel)
        r.add_post("/v1/jobs/{job_id}/hold", self.hold)
        r.add_post("/v1/jobs/{job_id}/release", self.release)
        r.add_post("/v1/jobs/{job_id}/requeue", self.requeue)
        r.add_get("/v1/jobs/{job_id}/logs", self.logs)
        r.add_get("/v1/jobs/{job_id}/explain", self.explain)
        r.add_get("/v1/fairshare", self.fairshare)
        r.add_get("/v1/nodes", self.list_nodes)
        r.add_get("/v1/nodes/{host}/history", self.node_history)
        r.add_post("/v1/nodes/{host}/drain", self.drain)
        r.add_post("/v1/nodes/{host}/resume", self.resume)
        r.add_get("/v1/gpus", self.gpus)
        r.add_get("/v1/cluster", self.cluster)
        self.app = app

    async def health(self, request: web.Request) -> web.Response:
        d = self.d
        return web.json_response(
            {"ok": True, "version": __version__, "broker_connected": d.bus.connected.is_set()}
        )

    async def whoami(self, request: web.Request) -> web.Response:
        c = caller(request)
        return web.json_response({"uid": c.uid, "user": c.user, "admin": c.admin})

    async def submit(self, request: web.Request) -> web.Response:
        who = caller(request)
        body = await _json_body(request)
        try:
            spec = validate_spec(body)
        except JobSpecError as exc:
            raise InvalidRequest(
                "the job is invalid: " + "; ".join(str(p) for p in exc.problems),
                problems=[
                    {"key": p.key, "message": p.message, "hint": p.hint} for p in exc.problems
                ],
            ) from None
        job_id = await self.d.jobs.submit(spec, who)
        return web.json_response({"job_id": job_id}, status=201)

    async def list_jobs(self, request: web.Request) -> web.Response:
        q = request.query
        states: list[str] | None = None
        if "state" in q:
            states = [s.strip().upper() for s in q["state"].split(",") if s.strip()]
            bad = [s for s in states if s not in JobState.__members__]
            if bad:
                raise InvalidRequest(
                    f"unknown state {bad[0]!r}; states are " + ", ".join(JobState.__members__)
                )
        elif q.get("all") not in ("1", "true"):
            states = sorted(QUEUED | ACTIVE)
        # Waiting and running jobs are all listed; finished ones only up to a limit.
        limit = _int_arg(q["limit"], "limit") if "limit" in q else (None if states else 1000)
        jobs = await self.d.store.jobs(states, user=q.get("user") or None, limit=limit)
        parts: dict[int, list[JobNode]] = {}
        for p in await self.d.store.job_nodes(states=("launching", "running")):
            parts.setdefault(p.job_id, []).append(p)
        return web.json_response({"jobs": [job_view(self.d, j, parts.get(j.id, [])) for j in jobs]})

    async def show(self, request: web.Request) -> web.Response:
        job = await self.d.jobs.get(_job_id(request))
        out = job_view(self.d, job, await self.d.store.job_nodes(job.id))
        out["events"] = await self.d.store.job_events(job.id)
        return web.json_response(out)

    async def cancel(self, request: web.Request) -> web.Response:
        job = await self.d.jobs.cancel(_job_id(request), caller(request))
        return web.json_response(job_view(self.d, job))

    async def hold(self, request: web.Request) -> web.Response:
        job = await self.d.jobs.hold(_job_id(request), caller(request))
        return web.json_response(job_view(self.d, job))

    async def release(self, request: web.Request) -> web.Response:
        job = await self.d.jobs.release(_job_id(request), caller(request))
        return web.json_response(job_view(self.d, job))

    async def requeue(self, request: web.Request) -> web.Response:
        job = await self.d.jobs.requeue(_job_id(request), caller(request))
        return web.json_response(job_view(self.d, job))

    async def explain(self, request: web.Request) -> web.Response:
        job = await self.d.jobs.get(_job_id(request))
        now = time.time()
        snap, _, _ = await self.d.scheduling.snapshot(now, accrue=False)
        try:
            why = explain(snap, now, str(job.id))
        except KeyError:
            raise Conflict(
                f"job {job.id} is {job.state}: only a pending or running job has "
                "a priority and reasons"
            ) from None
        out = why.to_dict()
        out["job_state"] = job.state
        return web.json_response(out)

    async def fairshare(self, request: web.Request) -> web.Response:
        now = time.time()
        snap, _, _ = await self.d.scheduling.snapshot(now, accrue=False)
        seen = {(j.account, j.user) for j in snap.pending}
        seen |= {(j.account, j.user) for j in snap.running}
        report = fairshare_report(snap.config, snap.usage, now, seen)
        return web.json_response(report.to_dict())

    async def logs(self, request: web.Request) -> web.Response:
        job = await self.d.jobs.get(_job_id(request))
        q = request.query
        try:
            rank = int(q.get("node", "0"))
            offset = int(q.get("offset", "-1"))
            max_bytes = min(int(q.get("max_bytes", "65536")), 1024 * 1024)
        except ValueError:
            raise InvalidRequest("node, offset and max_bytes must be integers") from None
        parts = await self.d.store.job_nodes(job.id)
        part = next((p for p in parts if p.node_rank == rank), None)
        if part is None:
            if not parts:
                raise NoSuchThing(f"job {job.id} has not started on any node yet ({job.state})")
            raise NoSuchThing(f"job {job.id} has nodes 0..{len(parts) - 1}, not {rank}")
        try:
            chunk = await self.d.sender.fetch_log(part.host, job.id, rank, offset, max_bytes)
        except TimeoutError:
            raise Unavailable(
                f"host {part.host} did not answer with the log; is its agent up? (`dcctl nodes`)"
            ) from None
        if chunk.error:
            raise NoSuchThing(f"{part.host}: {chunk.error}")
        return web.json_response(
            {
                "job_id": job.id,
                "node": rank,
                "host": part.host,
                "offset": chunk.offset,
                "next_offset": chunk.next_offset
                if chunk.next_offset >= 0
                else chunk.offset + len(chunk.data.encode()),
                "size": chunk.size,
                "data": chunk.data,
                "done": job.state not in QUEUED | ACTIVE,
            }
        )

    async def list_nodes(self, request: web.Request) -> web.Response:
        return web.json_response({"nodes": await self.d.node_views()})

    async def node_history(self, request: web.Request) -> web.Response:
        host = request.match_info["host"]
        ht = self.d.ingest.hosts.get(host)
        if ht is None:
            raise NoSuchThing(f"no telemetry from {host!r}; `dcctl nodes` lists the nodes")
        keys = ("ts", "util", "mem_used", "power_w", "temp_c")
        return web.json_response(
            {
                "host": host,
                "gpus": {
                    str(i): [dict(zip(keys, row, strict=True)) for row in hist]
                    for i, hist in ht.history.items()
                },
            }
        )

    async def drain(self, request: web.Request) -> web.Response:
        who = caller(request)
        if not who.admin:
            raise PermissionDenied("draining a node needs an admin ([daemon] admins)")
        body = await _json_body(request) if request.can_read_body else {}
        reason = str(body.get("reason", "")) if isinstance(body, dict) else ""
        await self.d.set_drain(request.match_info["host"], True, reason or f"by {who.user}")
        return web.json_response({"host": request.match_info["host"], "drained": True})

    async def resume(self, request: web.Request) -> web.Response:
        who = caller(request)
        if not who.admin:
            raise PermissionDenied("resuming a node needs an admin ([daemon] admins)")
        await self.d.set_drain(request.match_info["host"], False, "")
        return web.json_response({"host": request.match_info["host"], "drained": False})

    async def gpus(self, request: web.Request) -> web.Response:
        return web.json_response({"gpus": await self.d.gpu_views()})

    async def cluster(self, request: web.Request) -> web.Response:
        return web.json_response(await self.d.cluster_summary())
