"""The journal: the only module that writes SQL. SQLite in WAL mode (the embedded default)
or PostgreSQL (`[daemon] store = "postgresql://..."`), on one connection that lives in one
thread; every call is one transaction run there, so the event loop never waits on the disk
and a batch of changes costs one hop and one commit. The SQL here is written once for both
engines; how they differ is in `sqldialect.py`.

The daemon's live state is in memory (`model.py`); the store is what survives a restart
and where finished jobs are read from (by id, or newest first with a limit).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar

from dcsched.daemon.lifecycle import Job, Part
from dcsched.daemon.sqldialect import Backend, one_line, open_backend
from dcsched.daemon.states import TERMINAL, JobState

HEALTH_POLICY = "health policy"  # who drained a node that failed a check ([daemon] drain_on)
log = logging.getLogger("dcsched.store")
T = TypeVar("T")

_JOB_COLS = [f.name for f in dataclasses.fields(Job) if f.name != "parts"]
_PART_COLS = [
    "job_id",
    "node_rank",
    "host",
    "gpus",
    "state",
    "pid",
    "exit_code",
    "signal",
    "reason",
    "log_path",
    "started_ts",
    "exited_ts",
    "launch_id",
]


class StoreError(Exception):
    """The store cannot be read or written (disk full, read-only, I/O error, the database
    server unreachable or restarting)."""


class NotFound(StoreError):
    pass


class Deposed(StoreError):
    """The store's epoch is newer than this writer's: another daemon took over, and this
    one may not write again (nor send: it stops)."""


class StoreRejected(Exception):
    """The engine refused the data itself (a constraint, an integer too large): retrying the
    same write cannot help, so this is not a StoreError (which is retried until the disk
    takes it) but a bug or a bad message to log and drop."""


@dataclass(slots=True)
class CommandRow:
    cmd_id: str
    host: str
    job_id: int
    kind: str
    payload: bytes  # the unsigned command; signed afresh on each send
    created_ts: float


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One line of the audit log: who did what, when, and what came of it."""

    ts: float
    uid: int
    user: str
    action: str
    target: str
    result: str  # ok | refused | failed
    status: int  # the HTTP status answered
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _cols(names: Iterable[str]) -> str:
    """Column names, quoted: `user` is a reserved word in PostgreSQL."""
    return ", ".join(f'"{c}"' for c in names)


_AUDIT_COLS = tuple(f.name for f in dataclasses.fields(AuditRow))
_INSERT_AUDIT = (
    f"INSERT INTO audit ({_cols(_AUDIT_COLS)}) VALUES ({','.join('?' * len(_AUDIT_COLS))})"
)


def _where(conds: Sequence[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """' WHERE a AND b' of the conditions whose value is not None, and their arguments ("" and
    none when no condition applies); a list value fills the clause's "IN (?)"."""
    clauses: list[str] = []
    args: list[Any] = []
    for clause, value in conds:
        if value is None:
            continue
        if isinstance(value, list):
            clauses.append(clause.replace("(?)", "(" + ",".join("?" * len(value)) + ")"))
            args += value
        else:
            clauses.append(clause)
            args.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _insert_audit(db: Backend, rows: Sequence[AuditRow]) -> None:
    if rows:
        db.executemany(_INSERT_AUDIT, [tuple(getattr(r, c) for c in _AUDIT_COLS) for r in rows])


@dataclass(slots=True)
class Batch:
    """Everything one step of the daemon changes, committed together or not at all."""

    jobs: list[Job] = field(default_factory=list)
    parts_changed: set[int] = field(default_factory=set)  # ids of `jobs` whose parts changed
    history: list[tuple[int, float, str, str]] = field(default_factory=list)
    commands: list[CommandRow] = field(default_factory=list)
    acks: list[tuple[str, bool, str, float]] = field(default_factory=list)  # cmd, ok, error, ts
    audit: list[AuditRow] = field(default_factory=list)  # the API call this step carries out
    accounting: list[dict[str, Any]] = field(default_factory=list)  # rows of finished jobs
    drains: list[tuple[str, str, float]] = field(default_factory=list)  # host, reason, ts

    def __bool__(self) -> bool:
        return any(
            (
                self.jobs,
                self.history,
                self.commands,
                self.acks,
                self.audit,
                self.accounting,
                self.drains,
            )
        )


@dataclass(frozen=True, slots=True)
class AcctFilter:
    user: str = ""
    account: str = ""
    states: frozenset[str] = frozenset()
    since: float | None = None  # jobs that ended at or after
    until: float | None = None  # and before


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


def _job(row: Any, parts: tuple[Part, ...] = ()) -> Job:
    d = dict(row)
    d["spec"] = json.loads(d["spec"])
    return Job(**d, parts=parts)


def _part(row: Any) -> Part:
    return Part(
        rank=row["node_rank"],
        host=row["host"],
        gpus=tuple(json.loads(row["gpus"])),
        launch_id=row["launch_id"],
        state=row["state"],
        pid=row["pid"],
        exit_code=row["exit_code"],
        signal=row["signal"],
        reason=row["reason"],
        log_path=row["log_path"],
        started_ts=row["started_ts"],
        exited_ts=row["exited_ts"],
    )


def _job_values(job: Job) -> tuple[Any, ...]:
    d = job.to_dict()
    d["spec"] = json.dumps(job.spec)
    return tuple(d[c] for c in _JOB_COLS)


_INSERT_EVENT = "INSERT INTO job_events (job_id, ts, state, detail, epoch) VALUES (?,?,?,?,?)"


def _fence(db: Backend, epoch: int) -> None:
    """Refuses the transaction of a writer whose epoch is older than the store's."""
    row = db.execute("SELECT value FROM kv WHERE key = 'epoch'" + db.fence_lock).fetchone()
    current = int(row["value"]) if row is not None and str(row["value"]).isdigit() else 0
    if current > epoch:
        raise Deposed(
            f"another dcd leads this store now (epoch {current}, this one's {epoch}):"
            " this one writes and sends nothing more"
        )


_INSERT_JOB = (
    f"INSERT INTO jobs ({_cols(_JOB_COLS[1:])}) VALUES ({','.join('?' * len(_JOB_COLS[1:]))})"
)


class Store:
    def __init__(self, db: Backend, pool: ThreadPoolExecutor) -> None:
        self._db = db
        self._pool = pool
        # Why the last write failed ("" once one succeeds): /v1/health and the API's 503s.
        self.write_error = ""
        # A shared store (PostgreSQL) whose leader lock this store held and lost: why, and
        # set once for good (the daemon stops; it never writes again on another connection).
        self.lost_leadership = ""
        self.lost = asyncio.Event()
        # The fencing epoch of the leader writing through this store (None: unfenced, e.g.
        # before it leads, or a tool): stored with every transition, and checked in every
        # write transaction against the store's (kv "epoch"), so that a deposed leader that
        # still has a connection stops at its next write.
        self.epoch: int | None = None

    @classmethod
    async def open(cls, location: str) -> Store:
        """`location`: a file path (SQLite) or a postgresql:// URL (PostgreSQL)."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        db = open_backend(location)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(pool, db.connect, _migrations())
        except Exception as exc:
            if db.refused(exc) is None:
                raise
            await loop.run_in_executor(pool, db.close)
            pool.shutdown(wait=False)
            raise StoreError(f"{db.where}: {one_line(exc)}") from None
        log.info("state store: %s", db.where)
        return cls(db, pool)

    async def close(self) -> None:
        try:
            await self._run(lambda db: db.close())
        finally:
            self._pool.shutdown(wait=False)

    async def _run(self, fn: Callable[[Backend], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, self._db)
        except Exception as exc:
            refused = self._db.refused(exc)
            if refused is None:
                raise
            if not self.lost_leadership and (why := self._db.lost_lead()):
                self.lost_leadership = why
                self.lost.set()
            if refused:
                raise StoreRejected(f"{type(exc).__name__}: {one_line(exc)}") from exc
            raise StoreError(self._db.describe(exc)) from exc

    async def _tx(self, fn: Callable[[Backend], T]) -> T:
        epoch = self.epoch

        def run(db: Backend) -> T:
            with db.transaction():
                if epoch is not None:
                    _fence(db, epoch)
                return fn(db)

        try:
            out = await self._run(run)
        except Deposed as exc:
            self._deposed(exc)
            raise
        except StoreError as exc:
            if self.write_error != str(exc):
                log.error("the state store cannot be written: %s", exc)
            self.write_error = str(exc) or "write failed"
            raise
        if self.write_error:
            log.warning("the state store can be written again")
            self.write_error = ""
        return out

    async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return await self._run(lambda db: db.execute(sql, args).fetchall())

    # --- leadership (a shared store: PostgreSQL) ------------------------------------------------

    @property
    def shared(self) -> bool:
        """Can several daemons use this store (one leading, the others standing by)?"""
        return self._db.shared

    async def try_lead(self) -> bool:
        """Takes the leader lock, on this store's own connection, if it is free: held as long
        as the connection lives. Always True for SQLite."""
        return await self._run(lambda db: db.try_lead())

    async def leader(self) -> str:
        """Who leads ("" if nobody or it cannot be seen), for a standby to say."""
        return await self._run(lambda db: db.leader())

    async def check_lead(self) -> None:
        """Still connected (so still holding the leader lock), and no newer epoch in the
        store? Either failing sets `lost` (and raises StoreError)."""
        epoch = self.epoch
        try:
            await self._run(lambda db: _fence(db, 0 if epoch is None else epoch))
        except Deposed as exc:
            self._deposed(exc)
            raise

    def _deposed(self, exc: Deposed) -> None:
        if not self.lost_leadership:
            log.error("%s", exc)
            self.lost_leadership = str(exc)
            self.lost.set()

    # --- writes ------------------------------------------------------------------------------

    async def add_jobs(self, new: Sequence[tuple[Job, str]], audited: bool = False) -> list[int]:
        """Many submissions (each a job without its id, and why) in one transaction (group
        commit); their ids in order. `audited`: each gets its audit row in that transaction."""
        epoch = self.epoch or 0

        def run(db: Backend) -> list[int]:
            ids = db.insert_many(_INSERT_JOB, [_job_values(job)[1:] for job, _ in new])
            db.executemany(
                _INSERT_EVENT,
                [
                    (i, job.submit_ts, job.state, why, epoch)
                    for i, (job, why) in zip(ids, new, strict=True)
                ],
            )
            if audited:
                rows = [
                    AuditRow(j.submit_ts, j.uid, j.user, "submit", f"job {i}", "ok", 201, j.name)
                    for i, (j, _) in zip(ids, new, strict=True)
                ]
                _insert_audit(db, rows)
            return ids

        return await self._tx(run)

    async def add_array(self, tasks: Sequence[Job], why: str) -> list[int]:
        """An array's tasks in one transaction; the first task's id is the array's id (every
        task's `array_job_id`). Their ids in order."""
        epoch = self.epoch or 0

        def run(db: Backend) -> list[int]:
            ids: list[int] = []
            for job in tasks:
                row = dataclasses.replace(job, array_job_id=ids[0] if ids else None)
                ids.append(db.insert(_INSERT_JOB, _job_values(row)[1:]))
            db.execute("UPDATE jobs SET array_job_id = ? WHERE id = ?", (ids[0], ids[0]))
            db.executemany(
                _INSERT_EVENT,
                [
                    (i, job.submit_ts, job.state, why, epoch)
                    for i, job in zip(ids, tasks, strict=True)
                ],
            )
            return ids

        return await self._tx(run)

    async def commit(self, batch: Batch) -> None:
        epoch = self.epoch or 0

        def run(db: Backend) -> None:
            sets = ", ".join(f'"{c}" = ?' for c in _JOB_COLS[1:])
            db.executemany(
                f"UPDATE jobs SET {sets} WHERE id = ?",
                [(*_job_values(j)[1:], j.id) for j in batch.jobs],
            )
            changed = [j for j in batch.jobs if j.id in batch.parts_changed]
            if changed:
                db.executemany("DELETE FROM job_nodes WHERE job_id = ?", [(j.id,) for j in changed])
                db.executemany(
                    f"INSERT INTO job_nodes ({_cols(_PART_COLS)})"
                    f" VALUES ({','.join('?' * len(_PART_COLS))})",
                    [
                        (
                            j.id,
                            p.rank,
                            p.host,
                            json.dumps(list(p.gpus)),
                            p.state,
                            p.pid,
                            p.exit_code,
                            p.signal,
                            p.reason,
                            p.log_path,
                            p.started_ts,
                            p.exited_ts,
                            p.launch_id,
                        )
                        for j in changed
                        for p in j.parts
                    ],
                )
            db.executemany(_INSERT_EVENT, [(*h, epoch) for h in batch.history])
            db.executemany(
                "INSERT INTO commands (cmd_id, host, job_id, kind, payload, created_ts)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT (cmd_id) DO NOTHING",
                [
                    (c.cmd_id, c.host, c.job_id, c.kind, c.payload, c.created_ts)
                    for c in batch.commands
                ],
            )
            db.executemany(
                "UPDATE commands SET acked_ts = ?, ok = ?, error = ? WHERE cmd_id = ?"
                " AND acked_ts IS NULL",
                [(ts, int(ok), err, cid) for cid, ok, err, ts in batch.acks],
            )
            _insert_audit(db, batch.audit)
            db.executemany(
                'INSERT INTO job_accounting (job_id, "user", account, qos, state,'
                " submit_ts, end_ts, gpu_hours, energy_kwh, mean_util, row)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (job_id) DO UPDATE SET"
                ' "user" = excluded."user", account = excluded.account, qos = excluded.qos,'
                " state = excluded.state, submit_ts = excluded.submit_ts,"
                " end_ts = excluded.end_ts, gpu_hours = excluded.gpu_hours,"
                " energy_kwh = excluded.energy_kwh, mean_util = excluded.mean_util,"
                " row = excluded.row",
                [
                    (
                        r["job_id"],
                        r["user"],
                        r["account"],
                        r["qos"],
                        r["state"],
                        r["submit_ts"],
                        r["end_ts"],
                        r["gpu_hours"],
                        r["energy_kwh"],
                        r["mean_util"],
                        json.dumps(r, separators=(",", ":")),
                    )
                    for r in batch.accounting
                ],
            )
            for host, reason, ts in batch.drains:  # a node already drained keeps its reason
                if db.execute(
                    "UPDATE nodes SET drained = 1, drain_reason = ? WHERE host = ? AND drained = 0",
                    (reason, host),
                ).rowcount:
                    db.execute(
                        'INSERT INTO node_drains (host, ts, "user", drained, reason)'
                        " VALUES (?,?,?,?,?)",
                        (host, ts, HEALTH_POLICY, 1, reason),
                    )

        if batch:
            await self._tx(run)

    # --- reads ---------------------------------------------------------------------------------

    async def live_jobs(self) -> list[Job]:
        """Every job that is not finished, with its node parts: the model at start-up."""
        terminal = sorted(TERMINAL)
        marks = ",".join("?" * len(terminal))

        def run(db: Backend) -> list[Job]:
            rows = db.execute(
                f"SELECT * FROM jobs WHERE state NOT IN ({marks}) ORDER BY id", terminal
            ).fetchall()
            parts: dict[int, list[Part]] = {}
            for r in db.execute(
                "SELECT * FROM job_nodes WHERE job_id IN"
                f" (SELECT id FROM jobs WHERE state NOT IN ({marks}))"
                " ORDER BY job_id, node_rank",
                terminal,
            ):
                parts.setdefault(r["job_id"], []).append(_part(r))
            return [_job(r, tuple(parts.get(r["id"], ()))) for r in rows]

        return await self._run(run)

    async def completed_runs(self, per_key: int) -> dict[tuple[str, float], tuple[float, ...]]:
        """(user, time limit s) -> the run times (all runs together: attained service and
        the last run), oldest first, of that user's last `per_key` COMPLETED jobs with that
        limit: the scheduler's run history (Snapshot.history) at start-up."""
        rows = await self._all(
            'SELECT "user", time_limit_s, ran FROM ('
            ' SELECT "user", time_limit_s, end_ts, id, attained_s + end_ts - start_ts AS ran,'
            '  ROW_NUMBER() OVER (PARTITION BY "user", time_limit_s'
            "   ORDER BY end_ts DESC, id DESC) AS n"
            " FROM jobs WHERE state = ? AND start_ts IS NOT NULL AND end_ts IS NOT NULL"
            ') recent WHERE n <= ? ORDER BY "user", time_limit_s, end_ts, id',
            (JobState.COMPLETED.value, per_key),
        )
        out: dict[tuple[str, float], list[float]] = {}
        for r in rows:
            out.setdefault((r["user"], float(r["time_limit_s"])), []).append(float(r["ran"]))
        return {k: tuple(v) for k, v in out.items()}

    async def job(self, job_id: int) -> Job:
        def run(db: Backend) -> Job | None:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            parts = db.execute(
                "SELECT * FROM job_nodes WHERE job_id = ? ORDER BY node_rank", (job_id,)
            ).fetchall()
            return _job(row, tuple(_part(p) for p in parts))

        job = await self._run(run)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    async def finished_jobs(
        self,
        states: Iterable[str],
        user: str | None,
        limit: int,
        *,
        since: float | None = None,
        until: float | None = None,
    ) -> list[Job]:
        """Finished jobs, newest first (by id, the primary key), at most `limit`; with
        `since`/`until`, only those that ended in [since, until)."""
        st = sorted(set(states) & TERMINAL)
        if not st or limit <= 0:
            return []
        cond, args = _where(
            [
                ("state IN (?)", st),
                ('"user" = ?', user or None),
                ("end_ts >= ?", since),
                ("end_ts < ?", until),
            ]
        )
        sql = f"SELECT * FROM jobs{cond} ORDER BY id DESC LIMIT ?"
        return [_job(r) for r in await self._all(sql, [*args, limit])]

    async def job_events(self, job_id: int) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT ts, state, detail, epoch FROM job_events WHERE job_id = ? ORDER BY id",
            (job_id,),
        )
        return [dict(r) for r in rows]

    async def count_by_state(self) -> dict[str, int]:
        rows = await self._all("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {r["state"]: int(r["n"]) for r in rows}

    async def job_states(self, ids: Iterable[int]) -> dict[int, str]:
        wanted = list(ids)
        if not wanted:
            return {}
        rows = await self._all(
            f"SELECT id, state FROM jobs WHERE id IN ({','.join('?' * len(wanted))})", wanted
        )
        return {int(r["id"]): str(r["state"]) for r in rows}

    async def array_tasks(self, array_id: int) -> dict[int, int]:
        """task index -> job id of every task of array `array_id` ({} if it is none)."""
        rows = await self._all(
            "SELECT array_task_id, id FROM jobs WHERE array_job_id = ?", (array_id,)
        )
        return {int(r["array_task_id"]): int(r["id"]) for r in rows}

    async def unacked_commands(self) -> list[CommandRow]:
        rows = await self._all(
            "SELECT cmd_id, host, job_id, kind, payload, created_ts FROM commands"
            " WHERE acked_ts IS NULL ORDER BY created_ts"
        )
        return [CommandRow(**dict(r)) for r in rows]

    # --- accounting --------------------------------------------------------------------------

    async def accounting(
        self, where: AcctFilter, limit: int
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Finished jobs' accounting rows, newest end first (at most `limit`), and the totals
        per account over every row the filter matches."""
        cond, args = _where(
            [
                ('"user" = ?', where.user or None),
                ("account = ?", where.account or None),
                ("state IN (?)", sorted(where.states) or None),
                ("end_ts >= ?", where.since),
                ("end_ts < ?", where.until),
            ]
        )

        def run(db: Backend) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            rows = db.execute(
                f"SELECT row FROM job_accounting{cond} ORDER BY end_ts DESC, job_id DESC LIMIT ?",
                [*args, limit],
            ).fetchall()
            totals = db.execute(
                "SELECT account, COUNT(*) AS jobs, SUM(gpu_hours) AS gpu_hours,"
                " SUM(energy_kwh) AS energy_kwh,"
                " SUM(mean_util * gpu_hours) / NULLIF(SUM(CASE WHEN mean_util IS NULL"
                " THEN 0 ELSE gpu_hours END), 0) AS mean_util"
                f" FROM job_accounting{cond} GROUP BY account ORDER BY account",
                args,
            ).fetchall()
            return [json.loads(r["row"]) for r in rows], [
                {
                    "account": t["account"],
                    "jobs": int(t["jobs"]),
                    "gpu_hours": float(t["gpu_hours"] or 0.0),
                    "energy_kwh": float(t["energy_kwh"] or 0.0),
                    "mean_util": t["mean_util"],
                }
                for t in totals
            ]

        return await self._run(run)

    async def accounting_row(self, job_id: int) -> dict[str, Any] | None:
        rows = await self._all("SELECT row FROM job_accounting WHERE job_id = ?", (job_id,))
        return dict(json.loads(rows[0]["row"])) if rows else None

    # --- nodes -------------------------------------------------------------------------------

    async def upsert_node(
        self, host: str, online: bool, status: dict[str, Any], now: float
    ) -> None:
        await self._tx(
            lambda db: db.execute(
                "INSERT INTO nodes (host, online, status, updated_ts) VALUES (?,?,?,?)"
                " ON CONFLICT(host) DO UPDATE SET online = excluded.online,"
                " status = excluded.status, updated_ts = excluded.updated_ts",
                (host, int(online), json.dumps(status), now),
            )
        )

    async def set_drain(
        self, host: str, drained: bool, reason: str, by: str = "", audit: AuditRow | None = None
    ) -> None:
        """Drains or resumes a node; the change goes into its drain history (and `audit`
        into the audit log) in the same transaction."""

        def run(db: Backend) -> int:
            n = db.execute(
                "UPDATE nodes SET drained = ?, drain_reason = ? WHERE host = ?",
                (int(drained), reason if drained else "", host),
            ).rowcount
            if n:
                ts = audit.ts if audit else time.time()
                db.execute(
                    'INSERT INTO node_drains (host, ts, "user", drained, reason)'
                    " VALUES (?,?,?,?,?)",
                    (host, ts, by, int(drained), reason),
                )
                _insert_audit(db, [audit] if audit else [])
            return int(n)

        if await self._tx(run) == 0:
            raise NotFound(f"no node {host!r}")

    async def add_node_event(self, host: str, ts: float, kind: str, detail: str) -> None:
        await self._tx(
            lambda db: db.execute(
                "INSERT INTO node_events (host, ts, kind, detail) VALUES (?,?,?,?)",
                (host, ts, kind, detail),
            )
        )

    async def node_events(self, host: str, limit: int = 100) -> list[dict[str, Any]]:
        """A node's GPU faults, drains and resumes, oldest first (the newest `limit`): the
        faults from its events, the drains and resumes from its drain history."""
        rows = await self._all(
            "SELECT ts, kind, detail FROM node_events WHERE host = ?"
            " UNION ALL SELECT ts, CASE WHEN drained = 1 THEN 'drain' ELSE 'resume' END,"
            " reason FROM node_drains WHERE host = ? ORDER BY ts DESC LIMIT ?",
            (host, host, limit),
        )
        return [dict(r) for r in reversed(rows)]

    async def drain_history(self, host: str, limit: int = 100) -> list[dict[str, Any]]:
        """A node's drains and resumes, oldest first (the last `limit`)."""
        rows = await self._all(
            'SELECT ts, "user", drained, reason FROM node_drains WHERE host = ?'
            " ORDER BY id DESC LIMIT ?",
            (host, limit),
        )
        return [{**dict(r), "drained": bool(r["drained"])} for r in reversed(rows)]

    # --- audit log -----------------------------------------------------------------------------

    async def add_audit(self, rows: Sequence[AuditRow]) -> None:
        await self._tx(lambda db: _insert_audit(db, rows))

    async def audit(
        self, user: str | None, since: float | None, limit: int, before: int | None = None
    ) -> list[dict[str, Any]]:
        """Audit rows newest first: of one user or all, at or after `since`, with an id
        below `before` (for paging back), at most `limit`."""
        cond, args = _where([('"user" = ?', user), ("ts >= ?", since), ("id < ?", before)])
        sql = f"SELECT * FROM audit{cond} ORDER BY id DESC LIMIT ?"
        return [dict(r) for r in await self._all(sql, [*args, limit])]

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

    # --- telemetry and key/value ---------------------------------------------------------------

    async def add_gpu_samples(
        self,
        rows: Sequence[
            tuple[str, int, float, float | None, int | None, float | None, float | None]
        ],
        keep_since: float,
    ) -> None:
        def run(db: Backend) -> None:
            db.executemany(
                "INSERT INTO gpu_samples (host, gpu, ts, util, mem_used, power_w, temp_c)"
                " VALUES (?,?,?,?,?,?,?)",
                rows,
            )
            db.execute("DELETE FROM gpu_samples WHERE ts < ?", (keep_since,))

        await self._tx(run)

    async def get_kv(self, key: str) -> str | None:
        rows = await self._all("SELECT value FROM kv WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    async def set_kv(self, key: str, value: str) -> None:
        await self._tx(
            lambda db: db.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key)"
                " DO UPDATE SET value = excluded.value",
                (key, value),
            )
        )

    async def probe(self) -> None:
        """A write that changes nothing visible: can the store be written again?"""
        await self.set_kv("probe", "ok")
