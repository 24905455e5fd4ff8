"""A daemon `Job` for unit tests: every field a test does not name has a plain default."""

from __future__ import annotations

from typing import Any

from dcsched.daemon.lifecycle import Job

DEFAULTS: dict[str, Any] = dict(
    id=0,
    name="j",
    user="alice",
    uid=1000,
    account="a",
    qos="normal",
    nice=0,
    state="PENDING",
    spec={"command": ["x"]},
    nodes=1,
    gpus_per_node=1,
    gpu_type=None,
    time_limit_s=3600,
    submit_ts=0.0,
)


def make_job(**fields: Any) -> Job:
    return Job(**{**DEFAULTS, **fields})
