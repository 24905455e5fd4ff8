"""The job description, as written in `job.toml` and sent to the daemon's API.

Validation returns every problem at once, each with the key's path and a hint, so that
`dcsub` can point at the line and the API can answer with the same words.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any

import msgspec

from dcsched.protocol import durations

MAX_TIME_LIMIT_S = 30 * 24 * 3600
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DEPENDENCY = re.compile(r"^(afterok|afterany|afternotok)(:\d{1,18})+$")


class Resources(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    nodes: int = 1
    gpus_per_node: int = 1
    gpu_type: str | None = None
    time_limit: str | int = "1h"


class TorchrunOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    nproc_per_node: int | None = None  # default: gpus_per_node
    python: str | None = None


class JobSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    command: list[str]
    workdir: str = ""
    account: str = "default"
    qos: str = "normal"
    nice: int = 0
    hold: bool = False
    preemptible: bool = False
    dependency: list[str] = []
    resources: Resources = msgspec.field(default_factory=Resources)
    torchrun: TorchrunOptions = msgspec.field(default_factory=TorchrunOptions)
    env: dict[str, str] = {}

    @property
    def time_limit_s(self) -> int:
        return parse_duration(self.resources.time_limit)

    @property
    def nproc_per_node(self) -> int:
        return self.torchrun.nproc_per_node or self.resources.gpus_per_node


_KNOWN: dict[str, frozenset[str]] = {
    "": frozenset(f for f in JobSpec.__struct_fields__),
    "resources": frozenset(Resources.__struct_fields__),
    "torchrun": frozenset(TorchrunOptions.__struct_fields__),
}


@dataclass(frozen=True, slots=True)
class SpecProblem:
    path: tuple[str, ...]  # ("resources", "nodes"); () for the whole file
    message: str
    hint: str = ""

    @property
    def key(self) -> str:
        return ".".join(self.path) or "(file)"

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" + (f" ({self.hint})" if self.hint else "")


class JobSpecError(ValueError):
    def __init__(self, problems: list[SpecProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


def parse_duration(value: str | int) -> int:
    """A job time limit in whole seconds; a bare number is minutes, as in Slurm
    (the grammar is dcsched.protocol.durations)."""
    return math.ceil(durations.parse_duration(value, bare="minutes"))


def _unknown_keys(raw: dict[str, Any]) -> list[SpecProblem]:
    problems = []
    for table, known in _KNOWN.items():
        section = raw if not table else raw.get(table)
        if not isinstance(section, dict):
            continue
        for key in section:
            if key in known:
                continue
            path = (table, key) if table else (key,)
            close = difflib.get_close_matches(key, sorted(known), n=1)
            where = f"[{table}]" if table else "the top level"
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else f"known keys in {where}: " + ", ".join(sorted(known))
            )
            problems.append(SpecProblem(path, f"unknown key {key!r} in {where}", hint))
    return problems


def _ranges(spec: JobSpec) -> list[SpecProblem]:
    p: list[SpecProblem] = []
    r = spec.resources
    if not _NAME.match(spec.name):
        p.append(
            SpecProblem(
                ("name",),
                f"{spec.name!r} is not a usable job name",
                "letters, digits, '.', '_' and '-', at most 64",
            )
        )
    if not spec.command or not all(spec.command):
        p.append(
            SpecProblem(
                ("command",),
                "must be a non-empty list of non-empty strings",
                'e.g. command = ["train.py", "--epochs", "3"]',
            )
        )
    if spec.workdir and not spec.workdir.startswith("/"):
        p.append(
            SpecProblem(
                ("workdir",),
                "must be an absolute path",
                "dcsub fills it in from the job file's folder when it is left out",
            )
        )
    if not 1 <= r.nodes <= 4096:
        p.append(SpecProblem(("resources", "nodes"), f"{r.nodes} is out of range", "1..4096"))
    if not 1 <= r.gpus_per_node <= 64:
        p.append(
            SpecProblem(
                ("resources", "gpus_per_node"), f"{r.gpus_per_node} is out of range", "1..64"
            )
        )
    try:
        limit = parse_duration(r.time_limit)
        if limit > MAX_TIME_LIMIT_S:
            p.append(SpecProblem(("resources", "time_limit"), "longer than 30 days", "ask less"))
    except ValueError as exc:
        p.append(
            SpecProblem(
                ("resources", "time_limit"),
                str(exc),
                "a bare number is minutes, as in Slurm; README.md lists the forms",
            )
        )
    n = spec.torchrun.nproc_per_node
    if n is not None and not 1 <= n <= 1024:
        p.append(SpecProblem(("torchrun", "nproc_per_node"), f"{n} is out of range", "1..1024"))
    if spec.torchrun.python is not None and not spec.torchrun.python.startswith("/"):
        p.append(
            SpecProblem(
                ("torchrun", "python"),
                "must be an absolute path",
                "e.g. /home/alice/venv/bin/python",
            )
        )
    if not -10000 <= spec.nice <= 10000:
        p.append(SpecProblem(("nice",), f"{spec.nice} is out of range", "-10000..10000"))
    for key in spec.env:
        if not _ENV_KEY.match(key):
            p.append(
                SpecProblem(
                    ("env", key),
                    "is not a valid environment variable name",
                    "letters, digits and '_', not starting with a digit",
                )
            )
    for dep in spec.dependency:
        if not _DEPENDENCY.match(dep):
            p.append(
                SpecProblem(
                    ("dependency",),
                    f"cannot read {dep!r}",
                    'e.g. dependency = ["afterok:12", "afterany:13:14"]',
                )
            )
    return p


def _type_problem(exc: msgspec.ValidationError) -> SpecProblem:
    text = str(exc)
    m = re.search(r" - at `\$((?:\.[A-Za-z0-9_]+|\[\d+\])*)`$", text)
    path: tuple[str, ...] = ()
    if m:
        text = text[: m.start()]
        path = tuple(x for x in re.split(r"\.|\[|\]", m.group(1)) if x)
    return SpecProblem(path, text, "see the job file reference in README.md")


def validate_spec(raw: Any) -> JobSpec:
    """A JobSpec from plain data (a parsed TOML or JSON object), or JobSpecError."""
    if not isinstance(raw, dict):
        raise JobSpecError([SpecProblem((), "a job must be a table of keys")])
    problems = _unknown_keys(raw)
    if problems:
        raise JobSpecError(problems)
    try:
        spec = msgspec.convert(raw, JobSpec)
    except msgspec.ValidationError as exc:
        raise JobSpecError([_type_problem(exc)]) from None
    problems = _ranges(spec)
    if problems:
        raise JobSpecError(problems)
    return spec


def parse_dependencies(specs: list[str]) -> tuple[tuple[str, str], ...]:
    """["afterok:12:13", "afterany:14"] as ((kind, job id), ...); the strings are valid."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        kind, *ids = spec.split(":")
        out += [(kind, i) for i in ids]
    return tuple(out)


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(spec)
    return out
