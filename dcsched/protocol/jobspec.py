"""The job description, as written in `job.toml` and sent to the daemon's API.

Validation returns every problem at once, each with the key's path and a hint, so that
`dcsub` can point at the line and the API can answer with the same words.
"""

from __future__ import annotations

import difflib
import re
import signal as _signal
from dataclasses import dataclass
from typing import Any

import msgspec

MAX_TIME_LIMIT_S = 30 * 24 * 3600
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DEPENDENCY = re.compile(r"^(afterok|afterany|afternotok|after)(:\d{1,18}(_\d{1,6})?)+$")


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
    # --- lifecycle and arrays (see "Signals, requeue and arrays" below) ---
    signal: str = ""  # "USR1@300": that signal to the workers 300 s before the end
    requeue: bool = False  # a node failure puts the job back in the queue
    max_restarts: int | None = None  # with requeue: how many times (DEFAULT_MAX_RESTARTS)
    array: str = ""  # "0-99%8": one job per index, at most 8 running at once

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


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | int) -> int:
    """Seconds from 90, "90s", "30m", "4h", "2d", "1h30m", "HH:MM:SS" or "D-HH:MM:SS"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration, got a boolean")
    if isinstance(value, int):
        seconds = value
    else:
        text = value.strip().lower()
        if re.fullmatch(r"(\d+-)?\d+:\d{1,2}:\d{1,2}", text):
            days, _, clock = text.rpartition("-")
            h, m, s = (int(x) for x in clock.split(":"))
            seconds = (int(days) if days else 0) * 86400 + h * 3600 + m * 60 + s
        elif re.fullmatch(r"(\d+[smhd])+", text):
            seconds = sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhd])", text))
        elif text.isdigit():
            seconds = int(text)
        else:
            raise ValueError(f"cannot read {value!r} as a duration")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


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
                'e.g. "30m", "4h", "2d", "1:30:00" or seconds as a number',
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
        if dep != SINGLETON and not _DEPENDENCY.match(dep):
            p.append(
                SpecProblem(
                    ("dependency",),
                    f"cannot read {dep!r}",
                    'e.g. dependency = ["afterok:12", "afterany:13:14", "after:15", "singleton"]',
                )
            )
    return p + _lifecycle_problems(spec)


def _type_problem(exc: msgspec.ValidationError) -> SpecProblem:
    text = str(exc)
    m = re.search(r" - at `\$((?:\.[A-Za-z0-9_]+|\[\d+\])*)`$", text)
    path: tuple[str, ...] = ()
    if m:
        text = text[: m.start()]
        path = tuple(x for x in re.split(r"\.|\[|\]", m.group(1)) if x)
    return SpecProblem(path, text, "see the job file reference in README.md")


def _bad_text(value: Any, path: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The path of the first key or string that cannot be encoded as UTF-8."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for k, v in items:
        here = (*path, str(k))
        if isinstance(k, str) and not _utf8(k):
            return here
        if isinstance(v, str) and not _utf8(v):
            return here
        if isinstance(v, dict | list):
            found = _bad_text(v, here)
            if found != here:
                return found
    return path


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


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
    except UnicodeEncodeError:  # a lone surrogate, which JSON's \u escapes can spell
        raise JobSpecError(
            [SpecProblem(_bad_text(raw), "is not valid Unicode text", "remove the \\u escape")]
        ) from None
    problems = _ranges(spec)
    if problems:
        raise JobSpecError(problems)
    return spec


def parse_dependencies(specs: list[str]) -> tuple[tuple[str, str], ...]:
    """["afterok:12:13", "afterany:14"] as ((kind, job id), ...); the strings are valid."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        if spec == SINGLETON:
            continue  # not on a job: the scheduler reads it from JobRequest.singleton
        kind, *ids = spec.split(":")
        out += [(kind, i) for i in ids]
    return tuple(out)


# --- signals, requeue and arrays ------------------------------------------------------------

DEFAULT_SIGNAL_LEAD_S = 60  # Slurm's --signal default
MAX_SIGNAL_LEAD_S = 65535  # and its maximum
DEFAULT_MAX_RESTARTS = 3
MAX_RESTARTS = 1000
MAX_ARRAY_TASKS = 1000
MAX_ARRAY_INDEX = 999_999
SINGLETON = "singleton"
# Signals a job may ask for: stopping or killing it is the daemon's business, not a warning.
_NOT_A_WARNING = {"KILL", "STOP", "TSTP", "TTIN", "TTOU", "CHLD", "SEGV", "BUS", "ILL", "FPE"}


def parse_signal(text: str) -> tuple[int, int]:
    """(signal number, seconds before the end) from "USR1@300", "SIGUSR2@90" or "USR1"
    (60 s); ValueError with what is wrong."""
    name_text, at, lead_text = text.strip().partition("@")
    name = name_text.strip().upper().removeprefix("SIG")
    if name in _NOT_A_WARNING:
        raise ValueError(f"SIG{name} cannot be a warning signal")
    try:
        sig = _signal.Signals["SIG" + name]
    except KeyError:
        raise ValueError(f"{name_text.strip()!r} names no signal") from None
    lead = DEFAULT_SIGNAL_LEAD_S
    if at:
        lead_text = lead_text.strip()
        if not lead_text.isdigit():
            raise ValueError(f"{lead_text!r} after '@' is not a number of seconds")
        lead = int(lead_text)
        if not 1 <= lead <= MAX_SIGNAL_LEAD_S:
            raise ValueError(f"{lead} s before the end is out of range (1..{MAX_SIGNAL_LEAD_S})")
    return int(sig), lead


def parse_array(text: str) -> tuple[tuple[int, ...], int | None]:
    """(task indexes, how many may run at once or None) from Slurm's --array syntax:
    "0-99", "0-15:4", "1,3,5", "0-9,20", each optionally followed by "%N"."""
    body, pct, limit_text = text.replace(" ", "").partition("%")
    limit: int | None = None
    if pct:
        if not limit_text.isdigit() or int(limit_text) < 1:
            raise ValueError(f"{limit_text!r} after '%' is not a positive number")
        limit = int(limit_text)
    indexes: set[int] = set()
    for item in body.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", item)
        if not m:
            raise ValueError(f"cannot read {item!r}: expected N, N-M or N-M:STEP")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        step = int(m.group(3)) if m.group(3) is not None else 1
        if hi < lo or step < 1:
            raise ValueError(f"{item!r} is an empty range")
        if hi > MAX_ARRAY_INDEX:
            raise ValueError(f"index {hi} is over {MAX_ARRAY_INDEX}")
        if (hi - lo) // step + 1 + len(indexes) > MAX_ARRAY_TASKS:
            raise ValueError(f"more than {MAX_ARRAY_TASKS} tasks")
        indexes.update(range(lo, hi + 1, step))
    return tuple(sorted(indexes)), limit


def array_limit(text: str) -> int | None:
    """The `%N` of a valid array string, without expanding its indexes."""
    _, pct, n = text.partition("%")
    return int(n) if pct else None


def _lifecycle_problems(spec: JobSpec) -> list[SpecProblem]:
    p: list[SpecProblem] = []
    if spec.signal:
        try:
            _, lead = parse_signal(spec.signal)
            if lead >= parse_duration(spec.resources.time_limit):
                p.append(
                    SpecProblem(
                        ("signal",),
                        f"{lead} s before the end is not less than the time limit",
                        "ask for the signal sooner than the whole run",
                    )
                )
        except ValueError as exc:
            p.append(
                SpecProblem(
                    ("signal",),
                    str(exc),
                    'NAME@SECONDS, e.g. signal = "USR1@300" (SIGUSR1 five minutes before)',
                )
            )
    if spec.max_restarts is not None:
        if not spec.requeue:
            p.append(
                SpecProblem(
                    ("max_restarts",), "has no effect without requeue", "add requeue = true"
                )
            )
        elif not 0 <= spec.max_restarts <= MAX_RESTARTS:
            p.append(
                SpecProblem(
                    ("max_restarts",), f"{spec.max_restarts} is out of range", f"0..{MAX_RESTARTS}"
                )
            )
    if spec.array:
        try:
            parse_array(spec.array)
        except ValueError as exc:
            p.append(
                SpecProblem(("array",), str(exc), 'e.g. array = "0-99%8", "0-15:4" or "1,3,5"')
            )
    return p


def max_restarts(spec: dict[str, Any]) -> int:
    """How many times a job (its stored spec) is requeued after a node failure."""
    if not spec.get("requeue"):
        return 0
    n = spec.get("max_restarts")
    return DEFAULT_MAX_RESTARTS if n is None else int(n)


def warning_signal(spec: dict[str, Any]) -> tuple[int, int] | None:
    """(signal, seconds before the end) of a job's stored spec, or None."""
    text = spec.get("signal") or ""
    return parse_signal(text) if text else None


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(spec)
    return out
