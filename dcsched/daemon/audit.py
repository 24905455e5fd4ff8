"""The audit log's writer for calls that have no transaction of their own to ride in.

A call that changes jobs or nodes writes its audit row in the same transaction as the change
(`Batch.audit`, `Store.add_jobs(audited=True)`, `Store.set_drain`) and says so with
`written_with_change()`; any other call that succeeds, and every refusal, is recorded by the
API's middleware through `AuditLog.record`. Refusals change nothing:
their rows are queued here and written in groups by a background task, so that a refused
request is answered at once and never waits on a commit of its own. Rows the store cannot
take now are kept (up to a bound) and written with the next group.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

from dcsched.daemon.store import AuditRow, Store, StoreError, StoreRejected

log = logging.getLogger("dcsched.audit")
MAX_PENDING = 10_000  # rows kept while the store cannot be written; the oldest go first

# Set in the task serving a request once its audit row was committed with its change, so
# that the API's audit middleware does not write a second one.
_with_change: contextvars.ContextVar[bool] = contextvars.ContextVar("audited", default=False)


def written_with_change() -> None:
    """The current request's audit row went into the transaction of its change."""
    _with_change.set(True)


def track() -> contextvars.Token[bool]:
    """Starts a request: nothing written with a change yet."""
    return _with_change.set(False)


def written(token: contextvars.Token[bool]) -> bool:
    """Ends a request started with `track`: was its row written with its change?"""
    done = _with_change.get()
    _with_change.reset(token)
    return done


class AuditLog:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.pending: list[AuditRow] = []
        self.dropped = 0  # rows lost because the store refused them or too many waited
        self._writer: asyncio.Task[None] | None = None

    def record(self, row: AuditRow) -> None:
        """Queues a row; it is written soon, with whatever else arrives meanwhile."""
        self.pending.append(row)
        if len(self.pending) > MAX_PENDING:
            over = len(self.pending) - MAX_PENDING
            del self.pending[:over]
            self.dropped += over
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="audit")

    async def _write(self) -> None:
        await asyncio.sleep(0)  # let the rows already on their way join this group
        await self.flush()

    async def flush(self) -> None:
        """Writes what is queued. A store that cannot be written keeps the rows queued
        for the next flush (the next refusal, a read of the log, the daemon's stop)."""
        while self.pending:
            rows, self.pending = self.pending, []
            try:
                await self.store.add_audit(rows)
            except StoreError:
                self.pending[:0] = rows
                return
            except StoreRejected as exc:
                self.dropped += len(rows)
                log.error("audit rows refused by the store, dropped: %s", exc)
