"""The audit log and the drain history in the store, and the background writer of refusals."""

from __future__ import annotations

import asyncio

from dcsched.daemon.audit import MAX_PENDING, AuditLog
from dcsched.daemon.privacy import public_view
from dcsched.daemon.store import AuditRow, Batch, Store, StoreError
from tests.unit.daemon.test_store import _new


def _row(user: str = "alice", ts: float = 1.0, result: str = "refused") -> AuditRow:
    return AuditRow(ts, 1000, user, "cancel", "job 1", result, 403, "not yours")


async def test_a_submission_and_its_audit_row_are_one_transaction(store_location: str) -> None:
    s = await Store.open(store_location)
    try:
        (job_id,) = await s.add_jobs([_new()], audited=True)
        await s.add_jobs([_new()])  # not an API call: no row
        (entry,) = await s.audit(None, None, 10)
        assert entry["action"] == "submit"
        assert (entry["user"], entry["target"], entry["result"]) == ("alice", f"job {job_id}", "ok")
    finally:
        await s.close()


async def test_batch_audit_rows_and_reads_by_user_since_and_page(store_location: str) -> None:
    s = await Store.open(store_location)
    try:
        await s.commit(Batch(audit=[_row("alice", 1.0), _row("bob", 2.0), _row("alice", 3.0)]))
        assert [e["ts"] for e in await s.audit(None, None, 10)] == [3.0, 2.0, 1.0]
        assert [e["ts"] for e in await s.audit("alice", None, 10)] == [3.0, 1.0]
        assert [e["ts"] for e in await s.audit(None, 2.0, 10)] == [3.0, 2.0]
        newest = (await s.audit(None, None, 1))[0]
        assert [e["ts"] for e in await s.audit(None, None, 10, before=newest["id"])] == [2.0, 1.0]
    finally:
        await s.close()


async def test_drains_and_resumes_keep_a_history(store_location: str) -> None:
    s = await Store.open(store_location)
    try:
        await s.upsert_node("n1", True, {}, 1.0)
        drain = AuditRow(10.0, 0, "root", "drain", "node n1", "ok", 200, "bad fan")
        await s.set_drain("n1", True, "bad fan", "root", drain)
        await s.set_drain("n1", False, "fan replaced", "admin1")
        (node,) = await s.nodes()
        assert (node.drained, node.drain_reason) == (False, "")
        hist = await s.drain_history("n1")
        assert [(h["user"], h["drained"], h["reason"]) for h in hist] == [
            ("root", True, "bad fan"),
            ("admin1", False, "fan replaced"),
        ]
        assert [e["action"] for e in await s.audit(None, None, 10)] == ["drain"]
    finally:
        await s.close()


class _BrokenStore:
    """A store whose disk is full until `heal()`: the one piece this test fakes."""

    def __init__(self) -> None:
        self.broken = True
        self.rows: list[AuditRow] = []

    async def add_audit(self, rows: list[AuditRow]) -> None:
        if self.broken:
            raise StoreError("database or disk is full")
        self.rows += rows


async def test_refusals_wait_for_a_store_that_cannot_be_written() -> None:
    store = _BrokenStore()
    log = AuditLog(store)  # type: ignore[arg-type]
    log.record(_row(ts=1.0))
    log.record(_row(ts=2.0))
    await asyncio.sleep(0.05)
    assert store.rows == [] and len(log.pending) == 2  # kept, not lost
    store.broken = False
    log.record(_row(ts=3.0))
    await asyncio.sleep(0.05)
    assert [r.ts for r in store.rows] == [1.0, 2.0, 3.0]
    assert log.pending == []


async def test_the_queue_of_unwritten_rows_is_bounded() -> None:
    store = _BrokenStore()
    log = AuditLog(store)  # type: ignore[arg-type]
    for i in range(MAX_PENDING + 5):
        log.record(_row(ts=float(i)))
    await log.flush()
    assert len(log.pending) == MAX_PENDING and log.dropped == 5
    assert log.pending[0].ts == 5.0  # the oldest went first


def test_others_see_a_job_without_its_command_env_and_workdir() -> None:
    view = {
        "id": 1,
        "user": "alice",
        "spec": {
            "name": "j",
            "command": ["train.py", "--token=s3cret"],
            "env": {"WANDB_API_KEY": "k"},
            "workdir": "/home/alice",
            "torchrun": {"python": "/home/alice/venv/bin/python"},
            "resources": {"nodes": 1},
        },
    }
    out = public_view(view)
    assert out["spec"] == {"name": "j", "resources": {"nodes": 1}}
    assert out["hidden"] == ["command", "env", "torchrun", "workdir"]
    assert "s3cret" not in repr(out) and view["spec"]["env"]  # the original is untouched
