"""The audit log's writer for calls that have no transaction of their own to ride in.

A call that changes jobs or nodes writes its audit row in the same transaction as the change
(`Batch.audit`, `Store.add_jobs(audited=True)`, `Store.set_drain`). Refusals change nothing:
their rows are queued here and written in groups by a background task, so that a refused
request is answered at once and never waits on a commit of its own. Rows the store cannot
take now are kept (up to a bound) and written with the next group.
"""

from __future__ import annotations

import asyncio
import logging

from dcsched.daemon.store import AuditRow, Store, StoreError, StoreRejected

log = logging.getLogger("dcsched.audit")
MAX_PENDING = 10_000  # rows kept while the store cannot be written; the oldest go first


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
