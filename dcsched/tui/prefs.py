"""dctop's own settings file: per view, which columns in which order and the sort column.

`$DCTOP_CONFIG`, else `$XDG_CONFIG_HOME/dcsched/dctop.toml` (~/.config/...). Written by
`:columns` and `:sort`; a file that does not parse is reported and left alone (never
overwritten), and dctop starts with the defaults.

    [views.gpus]
    columns = ["host", "index", "util", "mem", "job", "user"]
    sort = "util"
    reverse = true
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def prefs_path() -> Path:
    if env := os.environ.get("DCTOP_CONFIG"):
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dcsched" / "dctop.toml"


@dataclass(slots=True)
class ViewPrefs:
    columns: list[str] = field(default_factory=list)  # empty: the view's default
    sort: str = ""
    reverse: bool = False


@dataclass(slots=True)
class Prefs:
    views: dict[str, ViewPrefs] = field(default_factory=dict)
    path: Path | None = None
    error: str = ""  # why the file was not read; saving is then refused

    def view(self, name: str) -> ViewPrefs:
        return self.views.setdefault(name, ViewPrefs())


def load_prefs(path: Path | None = None) -> Prefs:
    path = path or prefs_path()
    prefs = Prefs(path=path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return prefs
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        prefs.error = f"{path}: {exc} (fix or remove it; dctop uses the defaults)"
        return prefs
    views = raw.get("views")
    if not isinstance(views, dict):
        return prefs
    for name, v in views.items():
        if not isinstance(v, dict):
            continue
        cols = v.get("columns")
        prefs.views[str(name)] = ViewPrefs(
            columns=[str(c) for c in cols] if isinstance(cols, list) else [],
            sort=str(v.get("sort") or ""),
            reverse=bool(v.get("reverse", False)),
        )
    return prefs


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dump_prefs(prefs: Prefs) -> str:
    out: list[str] = ["# dctop settings: written by dctop's :columns and :sort commands"]
    for name in sorted(prefs.views):
        v = prefs.views[name]
        lines: list[Any] = []
        if v.columns:
            lines.append(f"columns = [{', '.join(_toml_str(c) for c in v.columns)}]")
        if v.sort:
            lines.append(f"sort = {_toml_str(v.sort)}")
            lines.append(f"reverse = {'true' if v.reverse else 'false'}")
        if lines:
            out += ["", f"[views.{name}]", *lines]
    return "\n".join(out) + "\n"


def save_prefs(prefs: Prefs) -> str:
    """Writes the file (atomically); returns an error text, or "" when saved."""
    if prefs.error:
        return f"not saved: {prefs.error}"
    path = prefs.path or prefs_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(dump_prefs(prefs), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        return f"not saved: {path}: {exc}"
    return ""
