"""Hypothesis strategies for bad input: arbitrary JSON, and valid messages and job specs
with one part broken (a field replaced by anything, removed, or one added)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import settings
from hypothesis import strategies as st

from dcsched.protocol.messages import (
    Ack,
    AckExit,
    Cancel,
    FetchLog,
    GpuFault,
    GpuInfo,
    GpuSample,
    HostStatus,
    JobExited,
    JobProcs,
    JobReport,
    JobStarted,
    Launch,
    LogChunk,
    QueryJob,
    Telemetry,
)

# Bounded: the whole suite must stay fast on two cores.
FUZZ = settings(max_examples=150, deadline=None)

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([2**63, 2**64 - 1, -(2**63) - 1])  # past what SQLite stores
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
# Odd strings that have broken things before: NUL, lone surrogates, huge and negative ids.
nasty_text = st.sampled_from(
    ["", "\x00", "\ud800", "../../etc/passwd", "0", "-1", "9" * 30, "1e309", "h\u00e9te", " "]
) | st.text(max_size=20)


def _mutate(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """`value` with one thing changed somewhere inside it."""
    if isinstance(value, dict) and value and depth < 4:
        key = draw(st.sampled_from(sorted(value)))
        how = draw(st.sampled_from(["replace", "recurse", "drop", "add"]))
        out = dict(value)
        if how == "replace" or (how == "recurse" and not isinstance(value[key], dict | list)):
            out[key] = draw(json_values | nasty_text)
        elif how == "recurse":
            out[key] = _mutate(draw, value[key], depth + 1)
        elif how == "drop":
            del out[key]
        else:
            out[draw(st.text(max_size=8))] = draw(json_values)
        return out
    if isinstance(value, list) and value and depth < 4:
        i = draw(st.integers(0, len(value) - 1))
        out_list = list(value)
        out_list[i] = _mutate(draw, value[i], depth + 1)
        return out_list
    return draw(json_values | nasty_text)


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    return _mutate(draw, value)


def _exited(host: str = "h1") -> JobExited:
    return JobExited(host=host, job_id="1", node_rank=0, ts=1.0, exit_code=0, launch_id="l1")


# One valid example of every message on the bus, from which broken ones are made.
MESSAGES: list[msgspec.Struct] = [
    Telemetry(
        host="h1",
        ts=1.0,
        seq=1,
        gpus=[GpuSample(index=0, uuid="u0", util=50.0, pids=[1])],
        jobs=[JobProcs(job_id="1", node_rank=0, gpus=[0], pids=[1])],
    ),
    HostStatus(
        host="h1",
        state="online",
        ts=1.0,
        gpus=[GpuInfo(index=0, uuid="u0", model="H100")],
        running_jobs=["1"],
    ),
    Launch(
        cmd_id="c",
        job_id="1",
        node_rank=0,
        nnodes=1,
        nproc_per_node=1,
        master_addr="a",
        master_port=29500,
        gpus=[0],
        command=["t.py"],
        env={"A": "b"},
    ),
    Cancel(cmd_id="c", job_id="1"),
    FetchLog(cmd_id="c", job_id="1", node_rank=0),
    AckExit(cmd_id="c", job_id="1", node_rank=0),
    QueryJob(cmd_id="c", job_id="1"),
    Ack(host="h1", cmd_id="c", job_id="1", ok=False, error="x", code="invalid"),
    JobStarted(host="h1", job_id="1", node_rank=0, pid=10, ts=1.0, launch_id="l1"),
    _exited(),
    GpuFault(host="h1", gpu_index=0, ts=1.0, kind="xid", code=79),
    LogChunk(host="h1", cmd_id="c", job_id="1", node_rank=0, offset=0, size=3, data="abc"),
    JobReport(host="h1", cmd_id="c", job_id="1", running=[0], exits=[_exited()]),
]
EVENTS = [
    m
    for m in MESSAGES
    if isinstance(m, Ack | JobStarted | JobExited | GpuFault | LogChunk | JobReport)
]


@st.composite
def broken_message(draw: st.DrawFn, pool: list[msgspec.Struct] = MESSAGES) -> bytes:
    """A message from `pool` as JSON, with one thing changed (or not, now and then)."""
    msg = draw(st.sampled_from(pool))
    raw = msgspec.to_builtins(msg)
    if draw(st.integers(0, 9)):
        raw = draw(mutated(raw))
    # json, not msgspec: it writes what msgspec refuses (lone surrogates, Infinity).
    return json.dumps(raw).encode()
