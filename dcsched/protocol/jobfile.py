"""Reading `job.toml`: TOML syntax and spec problems reported as FILE:LINE: message."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from dcsched.protocol.jobspec import (
    MAX_SPEC_BYTES,
    JobSpec,
    JobSpecError,
    SpecProblem,
    spec_size,
    spec_to_dict,
    validate_spec,
)


@dataclass(frozen=True, slots=True)
class FileProblem:
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}:{self.line}: {self.message}"
            if self.line
            else f"{self.file}: {self.message}"
        )


class JobFileError(ValueError):
    def __init__(self, problems: list[FileProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\"-]+)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_.\"-]+)\s*=")


def locate(text: str, path: tuple[str, ...]) -> int | None:
    """The 1-based line where a key path is set (tables and dotted keys), or None."""
    if not path:
        return None
    table: tuple[str, ...] = ()
    best: int | None = None
    for n, line in enumerate(text.splitlines(), 1):
        h = _HEADER.match(line)
        if h:
            table = tuple(p.strip('"') for p in h.group(1).split("."))
            if table == path:
                best = best or n
            continue
        k = _KEY.match(line)
        if not k:
            continue
        full = table + tuple(p.strip('"') for p in k.group(1).split("."))
        if full == path:
            return n
        if best is None and len(full) < len(path) and path[: len(full)] == full:
            best = n  # an inline table or array holds the key
    return best if best is not None else (locate(text, path[:-1]) if len(path) > 1 else None)


def load_job_file(path: str | Path) -> JobSpec:
    """Parses and validates a job file; a relative or missing workdir is the file's folder."""
    p = Path(path)
    name = str(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise JobFileError([FileProblem(name, None, exc.strerror or str(exc))]) from None
    if len(data) > MAX_SPEC_BYTES:
        raise JobFileError(
            [
                FileProblem(
                    name,
                    None,
                    f"the file is {len(data)} bytes; a job may take at most {MAX_SPEC_BYTES}"
                    "\n    hint: put large settings in a file in the workdir and read it there",
                )
            ]
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobFileError(
            [
                FileProblem(
                    name,
                    data[: exc.start].count(b"\n") + 1,
                    f"not UTF-8 text (byte 0x{data[exc.start]:02x})"
                    "\n    hint: a job file is TOML, which is UTF-8; convert it, e.g. "
                    "iconv -f latin1 -t utf-8",
                )
            ]
        ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line = int(m.group(1)) if m else None
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise JobFileError([FileProblem(name, line, f"TOML syntax: {msg}")]) from None
    workdir = raw.get("workdir")
    base = p.resolve().parent
    if workdir is None:
        raw["workdir"] = str(base)
    elif isinstance(workdir, str) and not workdir.startswith("/"):
        raw["workdir"] = str((base / workdir).resolve())
    try:
        spec = validate_spec(raw)
    except JobSpecError as exc:
        raise JobFileError([_with_line(name, text, pr) for pr in exc.problems]) from None
    size = spec_size(spec_to_dict(spec))
    if size > MAX_SPEC_BYTES:
        msg = (
            f"the job's command, env and settings take {size} bytes; the limit is {MAX_SPEC_BYTES}"
        )
        hint = "put large settings in a file in the workdir and read it there"
        raise JobFileError([FileProblem(name, None, f"{msg}\n    hint: {hint}")])
    return spec


def _with_line(name: str, text: str, problem: SpecProblem) -> FileProblem:
    msg = f"{problem.key}: {problem.message}"
    if problem.hint:
        msg += f"\n    hint: {problem.hint}"
    return FileProblem(name, locate(text, problem.path), msg)
