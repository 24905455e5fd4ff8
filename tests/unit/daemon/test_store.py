from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from dcsched.daemon.lifecycle import Job, Part
from dcsched.daemon.sqldialect import pg_ddl, pg_sql
from dcsched.daemon.states import TRANSITIONS, JobState
from dcsched.daemon.store import (
    HEALTH_POLICY,
    AcctFilter,
    Batch,
    CommandRow,
    Deposed,
    NotFound,
    Store,
    StoreError,
    StoreRejected,
    _migrations,
)
from dcsched.protocol.config import ConfigError, DaemonConfig
from tests.unit.daemon.builders import make_job

S = JobState


def _new(**kw: Any) -> tuple[Job, str]:
    job = make_job(**{"nodes": 2, "gpus_per_node": 2, "time_limit_s": 60, "submit_ts": 100.0, **kw})
    return job, "submitted by alice"


async def test_each_transition_keeps_its_epoch_and_a_deposed_writer_is_refused(
    store_location: str,
) -> None:
    old, new = await Store.open(store_location), await Store.open(store_location)
    try:
        await old.set_kv("epoch", "5")
        old.epoch = 5
        (job,) = await old.add_jobs([_new()])
        await old.commit(Batch(history=[(job, 1.0, "HELD", "held by alice")]))
        # Another daemon takes over: a newer epoch in the store.
        await new.set_kv("epoch", "6")
        new.epoch = 6
        held = dataclasses.replace(await old.job(job), state="HELD")
        with pytest.raises(Deposed, match="epoch 6, this one's 5"):
            await old.commit(Batch(jobs=[held], history=[(job, 2.0, "HELD", "stale")]))
        assert old.lost.is_set() and "another dcd leads" in old.lost_leadership
        with pytest.raises(Deposed):
            await old.add_jobs([_new()])
        with pytest.raises(Deposed):  # and its leadership check says so
            await old.check_lead()
        assert (await new.job(job)).state == "PENDING"  # nothing of the refused write
        await new.commit(Batch(history=[(job, 3.0, "PENDING", "released")]))
        events = await new.job_events(job)
        assert [(e["detail"], e["epoch"]) for e in events] == [
            ("submitted by alice", 5),
            ("held by alice", 5),
            ("released", 6),
        ]
        await new.check_lead()
        assert not new.lost.is_set()
    finally:
        await old.close()
        await new.close()


async def test_jobs_survive_a_reopen(store_location: str) -> None:
    db = store_location
    s = await Store.open(db)
    a, b = await s.add_jobs([_new(), _new(state="HELD")])
    await s.close()
    s = await Store.open(db)  # migrations are not re-applied
    assert [(j.id, j.state) for j in await s.live_jobs()] == [(a, "PENDING"), (b, "HELD")]
    if not db.startswith("postgresql://"):
        assert Path(f"{db}-wal").exists()
    await s.close()


async def test_a_batch_is_one_transaction(store_location: str) -> None:
    s = await Store.open(store_location)
    (job_id,) = await s.add_jobs([_new()])
    job = (await s.live_jobs())[0]
    parts = (Part(0, "h0", (0, 1), "c0"), Part(1, "h1", (0, 1), "c1"))
    started = dataclasses.replace(job, state="STARTING", parts=parts, master_port=29500)
    cmds = [CommandRow(f"c{i}", f"h{i}", job_id, "launch", b"{}", 1.0) for i in range(2)]
    # A batch that fails half-way (a duplicate history id here) leaves nothing behind.
    bad = Batch(jobs=[started], parts_changed={job_id}, commands=cmds)
    bad.history = [(job_id, 1.0, "STARTING", "x"), (job_id, 1.0, "STARTING", None)]  # type: ignore[list-item]
    with pytest.raises(StoreRejected):  # bad data: not retried like a full disk
        await s.commit(bad)
    assert (await s.job(job_id)).state == "PENDING"
    assert await s.unacked_commands() == []
    ok = Batch(jobs=[started], parts_changed={job_id}, commands=cmds)
    ok.history = [(job_id, 1.0, "STARTING", "allocated h0, h1")]
    await s.commit(ok)
    got = await s.job(job_id)
    assert (got.state, got.master_port, got.parts) == ("STARTING", 29500, parts)
    assert [c.cmd_id for c in await s.unacked_commands()] == ["c0", "c1"]
    await s.commit(Batch(acks=[("c0", True, "", 2.0)]))
    assert [c.cmd_id for c in await s.unacked_commands()] == ["c1"]
    events = await s.job_events(job_id)
    assert [e["state"] for e in events] == ["PENDING", "STARTING"]
    await s.close()


async def test_finished_jobs_are_read_newest_first_with_a_limit(store_location: str) -> None:
    s = await Store.open(store_location)
    ids = await s.add_jobs([_new(state="PENDING") for _ in range(5)])
    jobs = {j.id: j for j in await s.live_jobs()}
    done = [dataclasses.replace(jobs[i], state="COMPLETED", end_ts=9.0) for i in ids[:4]]
    await s.commit(Batch(jobs=done))
    got = await s.finished_jobs({"COMPLETED", "PENDING"}, None, 3)
    assert [j.id for j in got] == list(reversed(ids[1:4]))
    assert await s.finished_jobs({"COMPLETED"}, "bob", 10) == []
    assert [j.id for j in await s.live_jobs()] == [ids[4]]
    assert (await s.count_by_state()) == {"COMPLETED": 4, "PENDING": 1}
    with pytest.raises(NotFound):
        await s.job(999)
    await s.close()


async def test_finished_jobs_in_a_window_of_end_times(store_location: str) -> None:
    s = await Store.open(store_location)
    ids = await s.add_jobs([_new(state="PENDING") for _ in range(4)])
    jobs = {j.id: j for j in await s.live_jobs()}
    done = [
        dataclasses.replace(jobs[i], state="FAILED", end_ts=float(t))
        for i, t in zip(ids, (10, 20, 30, 40), strict=True)
    ]
    await s.commit(Batch(jobs=done))
    window = await s.finished_jobs({"FAILED"}, None, 10, since=20.0, until=40.0)
    assert [j.id for j in window] == [ids[2], ids[1]]  # [since, until), newest first
    assert len(await s.finished_jobs({"FAILED"}, None, 10, since=35.0)) == 1
    assert len(await s.finished_jobs({"FAILED"}, None, 10, until=10.0)) == 0
    await s.close()


def test_terminal_states_have_no_way_out() -> None:
    for state in (S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMEOUT, S.NODE_FAIL):
        assert state not in TRANSITIONS


async def test_restarts_and_array_fields_are_journaled(store_location: str) -> None:
    db = store_location
    s = await Store.open(db)
    (job_id,) = await s.add_jobs([_new(array_job_id=5, array_task_id=3)])
    job = await s.job(job_id)
    await s.commit(Batch(jobs=[dataclasses.replace(job, restart_count=2, signal_ts=7.5)]))
    await s.close()
    s = await Store.open(db)
    again = await s.job(job_id)
    assert (again.restart_count, again.signal_ts) == (2, 7.5)
    assert (again.array_job_id, again.array_task_id) == (5, 3)
    await s.close()


async def test_attained_service_is_journaled(store_location: str) -> None:
    s = await Store.open(store_location)
    (job_id,) = await s.add_jobs([_new()])
    job = await s.job(job_id)
    await s.commit(Batch(jobs=[dataclasses.replace(job, restart_count=1, attained_s=12.5)]))
    await s.close()
    s = await Store.open(store_location)
    assert (await s.job(job_id)).attained_s == 12.5
    await s.close()


async def test_the_attained_migration_counts_earlier_runs_from_the_history(
    store_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store from before 0009: each run that went back to the queue counts, from its
    allocation (STARTING) to its return (REQUEUED after COMPLETING); other REQUEUED
    entries (an update of a requeued job) and the current run do not."""
    import dcsched.daemon.store as store_mod

    every = _migrations()
    monkeypatch.setattr(store_mod, "_migrations", lambda: [m for m in every if m[0] < 9])
    s = await Store.open(store_location)
    history = [
        ("PENDING", 100.0, "submitted"),
        ("STARTING", 110.0, "allocated a"),
        ("RUNNING", 111.0, "torchrun started"),
        ("COMPLETING", 150.0, "preempted for job 9"),
        ("REQUEUED", 160.0, "all nodes exited; back in the queue"),  # 50 s
        ("REQUEUED", 170.0, "updated by bob: nice 0 -> 5"),
        ("STARTING", 200.0, "allocated b"),
        ("RUNNING", 201.0, "torchrun started"),
        ("COMPLETING", 220.0, "requeued by bob"),
        ("REQUEUED", 230.0, "all nodes exited; back in the queue"),  # 30 s
        ("STARTING", 300.0, "allocated a"),
        ("RUNNING", 301.0, "torchrun started"),  # now: not counted
    ]

    def old_rows(db: Any) -> None:
        for restarts in (2, 0):
            job_id = db.insert(
                'INSERT INTO jobs (name, "user", uid, account, qos, state, spec, nodes,'
                " gpus_per_node, time_limit_s, submit_ts, restart_count)"
                " VALUES ('j', 'alice', 1000, 'a', 'normal', 'RUNNING', '{}', 1, 1, 60, 100.0, ?)",
                (restarts,),
            )
            db.executemany(
                "INSERT INTO job_events (job_id, ts, state, detail) VALUES (?,?,?,?)",
                [(job_id, ts, state, why) for state, ts, why in history if restarts],
            )

    await s._run(old_rows)
    await s.close()
    monkeypatch.setattr(store_mod, "_migrations", lambda: every)
    s = await Store.open(store_location)
    jobs = await s.live_jobs()
    assert [(j.restart_count, j.attained_s) for j in jobs] == [(2, 80.0), (0, 0.0)]
    await s.close()


async def test_commands_nodes_kv_and_samples_read_back_alike(store_location: str) -> None:
    s = await Store.open(store_location)
    try:
        (job_id,) = await s.add_jobs([_new()])
        cmd = CommandRow("c1", "h1", job_id, "launch", b"\x00\xffbytes", 5.0)
        await s.commit(Batch(commands=[cmd]))
        await s.commit(Batch(commands=[dataclasses.replace(cmd, payload=b"other")]))  # a retry
        assert await s.unacked_commands() == [cmd]
        await s.upsert_node("h1", True, {"gpus": [1]}, 1.0)
        await s.upsert_node("h1", False, {"gpus": []}, 2.0)
        (node,) = await s.nodes()
        assert (node.online, node.status, node.updated_ts) == (False, {"gpus": []}, 2.0)
        assert await s.get_kv("epoch") is None
        await s.set_kv("epoch", "1")
        await s.set_kv("epoch", "2")
        assert await s.get_kv("epoch") == "2"
        big = (1 << 40) + 1  # bytes of GPU memory: past 32 bits
        await s.add_gpu_samples([("h1", 0, 1_700_000_000.25, 50.0, big, 300.0, 60.0)], 0.0)
        ids = await s.add_array([_new(array_task_id=i)[0] for i in range(3)], "array")
        assert await s.array_tasks(ids[0]) == {0: ids[0], 1: ids[1], 2: ids[2]}
        assert await s.job_states([job_id, ids[2], 999]) == {job_id: "PENDING", ids[2]: "PENDING"}
    finally:
        await s.close()


async def test_bad_data_is_refused_not_retried(store_location: str) -> None:
    s = await Store.open(store_location)
    try:
        with pytest.raises(StoreRejected):
            await s.add_jobs([_new(uid=1 << 64)])  # past a 64-bit integer
        (job_id,) = await s.add_jobs([_new()])
        job = await s.job(job_id)
        # A NUL from an agent costs nothing (PostgreSQL's text cannot hold it: U+FFFD).
        await s.commit(Batch(jobs=[dataclasses.replace(job, reason="bad\x00byte")]))
        assert (await s.job(job_id)).reason in ("bad\x00byte", "bad\ufffdbyte")
        assert s.write_error == ""
    finally:
        await s.close()


def test_the_store_is_sqlite_in_state_dir_unless_a_postgresql_url_is_given() -> None:
    assert DaemonConfig(state_dir="/var/x").store_location() == "/var/x/dcsched.db"
    url = "postgresql://dcd@db/dcsched"
    assert DaemonConfig(store=url).store_location() == url
    with pytest.raises(ConfigError, match="expected a PostgreSQL URL"):
        DaemonConfig(store="mysql://db/x").store_location()


def test_postgresql_runs_the_same_migrations_in_64_bit_types() -> None:
    ddl = pg_ddl(dict(_migrations())[1])
    words = " ".join(ddl.split())
    assert "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY" in words
    assert "submit_ts DOUBLE PRECISION NOT NULL" in words
    assert "payload BYTEA" in words and "INTEGER" not in words and " REAL " not in words
    assert pg_sql("SELECT * FROM t WHERE a = ? AND b LIKE '5%'") == (
        "SELECT * FROM t WHERE a = %s AND b LIKE '5%%'"
    )


async def _terminate_others(postgres_url: str) -> None:
    import psycopg

    def run() -> None:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

    await asyncio.to_thread(run)


async def test_a_lost_postgresql_connection_is_a_store_error_then_reconnects(
    postgres_url: str,
) -> None:
    s = await Store.open(postgres_url)
    try:
        (job_id,) = await s.add_jobs([_new()])
        await _terminate_others(postgres_url)  # as a server restart or failover does
        with pytest.raises(StoreError) as info:
            await s.set_kv("k", "v")
        assert not isinstance(info.value, NotFound)
        assert s.write_error  # /v1/health says so
        await s.probe()  # the next call connects again
        assert s.write_error == ""
        assert (await s.job(job_id)).state == "PENDING"
    finally:
        await s.close()


async def test_daemons_starting_together_migrate_once(postgres_url: str) -> None:
    stores = await asyncio.gather(*(Store.open(postgres_url) for _ in range(3)))
    try:
        await stores[0].add_jobs([_new()])
        assert len(await stores[2].live_jobs()) == 1
    finally:
        for s in stores:
            await s.close()


async def test_an_unreachable_postgresql_is_a_store_error_without_the_password() -> None:
    from tests.conftest import free_port

    url = f"postgresql://dcd:s3cret@127.0.0.1:{free_port()}/dcsched?connect_timeout=2"
    with pytest.raises(StoreError) as info:
        await Store.open(url)
    assert "127.0.0.1" in str(info.value) and "s3cret" not in str(info.value)


async def test_one_store_leads_and_a_lost_connection_loses_the_lead_for_good(
    postgres_url: str,
) -> None:
    first, second = await Store.open(postgres_url), await Store.open(postgres_url)
    try:
        assert first.shared and await first.try_lead()
        assert await first.try_lead()  # held already: still True
        assert not await second.try_lead()
        assert (await second.leader()).startswith("dcd@")
        await _terminate_others(postgres_url)  # both lose their connections
        with pytest.raises(StoreError):
            await first.check_lead()
        assert first.lost.is_set() and "leader lock was lost" in first.lost_leadership
        with pytest.raises(StoreError):
            await first.set_kv("k", "v")  # never on a new connection: another may lead
        leads = []  # a standby (not leading) connects again (its first call may still fail)
        for _ in range(3):
            with contextlib.suppress(StoreError):
                leads.append(await second.try_lead())
        assert leads and all(leads)
        assert not second.lost.is_set()
    finally:
        await first.close()
        await second.close()


async def test_sqlite_always_leads(tmp_path: Path) -> None:
    s = await Store.open(str(tmp_path / "s.db"))
    try:
        assert not s.shared and await s.try_lead() and await s.leader() == ""
    finally:
        await s.close()


async def test_accounting_node_events_and_health_drains_on_either_engine(
    store_location: str,
) -> None:
    s = await Store.open(store_location)
    a, b = await s.add_jobs([_new(), _new(user="bob", account="b")])
    await s.upsert_node("h1", True, {"host": "h1"}, 1.0)

    def row(job_id: int, user: str, account: str, hours: float) -> dict[str, Any]:
        return {
            "job_id": job_id, "user": user, "account": account, "qos": "normal",
            "state": "COMPLETED", "submit_ts": 100.0, "end_ts": 200.0 + job_id,
            "gpu_hours": hours, "energy_kwh": 0.5, "mean_util": 50.0,
        }  # fmt: skip

    await s.commit(Batch(accounting=[row(a, "alice", "a", 2.0)], drains=[("h1", "xid 79", 5.0)]))
    # written again (a repeated final step): the row is replaced, not doubled
    await s.commit(Batch(accounting=[row(a, "alice", "a", 3.0), row(b, "bob", "b", 1.0)]))
    rows, totals = await s.accounting(AcctFilter(user="alice"), 10)
    assert [(r["job_id"], r["gpu_hours"]) for r in rows] == [(a, 3.0)]
    assert [(t["account"], t["jobs"], t["gpu_hours"]) for t in totals] == [("a", 1, 3.0)]
    assert (await s.accounting_row(b) or {})["user"] == "bob"
    history = await s.drain_history("h1")
    assert [(h["user"], h["drained"], h["reason"]) for h in history] == [
        (HEALTH_POLICY, 1, "xid 79")
    ]
    await s.add_node_event("h1", 6.0, "fault", "xid 79 on GPU 0")
    assert await s.node_events("h1") == [  # the drain from the drain history, then the fault
        {"ts": 5.0, "kind": "drain", "detail": "xid 79"},
        {"ts": 6.0, "kind": "fault", "detail": "xid 79 on GPU 0"},
    ]
    await s.close()
