"""Builders shared by the agent's unit tests."""

from __future__ import annotations

import sys
from pathlib import Path

from dcsched.protocol.messages import Launch


def launch(tmp_path: Path, command: list[str], **kw: object) -> Launch:
    base: dict[str, object] = dict(
        cmd_id="c1",
        job_id="j1",
        node_rank=0,
        nnodes=1,
        nproc_per_node=1,
        master_addr="127.0.0.1",
        master_port=29500,
        gpus=[0, 1],
        command=command,
        workdir=str(tmp_path),
        env={"FAKE_TORCHRUN_ARGS": str(tmp_path / "torchrun.args")},
    )
    base.update(kw)
    return Launch(**base)  # type: ignore[arg-type]


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]
