"""The import boundaries of BRIEF.md, checked on the source (AST), not by convention."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "dcsched"

# part -> project modules it may import (besides itself)
ALLOWED = {
    "protocol": set(),
    "scheduler": set(),
    "agents": {"protocol"},
    "daemon": {"protocol", "scheduler"},
    "tui": {"protocol", "client"},
    "cli": {"protocol", "client", "scheduler"},  # dcsim replays traces through the core
}
THIRD_PARTY_ONLY_IN = {"textual": "tui", "pynvml": "agents"}


@functools.cache  # each file is parsed once for all the checks
def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def _files(part: str) -> list[Path]:
    return sorted((PKG / part).rglob("*.py"))


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_part_imports_only_what_it_may(part: str) -> None:
    bad = []
    for f in _files(part):
        for mod in _imports(f):
            parts = mod.split(".")
            if parts[0] != "dcsched" or len(parts) < 2:
                continue
            target = parts[1]
            if target != part and target not in ALLOWED[part] and target != "__init__":
                bad.append(f"{f.relative_to(PKG)} imports {mod}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(("module", "owner"), sorted(THIRD_PARTY_ONLY_IN.items()))
def test_third_party_confined(module: str, owner: str) -> None:
    bad = [
        f"{f.relative_to(PKG)}"
        for f in PKG.rglob("*.py")
        if f.relative_to(PKG).parts[0] != owner
        and any(m.split(".")[0] == module for m in _imports(f))
    ]
    assert not bad, f"{module} imported outside dcsched.{owner}: {bad}"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("from dcsched.daemon import store\nimport textual.app\n")
    assert _imports(f) == ["dcsched.daemon", "textual.app"]
