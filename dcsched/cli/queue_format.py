"""`dcctl queue --format`: squeue's field codes (`%i %.9j %T %R`), with a width (`%10j`,
left-justified, or `%.10j`, right-justified; longer values are cut) or, without one, as wide
as the column needs when blanks follow it, as it is before other text (`%i|%T`). Text
between codes is printed as it is. The default comes from $DCSCHED_QUEUE_FORMAT, else
DEFAULT."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dcsched.cli.common import duration, pct, timestamp
from dcsched.protocol.endings import ENDED, end_text
from dcsched.protocol.hostlist import compress

ENV = "DCSCHED_QUEUE_FORMAT"
DEFAULT = "%i %j %u %a %T %M %l %D %b %U %R"
START = "%i %j %u %a %t %S %l %D %b %R"  # dcctl queue --start, as squeue --start

Job = dict[str, Any]

_SHORT = {
    "PENDING": "PD",
    "HELD": "PD",
    "REQUEUED": "PD",
    "STARTING": "CF",
    "RUNNING": "R",
    "COMPLETING": "CG",
    "COMPLETED": "CD",
    "FAILED": "F",
    "CANCELLED": "CA",
    "TIMEOUT": "TO",
    "NODE_FAIL": "NF",
}


def _nodelist(j: Job) -> str:
    return compress(j.get("hosts") or [])


def _reason(j: Job) -> str:
    if j.get("state") in ENDED:
        return end_text(j)
    return "" if j.get("hosts") else str(j.get("reason") or "")


def _where(j: Job) -> str:
    """squeue's NODELIST(REASON): the hosts of a running job, why a waiting one waits, and
    how a finished one ended."""
    if j.get("state") in ENDED:
        return end_text(j)
    if j.get("hosts"):
        return _nodelist(j)
    return f"({j['reason']})" if j.get("reason") else ""


def _left(j: Job) -> str:
    if j.get("elapsed_s") is None or j.get("state") in ENDED:
        return ""
    return duration(max(0.0, j["time_limit_s"] - j["elapsed_s"]))


def display_id(job: dict[str, Any]) -> str:
    """`123` for a job, `123_4` for task 4 of array 123 (Slurm's form)."""
    if job.get("array_job_id") is not None and job.get("array_task_id") is not None:
        return f"{job['array_job_id']}_{job['array_task_id']}"
    return str(job["id"])


# code -> (header, value); Slurm's letters where Slurm has the field
FIELDS: dict[str, tuple[str, Callable[[Job], object]]] = {
    "i": ("JOBID", lambda j: j.get("display_id") or display_id(j)),
    "j": ("NAME", lambda j: j["name"]),
    "u": ("USER", lambda j: j["user"]),
    "a": ("ACCOUNT", lambda j: j["account"]),
    "q": ("QOS", lambda j: j["qos"]),
    "T": ("STATE", lambda j: j["state"]),
    "t": ("ST", lambda j: _SHORT.get(j["state"], j["state"])),
    "M": ("TIME", lambda j: duration(j.get("elapsed_s"))),
    "l": ("LIMIT", lambda j: duration(j["time_limit_s"])),
    "L": ("TIME_LEFT", _left),
    "D": ("NODES", lambda j: j["nodes"]),
    "b": ("GPUS", lambda j: j["nodes"] * j["gpus_per_node"]),
    "y": ("NICE", lambda j: j.get("nice", "")),
    "Q": ("PRIORITY", lambda j: "" if j.get("priority") is None else f"{j['priority']:.0f}"),
    "R": ("NODELIST(REASON)", _where),
    "N": ("NODELIST", _nodelist),
    "r": ("REASON", _reason),
    "V": ("SUBMIT_TIME", lambda j: timestamp(j.get("submit_ts"))),
    "S": ("START_TIME", lambda j: timestamp(j.get("start_ts"))),
    "e": ("END_TIME", lambda j: timestamp(j.get("end_ts"))),
    # dcsched's own (Slurm's %U is a user id)
    # a running job whose GPUs all sit idle ([daemon] idle_after_s) is marked IDLE
    "U": (
        "UTIL",
        lambda j: pct(j.get("gpu_util")) + (" IDLE" if j.get("idle_s") is not None else ""),
    ),
}

_TOKEN = re.compile(r"%(\.?)(\d*)([A-Za-z%])")


@dataclass(frozen=True, slots=True)
class Field:
    code: str
    width: int | None
    right: bool


Token = str | Field


def parse(fmt: str) -> list[Token]:
    """The format as literal text and fields; ValueError names an unknown code."""
    out: list[Token] = []
    pos = 0
    for m in _TOKEN.finditer(fmt):
        if m.start() > pos:
            out.append(fmt[pos : m.start()])
        dot, width, code = m.groups()
        if code == "%":
            out.append("%")
        elif code not in FIELDS:
            known = " ".join(f"%{c} {h}" for c, (h, _) in FIELDS.items())
            raise ValueError(f"unknown field %{code} in {fmt!r}; the fields are: {known}")
        else:
            out.append(Field(code, int(width) if width else None, bool(dot)))
        pos = m.end()
    if pos < len(fmt):
        out.append(fmt[pos:])
    if not any(isinstance(t, Field) for t in out):
        raise ValueError(f"{fmt!r} has no field; e.g. {DEFAULT!r}")
    return out


def render(fmt: str, jobs: Sequence[Job], header: bool = True) -> str:
    tokens = parse(fmt)
    fields = [t for t in tokens if isinstance(t, Field)]
    rows = [[str(FIELDS[f.code][1](j)) for f in fields] for j in jobs]
    if header:
        rows.insert(0, [FIELDS[f.code][0] for f in fields])
    widths = [
        f.width if f.width is not None else max((len(r[i]) for r in rows), default=0)
        for i, f in enumerate(fields)
    ]
    # A field without a width is padded to its column when blanks follow it (a table), and
    # printed as it is before other text ("%i|%T": a separator, for scripts), as squeue does.
    pad = []
    for k, t in enumerate(tokens):
        if isinstance(t, Field):
            after = tokens[k + 1] if k + 1 < len(tokens) else ""
            pad.append(t.width is not None or (isinstance(after, str) and after.isspace()))
    lines = []
    for r in rows:
        out, i = [], 0
        for t in tokens:
            if isinstance(t, str):
                out.append(t)
                continue
            cell = r[i][: widths[i]] if t.width is not None else r[i]
            if pad[i]:
                cell = cell.rjust(widths[i]) if t.right else cell.ljust(widths[i])
            out.append(cell)
            i += 1
        lines.append("".join(out).rstrip())
    return "\n".join(lines)
