"""HTTP+JSON API on a Unix socket, where the caller is who the kernel says (SO_PEERCRED),
and on an optional TCP listener with TLS, where the caller is who a token says (a token the
socket issued: tokens.py). Either way the handlers see one `Caller`.

Every error is JSON: {"error": {"code": ..., "message": ...}} with a message a person can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from dcsched.daemon import audit
from dcsched.daemon import lifecycle as lc
from dcsched.daemon.errors import (
    Conflict,
    DaemonError,
    InvalidRequest,
    NoSuchThing,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from dcsched.daemon.jobs import Caller
from dcsched.daemon.openapi import openapi
from dcsched.daemon.peercred import peer_uid, user_name
from dcsched.daemon.privacy import public_view
from dcsched.daemon.readmodel import last_requeue
from dcsched.daemon.states import ACTIVE, QUEUED, TERMINAL, JobState, TransitionError
from dcsched.daemon.store import AcctFilter, AuditRow, StoreError
from dcsched.daemon.tokens import TokenError, issue, verify
from dcsched.protocol.config import ConfigError, DaemonConfig
from dcsched.protocol.jobspec import (
    MAX_SPEC_BYTES,
    MAX_TIME_LIMIT_S,
    UPDATABLE,
    JobSpec,
    JobSpecError,
    parse_duration,
    spec_size,
    spec_to_dict,
    validate_spec,
)
from dcsched.scheduler import SchedulerConfig, explain_pass, fairshare_report
from dcsched.scheduler.simulate import forecast

if TYPE_CHECKING:
    from dcsched.daemon.cluster import Node
    from dcsched.daemon.service import Daemon

log = logging.getLogger("dcsched.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
_encoder = msgspec.json.Encoder()
_decode_body = msgspec.json.Decoder().decode
MAX_AUDIT_ROWS = 10_000
MAX_FORECAST_JOBS = 1_000
FORECAST_BUDGET_S = 2.0
# a forecast's answer serves callers of the same limit for this long
FORECAST_REUSE_S = 1.0
# Audit names of the calls; any other route is named by its method and path.
_ACTIONS = {
    ("POST", "/v1/jobs"): "submit",
    ("GET", "/v1/jobs/{job_id}/logs"): "read_log",
    ("GET", "/v1/audit"): "read_audit",
    ("POST", "/v1/tokens"): "token",
}
# What the TCP listener answers without a token: a client finds the leader with these.
PUBLIC = frozenset({"/v1/health", "/v1/openapi.json"})
CALLER: web.RequestKey[Caller] = web.RequestKey("caller")


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
    except StoreError as exc:
        return _error(
            503, "unavailable", f"the daemon cannot use its state store now ({exc}); try later"
        )
    except RecursionError:
        return _error(400, "invalid_request", "the request body is nested too deeply")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(exc.status, "http_" + str(exc.status), exc.reason)
        raise
    except Exception:
        log.exception("API handler failed on %s %s", request.method, request.path)
        return _error(500, "internal", "the daemon hit an internal error; see its log")


def _audit_row(request: web.Request, resp: web.StreamResponse) -> AuditRow:
    try:
        who = caller(request)
    except (DaemonError, OSError):
        who = Caller(-1, "?", False)
    route = request.match_info.route.resource
    canonical = route.canonical if route is not None else request.path
    action = _ACTIONS.get((request.method, canonical))
    if action is None:
        last = canonical.rsplit("/", 1)[-1]
        action = last if request.method == "POST" and "{" not in last else ""
        action = action or f"{request.method} {canonical}"
    m = request.match_info
    target = f"job {m['job_id']}" if "job_id" in m else f"node {m['host']}" if "host" in m else ""
    detail = ""
    if resp.status >= 400 and isinstance(resp, web.Response) and isinstance(resp.body, bytes):
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            detail = str(json.loads(resp.body)["error"]["message"])
    result = "ok" if resp.status < 400 else "refused" if resp.status < 500 else "failed"
    status, detail = resp.status, detail[:2000]  # a refused job can list many problems
    return AuditRow(time.time(), who.uid, who.user, action, target[:200], result, status, detail)


@web.middleware
async def _audit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every state-changing call and every refusal goes into the audit log. A call that
    changed something wrote its row with the change; the rest are queued and written in
    the background, so a refusal is answered without waiting for a commit."""
    token = audit.track()
    try:
        resp = await handler(request)
    finally:
        with_change = audit.written(token)
    if request.match_info.route.resource is None:
        return resp  # no such route at all
    if with_change and resp.status < 400:
        return resp
    if request.method in ("GET", "HEAD", "OPTIONS") and resp.status not in (401, 403):
        return resp  # reads are not audited, refused reads are
    request.app[DAEMON].audit.record(_audit_row(request, resp))
    return resp


def _on_socket(request: web.Request) -> bool:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    return sock is not None and sock.family == socket.AF_UNIX


def caller(request: web.Request) -> Caller:
    """Who calls: the socket peer's uid, or the TCP listener's token holder."""
    if CALLER in request:
        return request[CALLER]
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        raise Unauthenticated("this call needs a token (Authorization: Bearer; `dcctl token`)")
    uid = peer_uid(sock)
    name = user_name(uid)
    d = request.app[DAEMON]
    return Caller(uid, name, uid == 0 or name in d.config.daemon.admins)


def bearer(request: web.Request, key: bytes) -> tuple[int, str]:
    """The uid and user of the request's token; Unauthenticated says what is wrong."""
    kind, _, token = request.headers.get("Authorization", "").partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "remote calls need a token: run `dcctl token` on a head node and pass it as "
            "$DCSCHED_TOKEN or in ~/.dcsched/token"
        )
    try:
        claims = verify(key, token.strip(), time.time())
    except TokenError as exc:
        raise Unauthenticated(f"token refused: {exc}") from None
    return claims.uid, claims.user


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On the TCP listener every call but PUBLIC carries a token: its holder is the caller."""
    if _on_socket(request) or request.path in PUBLIC:
        return await handler(request)
    d = request.app[DAEMON]
    uid, user = bearer(request, d.token_key)
    request[CALLER] = Caller(uid, user, uid == 0 or user in d.config.daemon.admins)
    return await handler(request)


def tls_server_context(dc: DaemonConfig) -> ssl.SSLContext:
    """The TCP listener's TLS (1.2 at least); ConfigError names a file it cannot use."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(dc.tls_cert_file, dc.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"[daemon] tls_cert_file/tls_key_file ({dc.tls_cert_file}, {dc.tls_key_file}): "
            f"{getattr(exc, 'strerror', None) or exc}"
        ) from None
    return ctx


async def serve_tcp(runner: web.AppRunner, dc: DaemonConfig) -> None:
    """Starts the TLS listener of `[daemon] listen` on the runner, if one is configured."""
    where = dc.listen_address()
    if where is None:
        return
    ctx = tls_server_context(dc)
    try:
        await web.TCPSite(runner, where[0], where[1], ssl_context=ctx).start()
    except OSError as exc:
        raise ConfigError(f"[daemon] listen = {dc.listen!r}: {exc.strerror or exc}") from None


async def _json_body(request: web.Request) -> Any:
    # msgspec, not json: it refuses what no later step could store or pass on (NaN,
    # Infinity, lone surrogates); too deep a nesting raises RecursionError (400 above).
    try:
        return _decode_body(await request.read())
    except msgspec.DecodeError as exc:
        raise InvalidRequest(
            f"the request body is not JSON: {exc} (send UTF-8 JSON without NaN, Infinity"
            " or lone \\u surrogate escapes)"
        ) from None


def _int_arg(text: str, what: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n < 2**63:
        raise InvalidRequest(f"{text!r} is not a valid {what}")
    return n


def _float_arg(text: str, what: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not math.isfinite(x):
        raise InvalidRequest(f"{text!r} is not a valid {what}")
    return x


def _time_arg(query: Mapping[str, str], name: str) -> float | None:
    """`?since=`/`?until=`: a Unix time in seconds."""
    return _float_arg(query[name], f"{name} (a Unix time in seconds)") if name in query else None


def _json(body: Any, status: int = 200) -> web.Response:
    # msgspec encodes the large listings several times faster than json.dumps.
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json")


def _sse(kind: str, cursor: str, data: Any) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        cursor.encode(),
        kind.encode(),
        _encoder.encode(data),
    )


def _check_launchable(spec: dict[str, Any]) -> None:
    """What an agent would refuse: a NUL byte (no exec or environment can carry one) and a
    launch larger than the bus's message limit."""
    for where, text in (
        ("command", " ".join(spec.get("command", []))),
        ("workdir", spec.get("workdir", "")),
        *((f"env.{k}", f"{k}={v}") for k, v in spec.get("env", {}).items()),
    ):
        if "\x00" in text:
            raise InvalidRequest(
                f"{where} contains a NUL byte, which no process can be given; remove it",
                problems=[{"key": where, "message": "contains a NUL byte", "hint": "remove it"}],
            )
    size, limit = spec_size(spec), MAX_SPEC_BYTES
    if size > limit:
        raise InvalidRequest(
            f"the job's command, env and settings take {size} bytes; the limit is {limit}"
            " (put large settings in a file in the workdir)"
        )


def update_event(body: Any, who: Caller, config: SchedulerConfig) -> lc.Update:
    """The Update a `dcctl update` body asks for; InvalidRequest names what is wrong."""
    if not isinstance(body, dict) or not body:
        raise InvalidRequest("expected a JSON object with time_limit, nice and/or qos")
    problems = []
    for key in body:
        if key not in UPDATABLE:
            problems.append(f"{key}: cannot be changed; these can: {', '.join(UPDATABLE)}")
    limit: int | None = None
    if "time_limit" in body:
        try:
            limit = parse_duration(body["time_limit"])
        except ValueError as exc:
            problems.append(f"time_limit: {exc}")
        else:
            if limit > MAX_TIME_LIMIT_S:
                problems.append("time_limit: longer than 30 days")
    nice = body.get("nice")
    if nice is not None and (
        isinstance(nice, bool) or not isinstance(nice, int) or not -10000 <= nice <= 10000
    ):
        problems.append(f"nice: expected a whole number in -10000..10000, got {nice!r}")
        nice = None
    qos = body.get("qos")
    level = config.qos_level(qos) if isinstance(qos, str) else None
    if qos is not None and level is None:
        known = ", ".join(sorted({"normal", *config.qos}))
        problems.append(f"qos: {qos!r} is not a configured QOS; known: {known}")
    if problems:
        raise InvalidRequest("; ".join(problems))
    return lc.Update(
        who.user,
        who.admin,
        time_limit_s=limit,
        nice=nice,
        qos=qos,
        qos_priorities=tuple(sorted((n, q.priority) for n, q in config.qos.items())),
    )


def _never_ran(part: lc.Part) -> bool:
    """A node's part of this run that ended without a process: a refused launch, or one
    stopped before it started."""
    return not part.live and part.pid is None and part.exit_code is None and part.signal is None


def _never_ran_line(job: lc.Job, part: lc.Part) -> str:
    why = part.reason if part.reason.startswith("launch refused") else job.reason or part.reason
    return f"[dcsched] no process was started on {part.host}: {why or job.state}\n"


def _log_chunk(
    job: lc.Job, part: lc.Part, text: str, offset: int, max_bytes: int
) -> dict[str, Any]:
    """`text` as a log file's chunk would be answered: from `offset` (-1: the tail)."""
    data = text.encode()
    size = len(data)
    start = max(0, size - max_bytes) if offset < 0 else min(offset, size)
    piece = data[start : start + max(0, max_bytes)]
    return {
        "job_id": job.id,
        "node": part.rank,
        "host": part.host,
        "offset": start,
        "next_offset": start + len(piece),
        "size": size,
        "data": piece.decode(errors="replace"),
        "done": job.state not in QUEUED | ACTIVE,
    }


def _job_ref(request: web.Request) -> tuple[int, int | None]:
    """(job id, None) for `123`; (array id, task index) for Slurm's `123_4`."""
    text = request.match_info["job_id"]
    head, sep, task = text.partition("_")
    what = "job id (a number, or ARRAY_TASK such as 123_4)"
    return _int_arg(head, what), _int_arg(task, what) if sep else None


class Api:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        app = web.Application(
            middlewares=[_audit, _errors, _authenticate], client_max_size=1024 * 1024
        )
        app[DAEMON] = daemon
        r = app.router
        r.add_get("/v1/health", self.health)
        r.add_get("/v1/whoami", self.whoami)
        r.add_post("/v1/tokens", self.token)
        r.add_get("/v1/jobs", self.list_jobs)
        r.add_post("/v1/jobs", self.submit)
        r.add_get("/v1/jobs/{job_id}", self.show)
        r.add_post("/v1/jobs/{job_id}/cancel", self.cancel)
        r.add_post("/v1/jobs/{job_id}/hold", self.hold)
        r.add_post("/v1/jobs/{job_id}/release", self.release)
        r.add_post("/v1/jobs/{job_id}/requeue", self.requeue)
        r.add_post("/v1/jobs/{job_id}/update", self.update)
        r.add_get("/v1/jobs/{job_id}/logs", self.logs)
        r.add_get("/v1/jobs/{job_id}/explain", self.explain)
        r.add_get("/v1/fairshare", self.fairshare)
        r.add_get("/v1/forecast", self.forecast)
        r.add_get("/v1/nodes", self.list_nodes)
        r.add_get("/v1/nodes/{host}/history", self.node_history)
        r.add_post("/v1/nodes/{host}/drain", self.drain)
        r.add_post("/v1/nodes/{host}/resume", self.resume)
        r.add_get("/v1/nodes/{host}/drains", self.drain_history)
        r.add_get("/v1/audit", self.audit)
        r.add_get("/v1/openapi.json", self.openapi)
        r.add_get("/v1/gpus", self.gpus)
        r.add_get("/v1/cluster", self.cluster)
        r.add_get("/v1/events", self.events)
        r.add_get("/v1/accounting", self.accounting)
        r.add_get("/v1/jobs/{job_id}/efficiency", self.efficiency)
        r.add_get("/v1/nodes/{host}/events", self.node_events)
        self.app = app
        self.read = daemon.read
        self._openapi = _encoder.encode(openapi())
        # one forecast at a time: each holds the interpreter for up to its budget, so
        # callers side by side would starve the event loop; (when, limit, answer)
        self._forecast_lock = asyncio.Lock()
        self._forecast_last: tuple[float, int, dict[str, Any]] | None = None

    async def health(self, request: web.Request) -> web.Response:
        h = self.d.health()
        if h["ok"]:
            return web.json_response(h)
        msg = "; ".join(h["problems"])
        return web.json_response(
            {**h, "error": {"code": "unavailable", "message": msg}}, status=503
        )

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    async def whoami(self, request: web.Request) -> web.Response:
        c = caller(request)
        return web.json_response({"uid": c.uid, "user": c.user, "admin": c.admin})

    async def token(self, request: web.Request) -> web.Response:
        """A token for the socket's caller (never over TCP: a token cannot renew itself).
        Body (optional): {"lifetime_s": N}, at most [daemon] token_lifetime_s."""
        if not _on_socket(request):
            raise PermissionDenied(
                "tokens are issued on the daemon's Unix socket only: run `dcctl token` on a "
                "head node"
            )
        who = caller(request)
        longest = self.d.config.daemon.token_lifetime_s
        body = await _json_body(request) if request.can_read_body else {}
        if not isinstance(body, dict) or set(body) - {"lifetime_s"}:
            raise InvalidRequest('expected {"lifetime_s": SECONDS} or no body')
        lifetime = body.get("lifetime_s")
        lifetime = longest if lifetime is None else lifetime
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float):
            raise InvalidRequest(f"lifetime_s: expected a number of seconds, got {lifetime!r}")
        if not 0 < lifetime <= longest:
            raise InvalidRequest(
                f"lifetime_s must be in (0, {longest:g}] ([daemon] token_lifetime_s)"
            )
        now = time.time()
        token = issue(self.d.token_key, who.uid, who.user, now, float(lifetime))
        return web.json_response(
            {"token": token, "user": who.user, "uid": who.uid, "expires": int(now + lifetime)}
        )

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
        _check_launchable(spec_to_dict(spec))
        self._check_satisfiable(spec, who, request.query.get("force") in ("1", "true"))
        job_id = await self.d.jobs.submit(spec, who)
        return web.json_response({"job_id": job_id}, status=201)

    def _check_satisfiable(self, spec: JobSpec, who: Caller, force: bool) -> None:
        """A request no known node could ever run is refused with the numbers; an admin
        may queue it anyway (held or forced), e.g. for nodes not yet added."""
        r = spec.resources
        why = self.d.cluster.never_fits(r.nodes, r.gpus_per_node, r.gpu_type)
        if why is None or (who.admin and (force or spec.hold)):
            return
        hint = "ask for what the cluster has" + (
            "; an admin may queue it anyway with dcsub --force or --hold" if not who.admin else ""
        )
        raise InvalidRequest(
            f"no node of this cluster could ever run the job: {why} ({hint})",
            problems=[{"key": "resources", "message": why, "hint": hint}],
        )

    async def list_jobs(self, request: web.Request) -> web.Response:
        q = request.query
        if "ids" in q:
            return await self._jobs_by_id(q["ids"])
        if "changed_since" in q:
            return await self._jobs_changed_since(q["changed_since"])
        states: list[str] = sorted(JobState.__members__)
        if "state" in q:
            states = [s.strip().upper() for s in q["state"].split(",") if s.strip()]
            bad = [s for s in states if s not in JobState.__members__]
            if bad:
                raise InvalidRequest(
                    f"unknown state {bad[0]!r}; states are " + ", ".join(JobState.__members__)
                )
        elif q.get("all") not in ("1", "true") and "since" not in q and "until" not in q:
            states = sorted(QUEUED | ACTIVE)
        # Waiting and running jobs are all listed; finished ones only up to a limit.
        limit = _int_arg(q["limit"], "limit") if "limit" in q else None
        since, until = _time_arg(q, "since"), _time_arg(q, "until")
        body = await self.read.list_jobs(
            set(states), q.get("user") or None, limit, since=since, until=until
        )
        return web.Response(body=body, content_type="application/json")

    async def _jobs_by_id(self, text: str) -> web.Response:
        """`?ids=1,2,3`: those jobs' listing rows, in any state (unknown ids are left out),
        so that a client following `/v1/events` rereads only the jobs that changed."""
        ids = [_int_arg(t, "ids") for t in text.split(",") if t.strip()]
        if len(ids) > 1000:
            raise InvalidRequest(f"ids lists {len(ids)} jobs; ask for at most 1000 at a time")
        return _json({"jobs": await self._job_rows(ids)})

    async def _job_rows(self, ids: list[int]) -> list[dict[str, Any]]:
        rows = []
        for i in dict.fromkeys(ids):
            try:
                job = await self.d.jobs.get(i)
            except NoSuchThing:
                continue
            rows.append(self.read.job_view(job, detail=False))
        return rows

    async def _jobs_changed_since(self, cursor: str) -> web.Response:
        """`?changed_since=CURSOR` (a cursor of `/v1/events` or of this answer): the rows of
        the jobs that changed since, in any state, whether a node changed, and the cursor to
        ask from next: polling without the event stream, at the cost of the changes only
        (never a walk over every job). `reset: true` (an empty or unknown cursor, a daemon
        restart, too far back, or too many changes) means: read everything, then ask from
        the cursor given."""
        hub = self.d.hub
        now = hub.cursor()
        changes = hub.since(cursor) if cursor else None
        ids = (
            list(dict.fromkeys(int(ch.data["id"]) for ch in changes if ch.kind == "job"))
            if changes is not None
            else []
        )
        if changes is None or len(ids) > 1000:
            return _json({"cursor": now, "reset": True, "jobs": [], "nodes_changed": True})
        return _json(
            {
                "cursor": now,
                "reset": False,
                "jobs": await self._job_rows(ids),
                "nodes_changed": any(ch.kind == "node" for ch in changes),
            }
        )

    async def show(self, request: web.Request) -> web.Response:
        who = caller(request)
        job = await self.d.jobs.find(*_job_ref(request))
        out = self.read.job_view(job)
        if not who.owns(job):
            out = public_view(out)
        out["events"] = await self.d.store.job_events(job.id)
        return _json(out)

    async def _act(self, request: web.Request, action: str) -> web.Response:
        who = caller(request)
        jobs = self.d.jobs
        ev: lc.Event
        match action:
            case "cancel":
                ev = jobs.cancel_event(who)
            case "hold":
                ev = lc.Hold(who.user)
            case "release":
                ev = lc.Release(who.user)
            case _:
                ev = jobs.requeue_event(who)
        return await self._act_on(request, who, ev)

    async def _act_on(self, request: web.Request, who: Caller, ev: lc.Event) -> web.Response:
        """The event on the job named: one job, one array task (`123_4`), or, for an array's
        id, every live task it applies to (as scancel/scontrol do). An array's answer is its
        own job's view with `tasks` (the tasks changed) and `skipped` (those left, and why)."""
        jobs = self.d.jobs
        job_id, task = _job_ref(request)
        job = await jobs.find(job_id, task)
        if task is not None or job.array_job_id != job.id:
            return _json(self.read.job_view(await jobs.act(job.id, who, ev)))
        changed, skipped = await jobs.act_on_array(job.id, who, ev)
        out = self.read.job_view(await jobs.get(job.id), detail=False)
        out["tasks"] = [self.read.job_view(j, detail=False) for j in changed]
        out["skipped"] = [
            {
                "id": j.id,
                "array_job_id": j.array_job_id,
                "array_task_id": j.array_task_id,
                "state": j.state,
                "why": why,
            }
            for j, why in skipped
        ]
        return _json(out)

    async def cancel(self, request: web.Request) -> web.Response:
        return await self._act(request, "cancel")

    async def hold(self, request: web.Request) -> web.Response:
        return await self._act(request, "hold")

    async def release(self, request: web.Request) -> web.Response:
        return await self._act(request, "release")

    async def requeue(self, request: web.Request) -> web.Response:
        return await self._act(request, "requeue")

    async def update(self, request: web.Request) -> web.Response:
        """`{"time_limit": "2h", "nice": 10, "qos": "low"}`, any of them: the owner may lower
        what the job gets, an admin may also raise it."""
        who = caller(request)
        body = await _json_body(request)
        ev = update_event(body, who, self.d.scheduling.config)
        return await self._act_on(request, who, ev)

    async def explain(self, request: web.Request) -> web.Response:
        job = await self.d.jobs.find(*_job_ref(request))
        done = self.d.scheduling.recent_pass(time.time(), str(job.id))
        try:
            why = explain_pass(done, str(job.id))
        except KeyError:
            raise Conflict(
                f"job {job.id} is {job.state}: only a pending or running job has "
                "a priority and reasons"
            ) from None
        out = why.to_dict()
        out["job_state"] = job.state
        # a job back in the queue, or on its way there: when its run was stopped, and why
        going = job.ending == JobState.REQUEUED
        if job.restart_count or going:
            out["requeued"] = last_requeue(await self.d.store.job_events(job.id), going)
        return _json(out)

    async def forecast(self, request: web.Request) -> web.Response:
        """When the first `limit` pending jobs in priority order would start if every job
        ran to its time limit and nothing else arrived (Slurm's `squeue --start`): the
        simulation harness run forward from now, off the event loop."""
        limit = min(_int_arg(request.query.get("limit", "100"), "limit"), MAX_FORECAST_JOBS)
        async with self._forecast_lock:
            last = self._forecast_last
            if last and last[1] == limit and time.monotonic() - last[0] < FORECAST_REUSE_S:
                return _json(last[2])
            now = time.time()
            snap, order = self.d.scheduling.forecast_snapshot(now, limit)
            # a thread shares the interpreter with the event loop: bounded in time, so a big
            # cluster's forecast leaves the jobs it did not reach without a time
            deadline = time.monotonic() + FORECAST_BUDGET_S
            starts = await asyncio.to_thread(
                forecast, snap, now, order, give_up=lambda: time.monotonic() > deadline
            )
            out = {
                "now": now,
                "jobs": [{"job_id": int(j), "est_start": starts.get(j)} for j in order],
            }
            self._forecast_last = (time.monotonic(), limit, out)
        return _json(out)

    async def fairshare(self, request: web.Request) -> web.Response:
        now = time.time()
        snap = self.d.scheduling.recent_snapshot(now)
        seen = {(j.account, j.user) for j in snap.pending}
        seen |= {(j.account, j.user) for j in snap.running}
        report = fairshare_report(snap.config, snap.usage, now, seen)
        return _json(report.to_dict())

    async def logs(self, request: web.Request) -> web.Response:
        who = caller(request)
        job = await self.d.jobs.find(*_job_ref(request))
        if not who.owns(job):
            raise PermissionDenied(
                f"job {job.id} belongs to {job.user}: only its owner or an admin"
                " ([daemon] admins) may read its log"
            )
        q = request.query
        try:
            rank = int(q.get("node", "0"))
            offset = int(q.get("offset", "-1"))
            max_bytes = min(int(q.get("max_bytes", "65536")), 1024 * 1024)
        except ValueError:
            raise InvalidRequest("node, offset and max_bytes must be integers") from None
        parts = job.parts
        part = next((p for p in parts if p.rank == rank), None)
        if part is None:
            if not parts:
                raise NoSuchThing(f"job {job.id} has not started on any node yet ({job.state})")
            raise NoSuchThing(f"job {job.id} has nodes 0..{len(parts) - 1}, not {rank}")
        if _never_ran(part):
            # No process, so no log file this run (an earlier run's may be there): the log
            # a user reads is the reason, as the agent's last line says how a run ended.
            return web.json_response(
                _log_chunk(job, part, _never_ran_line(job, part), offset, max_bytes)
            )
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

    async def accounting(self, request: web.Request) -> web.Response:
        """Finished jobs' accounting (sacct): ?user= &account= &state=A,B &since= &until=
        (Unix seconds: the job ended in [since, until)) &limit= (1000); totals per account
        over every match."""
        q = request.query
        states = frozenset(s.strip().upper() for s in q.get("state", "").split(",") if s.strip())
        bad = sorted(states - TERMINAL)
        if bad:
            raise InvalidRequest(
                f"{bad[0]!r} is not a final state; accounting has " + ", ".join(sorted(TERMINAL))
            )
        where = AcctFilter(
            user=q.get("user", ""),
            account=q.get("account", ""),
            states=states,
            since=_float_arg(q["since"], "since (Unix seconds)") if "since" in q else None,
            until=_float_arg(q["until"], "until (Unix seconds)") if "until" in q else None,
        )
        limit = _int_arg(q["limit"], "limit") if "limit" in q else 1000
        rows, totals = await self.d.store.accounting(where, limit)
        return _json({"jobs": rows, "totals": totals})

    async def efficiency(self, request: web.Request) -> web.Response:
        """One job's use of its GPUs (seff): from its accounting row once finished, so far
        from the daemon's accumulation while it runs."""
        job = await self.d.jobs.find(*_job_ref(request))
        if job.state in TERMINAL:
            row = await self.d.store.accounting_row(job.id)
            if row is None:
                raise NoSuchThing(
                    f"job {job.id} finished before this daemon kept accounting; nothing recorded"
                )
            return _json(row)
        return _json(self.d.jobs.accounting.live(job, time.time()))

    async def node_events(self, request: web.Request) -> web.Response:
        """A node's drains, resumes and GPU faults (oldest first), and its unhealthy GPUs."""
        host, node = self._node(request)
        return _json(
            {
                "host": host,
                "drained": node.drained,
                "drain_reason": node.drain_reason,
                "unhealthy_gpus": self.d.cluster.faults.get(host, {}),
                "events": await self.d.store.node_events(host),
            }
        )

    async def list_nodes(self, request: web.Request) -> web.Response:
        return _json({"nodes": self.read.node_views()})

    async def node_history(self, request: web.Request) -> web.Response:
        host = request.match_info["host"]
        ht = self.d.ingest.hosts.get(host)
        if ht is None:
            raise NoSuchThing(f"no telemetry from {host!r}; `dcctl nodes` lists the nodes")
        keys = ("ts", "util", "mem_used", "power_w", "temp_c")
        latest = ht.latest
        return web.json_response(
            {
                "host": host,
                "gpus": {
                    str(i): [dict(zip(keys, row, strict=True)) for row in hist]
                    for i, hist in ht.history.items()
                },
                # the latest sample's processes: per GPU (pid, user, cmd, gpu_mem) and per
                # job (its pids, CPU and host memory over its process tree)
                "procs": {
                    str(g.index): msgspec.to_builtins(g.procs) for g in latest.gpus if g.procs
                },
                "jobs": msgspec.to_builtins(latest.jobs),
                "ts": latest.ts,
            }
        )

    async def drain(self, request: web.Request) -> web.Response:
        who = caller(request)
        if not who.admin:
            raise PermissionDenied("draining a node needs an admin ([daemon] admins)")
        body = await _json_body(request) if request.can_read_body else {}
        reason = str(body.get("reason", "")) if isinstance(body, dict) else ""
        requeue = isinstance(body, dict) and body.get("requeue") is True  # drain --requeue
        host = request.match_info["host"]
        await self._set_drain(request, who, True, reason or f"by {who.user}")
        out: dict[str, Any] = {"host": host, "drained": True}
        if requeue:
            out["requeued"] = await self.d.jobs.requeue_host(host, who.user)
        view = self.read.node_view(host) or {}
        out["drain_state"] = view.get("drain_state", "drained")
        out["jobs"] = view.get("jobs", [])
        return web.json_response(out)

    async def resume(self, request: web.Request) -> web.Response:
        who = caller(request)
        if not who.admin:
            raise PermissionDenied("resuming a node needs an admin ([daemon] admins)")
        body = await _json_body(request) if request.can_read_body else {}
        reason = str(body.get("reason", "")) if isinstance(body, dict) else ""
        return await self._set_drain(request, who, False, reason)

    async def _set_drain(
        self, request: web.Request, who: Caller, drained: bool, reason: str
    ) -> web.Response:
        """Drain or resume, with its drain-history and audit rows in one transaction."""
        host = request.match_info["host"]
        action = "drain" if drained else "resume"
        row = AuditRow(time.time(), who.uid, who.user, action, f"node {host}", "ok", 200, reason)
        await self.d.set_drain(host, drained, reason, who.user, row)
        return web.json_response({"host": host, "drained": drained})

    def _node(self, request: web.Request) -> tuple[str, Node]:
        host = request.match_info["host"]
        node = self.d.cluster.nodes.get(host)
        if node is None:
            raise NoSuchThing(f"no node {host!r}; `dcctl nodes` lists the nodes")
        return host, node

    async def drain_history(self, request: web.Request) -> web.Response:
        host, node = self._node(request)
        return _json(
            {
                "host": host,
                "drained": node.drained,
                "reason": node.drain_reason,
                "history": await self.d.store.drain_history(host),
            }
        )

    async def audit(self, request: web.Request) -> web.Response:
        """The audit log, newest first: an admin reads everyone's, a user only their own."""
        who = caller(request)
        q = request.query
        user = q.get("user") or None
        if not who.admin:
            if user is not None and user != who.user:
                raise PermissionDenied(
                    f"only an admin ([daemon] admins) reads another user's audit entries;"
                    f" you are {who.user}"
                )
            user = who.user
        since = _float_arg(q["since"], "since (seconds since the epoch)") if "since" in q else None
        limit = min(_int_arg(q.get("limit", "1000"), "limit"), MAX_AUDIT_ROWS)
        before = _int_arg(q["before"], "before (an entry id)") if "before" in q else None
        await self.d.audit.flush()  # refusals still queued are part of the answer
        rows = await self.d.store.audit(user, since, limit, before)
        return _json({"entries": rows})

    async def gpus(self, request: web.Request) -> web.Response:
        if request.query.get("form") == "columns":
            return _json(self.read.gpu_columns())
        return _json({"gpus": self.read.gpu_views()})

    async def cluster(self, request: web.Request) -> web.Response:
        return _json(self.read.cluster_summary())

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: every job and node change, from `?since=CURSOR` (or the
        Last-Event-ID header) or from now. Each event's id is the cursor to resume from; a
        `reset` event means the changes since the cursor are gone (a daemon restart, or too
        far back): re-read everything, then follow on."""
        hub = self.d.hub
        cursor = request.query.get("since") or request.headers.get("Last-Event-ID") or ""
        kinds = {k for k in request.query.get("kinds", "").split(",") if k}
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        if cursor:
            backlog = hub.since(cursor)
            if backlog is None:
                await resp.write(_sse("reset", hub.cursor(), {"cursor": hub.cursor()}))
                cursor = hub.cursor()
        else:
            cursor = hub.cursor()
            await resp.write(_sse("hello", cursor, {"cursor": cursor}))
        with contextlib.suppress(ConnectionError):  # the client went away
            await self._follow(resp, cursor, kinds)
        return resp

    async def _follow(self, resp: web.StreamResponse, cursor: str, kinds: set[str]) -> None:
        hub = self.d.hub
        while not self.d.stop.is_set():
            new = hub.waiter()
            changes = hub.since(cursor)
            if changes is None:  # fell behind the ring while writing
                cursor = hub.cursor()
                await resp.write(_sse("reset", cursor, {"cursor": cursor}))
                continue
            for ch in changes:
                if not kinds or ch.kind in kinds:
                    await resp.write(_sse(ch.kind, hub.cursor(ch.seq), ch.data))
                cursor = hub.cursor(ch.seq)
            if not changes:
                await resp.write(b": keep-alive\n\n")
                await hub.wait(new, 15.0)
