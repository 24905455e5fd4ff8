"""Fixtures for the agent's unit tests: a fake torchrun and a config in a temporary folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dcsched.protocol.config import AgentConfig, Config


@pytest.fixture
def fake_torchrun(tmp_path: Path) -> str:
    """Drops the ten torchrun option words the launcher puts first and execs the command."""
    path = tmp_path / "torchrun"
    path.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "args = sys.argv[1:]\n"
        "if args and args[0] == '--no-python':\n"
        "    args = args[1:]  # like torchrun's: the command runs as it is\n"
        "with open(os.environ['FAKE_TORCHRUN_ARGS'], 'w') as f:\n"
        "    f.write('\\n'.join(args[:10]))\n"
        "os.execvp(args[10], args[10:])\n"
    )
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def agent_config(tmp_path: Path, fake_torchrun: str) -> Config:
    return Config(
        agent=AgentConfig(
            host="unit",
            backend="sim",
            sim_gpus=4,
            state_dir=str(tmp_path / "state"),
            torchrun=fake_torchrun,
            interval_s=0.2,
        )
    )
