"""Builders for scheduler test data: short calls, sensible defaults."""

from __future__ import annotations

from collections.abc import Iterable

from dcsched.scheduler import (
    JobRequest,
    NodeView,
    RunningJob,
    SchedulerConfig,
    Snapshot,
    Usage,
)

H = 3600.0


def node(
    name: str,
    gpus: int = 8,
    free: Iterable[int] | None = None,
    *,
    gpu_type: str = "H100",
    state: str = "up",
    unhealthy: Iterable[int] = (),
) -> NodeView:
    ids = tuple(range(gpus))
    return NodeView(
        name,
        gpu_type,
        ids,
        frozenset(ids if free is None else free),
        state,
        frozenset(unhealthy),
    )


def busy(name: str, gpus: int = 8, used: int = 8, **kw: object) -> NodeView:
    """A node whose first `used` GPUs are taken."""
    return node(name, gpus, range(used, gpus), **kw)  # type: ignore[arg-type]


def job(
    job_id: str,
    gpus: int = 1,
    *,
    nodes: int = 1,
    submit: float = 0.0,
    limit: float = H,
    user: str = "u",
    account: str = "a",
    **kw: object,
) -> JobRequest:
    return JobRequest(job_id, user, account, submit, nodes, gpus, limit, **kw)  # type: ignore[arg-type]


def running(
    job_id: str,
    alloc: dict[str, Iterable[int]],
    *,
    start: float = 0.0,
    limit: float = H,
    user: str = "u",
    account: str = "a",
    **kw: object,
) -> RunningJob:
    parts = tuple((n, tuple(g)) for n, g in alloc.items())
    return RunningJob(job_id, user, account, start, limit, parts, **kw)  # type: ignore[arg-type]


def snap(
    nodes: Iterable[NodeView],
    pending: Iterable[JobRequest] = (),
    run: Iterable[RunningJob] = (),
    config: SchedulerConfig | None = None,
    usage: Usage | None = None,
    finished: dict[str, str] | None = None,
    **config_kw: object,
) -> Snapshot:
    cfg = config or SchedulerConfig(**config_kw)  # type: ignore[arg-type]
    return Snapshot(tuple(nodes), tuple(pending), tuple(run), cfg, usage or Usage(), finished or {})
