"""The distribution's promises: an agent-only install stays light; every tool is a script."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}


def test_an_agent_install_pulls_neither_the_daemon_nor_the_tui() -> None:
    agent = _names(PROJECT["dependencies"]) | _names(PROJECT["optional-dependencies"]["agent"])
    assert {"aiomqtt", "msgspec", "nvidia-ml-py"} <= agent
    assert not agent & {"textual", "aiohttp", "aiosqlite", "amqtt"}


def test_dependencies_have_version_ranges() -> None:
    reqs = PROJECT["dependencies"] + [
        r
        for extra in PROJECT["optional-dependencies"].values()
        for r in extra
        if not r.startswith("dcsched[")
    ]
    assert all(re.search(r"[<>=~]", r) for r in reqs), reqs
    assert "aiomqtt>=2.5,<3" in PROJECT["dependencies"]


def test_console_scripts() -> None:
    scripts = PROJECT["scripts"]
    assert {"dcd", "dc-agent", "dcsub", "dcctl", "dcsim", "dctop"} <= set(scripts)
    assert scripts["dc-agent"].startswith("dcsched.agents.")
    assert scripts["dcd"].startswith("dcsched.daemon.")
