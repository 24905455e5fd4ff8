"""The scheduler core imports only the standard library and itself; dcsim only the core,
the stdlib-only duration grammar (dcsched.protocol.durations) and its progress bar (rich,
the `sim` extra, imported only when present)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import dcsched.scheduler

ROOT = Path(dcsched.scheduler.__file__).resolve().parents[1]
DURATIONS = ROOT / "protocol" / "durations.py"
FILES = [*sorted((ROOT / "scheduler").glob("*.py")), ROOT / "cli" / "dcsim.py", DURATIONS]
EXTRA = {"dcsim.py": {"dcsched.protocol.durations", "rich"}}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_only_stdlib_and_the_core(path: Path) -> None:
    extra = EXTRA.get(path.name, set())
    for name in imported(path):
        top = name.split(".")[0]
        if name in extra or top in extra:
            continue
        if top == "dcsched":
            # the package root holds only the version (and imports nothing)
            ok = name.startswith("dcsched.scheduler") or name == "dcsched"
            assert ok, f"{path.name} imports {name}"
        else:
            assert top in sys.stdlib_module_names or top == "__future__", f"{path.name}: {name}"
