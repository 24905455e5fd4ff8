"""The only module that writes SQL. SQLite in WAL mode; one transaction per state change."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import aiosqlite

from dcsched.daemon.states import TERMINAL, JobState, check_transition

log = logging.getLogger("dcsched.store")


class StoreError(Exception):
    pass


class NotFound(StoreError):
    pass


@dataclass(slots=True)
class Job:
    id: int
    name: str
    user: str
    uid: int
    account: str
    qos: str
    nice: int
    state: str
    reason: str
    spec: dict[str, Any]
    nodes: int
    gpus_per_node: int
    gpu_type: str | None
    time_limit_s: int
    submit_ts: float
    start_ts: float | None
    end_ts: float | None
    exit_code: int | None
    signal: int | None
    master_addr: str | None
    master_port: int | None
    ending: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class JobNode:
    job_id: int
    node_rank: int
    host: str
    gpus: list[int]
    state: str
    pid: int | None
    exit_code: int | None
    signal: int | None
    reason: str
    log_path: str
    started_ts: float | None
    exited_ts: float | None
    launch_id: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class PendingCommand:
    cmd_id: str
    host: str
    job_id: int
    kind: str
    payload: bytes
    attempts: int


@dataclass(slots=True)
class NodeRow:
    host: str
    online: bool
    drained: bool
    drain_reason: str
    status: dict[str, Any]
    updated_ts: float


def _migrations() -> list[tuple[int, str]]:
    files = resources.files("dcsched.daemon").joinpath("sql")
    out = []
    for f in files.iterdir():
        if f.name.endswith(".sql"):
            out.append((int(f.name.split("_", 1)[0]), f.read_text()))
    return sorted(out)


def _job(row: sqlite3.Row) -> Job:
    d = dict(row)
    d["spec"] = json.loads(d["spec"])
    return Job(**d)


def _node_part(row: sqlite3.Row) -> JobNode:
    d = dict(row)
    d["gpus"] = json.loads(d["gpus"])
    return JobNode(**d)


class Store:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str) -> Store:
        db = await aiosqlite.connect(path, isolation_level=None)
        db.row_factory = sqlite3.Row
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.execute("PRAGMA busy_timeout=5000")
        store = cls(db)
        await store._migrate()
        return store

    async def close(self) -> None:
        await self._db.close()

    async def _migrate(self) -> None:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        for version, sql in _migrations():
            if version <= current:
                continue
            log.info("applying schema migration %04d", version)
            await self._db.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version={version};\nCOMMIT;"
            )

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        # One connection serves every task: the lock keeps their transactions apart.
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise

    async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._db.execute(sql, args) as cur:
            return list(await cur.fetchall())

    # --- jobs ------------------------------------------------------------------------------

    async def add_job(
        self,
        *,
        name: str,
        user: str,
        uid: int,
        account: str,
        qos: str,
        nice: int,
        spec: dict[str, Any],
        nodes: int,
        gpus_per_node: int,
        gpu_type: str | None,
        time_limit_s: int,
        now: float,
        held: bool,
    ) -> int:
        state = JobState.HELD if held else JobState.PENDING
        async with self._tx() as db:
            cur = await db.execute(
                "INSERT INTO jobs (name, user, uid, account, qos, nice, state, spec, nodes,"
                " gpus_per_node, gpu_type, time_limit_s, submit_ts)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    name,
                    user,
                    uid,
                    account,
                    qos,
                    nice,
                    state,
                    json.dumps(spec),
                    nodes,
                    gpus_per_node,
                    gpu_type,
                    time_limit_s,
                    now,
                ),
            )
            job_id = int(cur.lastrowid or 0)
            await db.execute(
                "INSERT INTO job_events (job_id, ts, state, detail) VALUES (?,?,?,?)",
                (job_id, now, state, f"submitted by {user}"),
            )
        return job_id

    async def job(self, job_id: int) -> Job:
        rows = await self._all("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFound(f"no job {job_id}")
        return _job(rows[0])

    async def jobs(
        self, states: Iterable[str] | None = None, user: str | None = None, limit: int | None = None
    ) -> list[Job]:
        sql, args = "SELECT * FROM jobs WHERE 1=1", list[Any]()
        if states is not None:
            st = list(states)
            sql += f" AND state IN ({','.join('?' * len(st))})"
            args += st
        if user:
            sql += " AND user = ?"
            args.append(user)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [_job(r) for r in await self._all(sql, args)]

    async def job_nodes(
        self,
        job_id: int | None = None,
        states: Iterable[str] | None = None,
    ) -> list[JobNode]:
        sql, args = "SELECT * FROM job_nodes WHERE 1=1", list[Any]()
        if job_id is not None:
            sql += " AND job_id = ?"
            args.append(job_id)
        if states is not None:
            st = list(states)
            sql += f" AND state IN ({','.join('?' * len(st))})"
            args += st
        sql += " ORDER BY job_id, node_rank"
        return [_node_part(r) for r in await self._all(sql, args)]

    async def job_events(self, job_id: int) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT ts, state, detail FROM job_events WHERE job_id = ? ORDER BY id", (job_id,)
        )
        return [dict(r) for r in rows]

    async def _set_state(
        self, db: aiosqlite.Connection, job: Job, new: str, now: float, detail: str, **fields: Any
    ) -> None:
        check_transition(job.id, job.state, new)
        cols = {"state": new, **fields}
        if new in TERMINAL:
            cols.setdefault("end_ts", now)
        sets = ", ".join(f"{k} = ?" for k in cols)
        await db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*cols.values(), job.id))
        await db.execute(
            "INSERT INTO job_events (job_id, ts, state, detail) VALUES (?,?,?,?)",
            (job.id, now, new, detail),
        )

    async def transition(
        self, job_id: int, new: str, now: float, detail: str = "", **fields: Any
    ) -> Job:
        async with self._tx() as db:
            job = await self.job(job_id)
            await self._set_state(db, job, new, now, detail, **fields)
        return await self.job(job_id)

    async def update_job(self, job_id: int, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        async with self._tx() as db:
            await db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    async def start_job(
        self,
        job_id: int,
        parts: Sequence[tuple[str, list[int], str]],
        master_addr: str,
        master_port: int,
        now: float,
        commands: Sequence[tuple[str, str, str, bytes]],
    ) -> None:
        """Allocation, STARTING and the launch commands in one transaction.

        `parts` are (host, GPUs, launch cmd_id) in node-rank order."""
        async with self._tx() as db:
            job = await self.job(job_id)
            if job.state not in (JobState.PENDING, JobState.REQUEUED):
                raise StoreError(f"job {job_id} is {job.state}, not startable")
            hosts = ", ".join(p[0] for p in parts)
            await self._set_state(
                db,
                job,
                JobState.STARTING,
                now,
                f"allocated {hosts}",
                start_ts=now,
                master_addr=master_addr,
                master_port=master_port,
                reason="",
                ending="",
            )
            await db.execute("DELETE FROM job_nodes WHERE job_id = ?", (job_id,))
            await db.executemany(
                "INSERT INTO job_nodes (job_id, node_rank, host, gpus, launch_id)"
                " VALUES (?,?,?,?,?)",
                [
                    (job_id, rank, host, json.dumps(gpus), launch_id)
                    for rank, (host, gpus, launch_id) in enumerate(parts)
                ],
            )
            await self._add_commands(db, job_id, commands, now)

    # An event names the Launch that began its run; one from an earlier run of a requeued
    # job matches no row and changes nothing. An event without a launch id matches any run.
    _THIS_RUN = "(? = '' OR launch_id = '' OR launch_id = ?)"

    async def node_started(
        self, job_id: int, rank: int, launch_id: str, pid: int, log_path: str, now: float
    ) -> None:
        async with self._tx() as db:
            await db.execute(
                "UPDATE job_nodes SET state = 'running', pid = ?, log_path = ?, started_ts = ?"
                f" WHERE job_id = ? AND node_rank = ? AND state = 'launching' AND {self._THIS_RUN}",
                (pid, log_path, now, job_id, rank, launch_id, launch_id),
            )

    async def node_exited(
        self,
        job_id: int,
        rank: int,
        exit_code: int | None,
        signal: int | None,
        reason: str,
        now: float,
        launch_id: str = "",
    ) -> bool:
        """Records one node's end; False when it was already recorded (a repeated event)."""
        async with self._tx() as db:
            cur = await db.execute(
                "UPDATE job_nodes SET state = 'exited', exit_code = ?, signal = ?, reason = ?,"
                " exited_ts = ? WHERE job_id = ? AND node_rank = ? AND state != 'exited'"
                f" AND {self._THIS_RUN}",
                (exit_code, signal, reason, now, job_id, rank, launch_id, launch_id),
            )
            return cur.rowcount > 0

    async def update_reasons(self, reasons: Sequence[tuple[int, str]]) -> None:
        """The main pending reason of many jobs, in one transaction."""
        async with self._tx() as db:
            await db.executemany(
                "UPDATE jobs SET reason = ? WHERE id = ?", [(r, i) for i, r in reasons]
            )

    # --- commands --------------------------------------------------------------------------

    @staticmethod
    async def _add_commands(
        db: aiosqlite.Connection,
        job_id: int,
        commands: Sequence[tuple[str, str, str, bytes]],
        now: float,
    ) -> None:
        await db.executemany(
            "INSERT INTO commands (cmd_id, host, job_id, kind, payload, created_ts)"
            " VALUES (?,?,?,?,?,?)",
            [(cid, host, job_id, kind, payload, now) for cid, host, kind, payload in commands],
        )

    async def add_commands(
        self, job_id: int, commands: Sequence[tuple[str, str, str, bytes]], now: float
    ) -> None:
        async with self._tx() as db:
            await self._add_commands(db, job_id, commands, now)

    async def unacked_commands(self) -> list[PendingCommand]:
        rows = await self._all(
            "SELECT cmd_id, host, job_id, kind, payload, attempts FROM commands"
            " WHERE acked_ts IS NULL ORDER BY created_ts"
        )
        return [PendingCommand(**dict(r)) for r in rows]

    async def command_sent(self, cmd_id: str) -> None:
        async with self._tx() as db:
            await db.execute(
                "UPDATE commands SET attempts = attempts + 1 WHERE cmd_id = ?", (cmd_id,)
            )

    async def ack_command(self, cmd_id: str, ok: bool, error: str, now: float) -> str | None:
        """Records the first ack of a command; returns its kind, or None for a repeat."""
        async with self._tx() as db:
            cur = await db.execute(
                "UPDATE commands SET acked_ts = ?, ok = ?, error = ? WHERE cmd_id = ?"
                " AND acked_ts IS NULL",
                (now, int(ok), error, cmd_id),
            )
            if cur.rowcount == 0:
                return None
            async with db.execute("SELECT kind FROM commands WHERE cmd_id = ?", (cmd_id,)) as c:
                row = await c.fetchone()
            return str(row[0]) if row else None

    async def drop_commands(self, job_id: int, kind: str, now: float) -> None:
        """Stops retrying a job's unacknowledged commands of one kind (launch after a cancel)."""
        async with self._tx() as db:
            await db.execute(
                "UPDATE commands SET acked_ts = ?, ok = 0, error = 'superseded' WHERE job_id = ?"
                " AND kind = ? AND acked_ts IS NULL",
                (now, job_id, kind),
            )

    # --- nodes -----------------------------------------------------------------------------

    async def upsert_node(
        self, host: str, online: bool, status: dict[str, Any], now: float
    ) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO nodes (host, online, status, updated_ts) VALUES (?,?,?,?)"
                " ON CONFLICT(host) DO UPDATE SET online = excluded.online,"
                " status = excluded.status, updated_ts = excluded.updated_ts",
                (host, int(online), json.dumps(status), now),
            )

    async def set_drain(self, host: str, drained: bool, reason: str) -> None:
        async with self._tx() as db:
            cur = await db.execute(
                "UPDATE nodes SET drained = ?, drain_reason = ? WHERE host = ?",
                (int(drained), reason if drained else "", host),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no node {host!r}")

    async def nodes(self) -> list[NodeRow]:
        rows = await self._all("SELECT * FROM nodes ORDER BY host")
        return [
            NodeRow(
                r["host"],
                bool(r["online"]),
                bool(r["drained"]),
                r["drain_reason"],
                json.loads(r["status"]),
                r["updated_ts"],
            )
            for r in rows
        ]

    # --- telemetry and key/value -----------------------------------------------------------

    async def add_gpu_samples(
        self,
        rows: Sequence[
            tuple[str, int, float, float | None, int | None, float | None, float | None]
        ],
        keep_since: float,
    ) -> None:
        async with self._tx() as db:
            await db.executemany("INSERT INTO gpu_samples VALUES (?,?,?,?,?,?,?)", rows)
            await db.execute("DELETE FROM gpu_samples WHERE ts < ?", (keep_since,))

    async def get_kv(self, key: str) -> str | None:
        rows = await self._all("SELECT value FROM kv WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    async def set_kv(self, key: str, value: str) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key)"
                " DO UPDATE SET value = excluded.value",
                (key, value),
            )

    async def count_by_state(self) -> dict[str, int]:
        rows = await self._all("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {r[0]: int(r[1]) for r in rows}

    async def jobs_ended_since(self, ts: float) -> list[Job]:
        rows = await self._all(
            "SELECT * FROM jobs WHERE end_ts > ? AND start_ts IS NOT NULL", (ts,)
        )
        return [_job(r) for r in rows]

    async def job_states(self, ids: Iterable[int]) -> dict[int, str]:
        wanted = list(ids)
        if not wanted:
            return {}
        rows = await self._all(
            f"SELECT id, state FROM jobs WHERE id IN ({','.join('?' * len(wanted))})", wanted
        )
        return {int(r[0]): str(r[1]) for r in rows}
