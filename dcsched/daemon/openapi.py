"""The API's OpenAPI 3.1 description (`GET /v1/openapi.json`), generated with
`msgspec.json.schema_components` from msgspec types: the job spec is the very type the daemon
validates submissions with; the answers are described by the Structs below, which the
schemathesis test checks against a real daemon's answers. Views carry more fields than
listed here: a client may rely on the listed ones."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from dcsched import __version__
from dcsched.protocol.jobspec import JobSpec


class Problem(msgspec.Struct):
    key: str
    message: str
    hint: str = ""


class ErrorDetail(msgspec.Struct):
    code: str  # invalid_request, permission_denied, not_found, conflict, unavailable, internal
    message: str  # what was wrong and how to fix it
    problems: list[Problem] = []  # an invalid job: every problem with its key


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


class Health(msgspec.Struct):
    ok: bool
    problems: list[str]
    version: str
    broker_connected: bool
    storage_ok: bool
    role: str = "leader"  # or "standby": another dcd leads the shared (PostgreSQL) store
    leader: str = ""  # a standby's: who leads
    leader_url: str = ""  # a standby's: the leader's TLS listener ([daemon] advertise_url)


class Whoami(msgspec.Struct):
    uid: int
    user: str
    admin: bool


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    lifetime_s: float | None = None  # at most [daemon] token_lifetime_s (also the default)


class Token(msgspec.Struct):
    token: str  # Authorization: Bearer TOKEN on the TLS listener
    user: str
    uid: int
    expires: int  # Unix time


class Submitted(msgspec.Struct):
    job_id: int


class NodePart(msgspec.Struct):
    node_rank: int
    host: str
    gpus: list[int]
    state: str
    pid: int | None
    exit_code: int | None
    signal: int | None


class JobView(msgspec.Struct):
    """A job; `spec` only in GET /v1/jobs/{job_id}, and there without its command, env,
    workdir and torchrun for anyone but its owner and admins (`hidden` names them)."""

    id: int
    name: str
    user: str
    uid: int
    account: str
    qos: str
    state: str
    reason: str
    nodes: int
    gpus_per_node: int
    gpu_type: str | None
    time_limit_s: int
    submit_ts: float
    start_ts: float | None
    end_ts: float | None
    exit_code: int | None
    signal: int | None
    node_parts: list[NodePart]
    hosts: list[str]
    spec: dict[str, Any] = {}
    hidden: list[str] = []
    restart_count: int = 0
    attained_s: float = 0.0  # seconds its earlier runs took (the current run not included)
    # an array task: the array's id (its first task's), its index, the array's `%N`
    array_job_id: int | None = None
    array_task_id: int | None = None
    array_limit: int | None = None


class JobList(msgspec.Struct):
    jobs: list[JobView]


class JobEvent(msgspec.Struct):
    ts: float
    state: str
    detail: str


class JobDetail(JobView):
    events: list[JobEvent] = []


class LogChunk(msgspec.Struct):
    job_id: int
    node: int
    host: str
    offset: int
    next_offset: int
    size: int
    data: str
    done: bool


class NodeView(msgspec.Struct):
    host: str
    state: str  # up | drained | joining | down
    online: bool
    drained: bool
    drain_reason: str
    gpus: int
    gpus_allocated: int
    jobs: list[int]


class NodeList(msgspec.Struct):
    nodes: list[NodeView]


class GpuView(msgspec.Struct):
    host: str
    index: int
    uuid: str
    model: str
    job_id: int | None
    user: str | None


class GpuList(msgspec.Struct):
    gpus: list[GpuView]


class Drained(msgspec.Struct):
    host: str
    drained: bool


class DrainReason(msgspec.Struct, forbid_unknown_fields=True):
    reason: str = ""


class DrainChange(msgspec.Struct):
    ts: float
    user: str
    drained: bool
    reason: str


class DrainHistory(msgspec.Struct):
    host: str
    drained: bool
    reason: str
    history: list[DrainChange]  # oldest first


class AuditEntry(msgspec.Struct):
    id: int
    ts: float
    uid: int
    user: str
    action: str
    target: str
    result: str  # ok | refused | failed
    status: int
    detail: str


class AuditLog(msgspec.Struct):
    entries: list[AuditEntry]  # newest first


_INT = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
# a job's id, or Slurm's ARRAY_TASK (`123_4`); an array's id names every task (actions)
_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": r"^[0-9]{1,18}(_[0-9]{1,18})?$"},
}
_HOST = {"name": "host", "in": "path", "required": True, "schema": {"type": "string"}}


def _q(name: str, schema: dict[str, Any], about: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": about}


@dataclass(frozen=True)
class _Op:
    method: str
    path: str
    summary: str
    answer: Any  # the type of a successful answer
    status: int = 200
    params: tuple[dict[str, Any], ...] = ()
    body: Any = None  # the type of the request body


_OBJECT = dict[str, Any]
_OPERATIONS = [
    _Op("get", "/v1/health", "Is the daemon well (503 with its problems if not)", Health),
    _Op("get", "/v1/whoami", "Who the daemon takes the caller for", Whoami),
    _Op(
        "post",
        "/v1/tokens",
        "A token for the TLS listener as the caller (on the Unix socket only)",
        Token,
        body=TokenRequest,
    ),
    _Op(
        "get",
        "/v1/jobs",
        "Waiting and running jobs (finished ones with all or state)",
        JobList,
        params=(
            _q("state", {"type": "string"}, "comma-separated states"),
            _q("all", {"type": "string", "enum": ["1", "true"]}, "finished jobs too"),
            _q("user", {"type": "string"}, "only this user's jobs"),
            _q("limit", _INT, "at most this many, newest first"),
        ),
    ),
    _Op("post", "/v1/jobs", "Submit a job", Submitted, 201, body=JobSpec),
    _Op("get", "/v1/jobs/{job_id}", "One job with its history", JobDetail, params=(_JOB_ID,)),
    *(
        _Op(
            "post",
            f"/v1/jobs/{{job_id}}/{a}",
            f"{a} a job, an array task, or every task of an array it applies to",
            JobView,
            params=(_JOB_ID,),
        )
        for a in ("cancel", "hold", "release", "requeue")
    ),
    _Op(
        "get",
        "/v1/jobs/{job_id}/logs",
        "A node's log (owner or admin)",
        LogChunk,
        params=(
            _JOB_ID,
            _q("node", _INT, "node rank"),
            _q("offset", {"type": "integer", "minimum": -1}, "-1: the tail"),
            _q("max_bytes", _INT, "at most this much (1 MiB)"),
        ),
    ),
    _Op("get", "/v1/jobs/{job_id}/explain", "Why a job waits", _OBJECT, params=(_JOB_ID,)),
    _Op("get", "/v1/fairshare", "Shares and usage", _OBJECT),
    _Op(
        "get",
        "/v1/forecast",
        "When the first pending jobs would start, every job run to its time limit",
        _OBJECT,
        params=(_q("limit", _INT, "this many pending jobs, in priority order (at most 1000)"),),
    ),
    _Op("get", "/v1/nodes", "Every node", NodeList),
    _Op("get", "/v1/nodes/{host}/history", "GPU telemetry history", _OBJECT, params=(_HOST,)),
    _Op("get", "/v1/nodes/{host}/drains", "Drain history", DrainHistory, params=(_HOST,)),
    *(
        _Op(
            "post",
            f"/v1/nodes/{{host}}/{a}",
            f"{a} a node (admin)",
            Drained,
            params=(_HOST,),
            body=DrainReason,
        )
        for a in ("drain", "resume")
    ),
    _Op("get", "/v1/gpus", "Every GPU", GpuList),
    _Op("get", "/v1/cluster", "Cluster summary", _OBJECT),
    _Op(
        "get",
        "/v1/audit",
        "The audit log (a user's own; an admin's: all)",
        AuditLog,
        params=(
            _q("user", {"type": "string"}, "only this user's (admins)"),
            _q("since", {"type": "number"}, "at or after this time (epoch seconds)"),
            _q("limit", _INT, "at most this many (10,000)"),
            _q("before", _INT, "entries with a smaller id (paging back)"),
        ),
    ),
]


def openapi() -> dict[str, Any]:
    types = [t for op in _OPERATIONS for t in (op.answer, op.body) if t is not None]
    refs, components = msgspec.json.schema_components(
        [*types, ErrorBody], ref_template="#/components/schemas/{name}"
    )
    schema_of = dict(zip([*types, ErrorBody], refs, strict=True))
    error = {
        "description": "an error: what was wrong and how to fix it",
        "content": {"application/json": {"schema": schema_of[ErrorBody]}},
    }
    paths: dict[str, dict[str, Any]] = {}
    for o in _OPERATIONS:
        op: dict[str, Any] = {
            "summary": o.summary,
            "operationId": o.method + re.sub(r"\W+", "_", o.path),
            "parameters": list(o.params),
            "responses": {
                str(o.status): {
                    "description": o.summary,
                    "content": {"application/json": {"schema": schema_of[o.answer]}},
                },
                "default": error,
            },
        }
        if o.body is not None:
            op["requestBody"] = {
                "required": o.body is JobSpec,
                "content": {"application/json": {"schema": schema_of[o.body]}},
            }
        paths.setdefault(o.path, {})[o.method] = op
    paths["/v1/events"] = {
        "get": {
            "summary": "Job and node changes as server-sent events (see docs/architecture.md)",
            "operationId": "get_v1_events",
            "parameters": [
                _q("since", {"type": "string"}, "resume after this cursor"),
                _q("kinds", {"type": "string"}, "job,node"),
            ],
            "responses": {"200": {"description": "text/event-stream"}, "default": error},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dcsched daemon API",
            "version": __version__,
            "description": "HTTP+JSON on the daemon's Unix socket; the caller is the socket"
            " peer's uid (SO_PEERCRED). See README.md and docs/security.md.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }
