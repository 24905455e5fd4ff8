from __future__ import annotations

from pathlib import Path

import pytest

from dcsched.agents import state as state_mod
from dcsched.agents.errors import StateError
from dcsched.agents.logs import MAX_CHUNK, read_chunk
from dcsched.agents.state import CommandResult, JobRecord, StateStore
from dcsched.protocol.messages import FetchLog, GpuFault, JobExited, JobStarted


def test_state_round_trips_with_events_in_order(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    rec = JobRecord(
        job_id="j",
        node_rank=1,
        pid=10,
        pgid=9,
        starttime=5,
        child_pid=11,
        tag="t",
        log_path="l",
        status_file="s",
        gpus=[0],
        cmd_ids=["c"],
    )
    store.state.jobs[rec.key] = rec
    store.state.outbox += [
        JobStarted(host="h", job_id="j", node_rank=1, pid=11, ts=1.0),
        GpuFault(host="h", gpu_index=0, ts=2.0, kind="xid", code=79),
        JobExited(host="h", job_id="j", node_rank=1, ts=3.0, exit_code=0),
    ]
    store.remember_command(CommandResult(cmd_id="c", job_id="j", ok=False, error="no"))
    store.save()
    again = StateStore(tmp_path)
    st = again.load()
    assert st.jobs == {"j#1": rec}
    assert [type(e).__name__ for e in st.outbox] == ["JobStarted", "GpuFault", "JobExited"]
    assert again.command("c") == CommandResult(cmd_id="c", job_id="j", ok=False, error="no")
    assert not list(tmp_path.glob(".*tmp"))  # written through a temporary file and renamed


def test_remembered_commands_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_mod, "MAX_COMMANDS", 3)
    store = StateStore(tmp_path)
    for i in range(5):
        store.remember_command(CommandResult(cmd_id=f"c{i}", job_id="j", ok=True))
    assert store.command("c0") is None and store.command("c1") is None
    assert store.command("c4") is not None and len(store.state.commands) == 3


def test_last_exits_per_rank(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    for rank, code in [(0, 1), (1, 0), (0, 2)]:
        store.remember_exit(JobExited(host="h", job_id="j", node_rank=rank, ts=0, exit_code=code))
    assert [(e.node_rank, e.exit_code) for e in store.last_exits("j")] == [(0, 2), (1, 0)]
    assert store.last_exits("other") == []


def test_corrupt_state_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "jobs.json").write_text("{not json")
    store = StateStore(tmp_path)
    with pytest.raises(StateError, match="corrupt"):
        store.load()
    assert (tmp_path / "jobs.corrupt").exists() and not (tmp_path / "jobs.json").exists()
    assert store.load().jobs == {}


def _fetch(offset: int = -1, max_bytes: int = 10) -> FetchLog:
    return FetchLog(cmd_id="c", job_id="j", node_rank=0, offset=offset, max_bytes=max_bytes)


def test_log_tail_offset_and_missing(tmp_path: Path) -> None:
    log = tmp_path / "node0.log"
    log.write_bytes(b"0123456789abcdef\xff\n")
    tail = read_chunk("h", _fetch(-1, 5), str(log))
    assert (tail.offset, tail.size, tail.data) == (13, 18, "def\ufffd\n")
    mid = read_chunk("h", _fetch(2, 4), str(log))
    assert (mid.offset, mid.data) == (2, "2345")
    past = read_chunk("h", _fetch(100, 4), str(log))
    assert (past.offset, past.data, past.error) == (18, "", "")
    missing = read_chunk("h", _fetch(), str(tmp_path / "nope.log"))
    assert "no log for job j node 0 on h" in missing.error


def test_log_chunk_is_capped(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_bytes(b"x" * (MAX_CHUNK + 100))
    chunk = read_chunk("h", _fetch(0, 10 * MAX_CHUNK), str(log))
    assert len(chunk.data) == MAX_CHUNK
