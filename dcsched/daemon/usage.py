"""Fair-share usage: decayed, billed GPU-seconds per (account, user), accrued on every
scheduling pass and kept in the store so that a restart does not forgive anybody."""

from __future__ import annotations

import json
import logging
import time

from dcsched.daemon.store import Job, Store
from dcsched.scheduler import RunningJob, SchedulerConfig, Usage, accrue, charge

log = logging.getLogger("dcsched.usage")
KEY = "fairshare_usage"
SAVE_EVERY_S = 30.0


class UsageTracker:
    def __init__(self, store: Store, config: SchedulerConfig) -> None:
        self.store = store
        self.config = config
        self.usage = Usage(time.time(), {})
        self._saved = 0.0

    async def load(self) -> None:
        raw = await self.store.get_kv(KEY)
        if raw is None:
            return
        try:
            self.usage = Usage.from_dict(json.loads(raw))
        except ValueError as exc:
            log.error("stored fair-share usage unreadable (%s); starting from zero", exc)

    async def accrue(self, running: tuple[RunningJob, ...], now: float) -> Usage:
        """Charges running jobs up to now and jobs that ended since the last accrual."""
        since = self.usage.ts
        usage = self.usage
        for job in await self.store.jobs_ended_since(since):
            usage = self._charge_ended(usage, job, since)
        self.usage = accrue(usage, running, now, self.config)
        if now - self._saved > SAVE_EVERY_S:
            await self.save()
        return self.usage

    def _charge_ended(self, usage: Usage, job: Job, since: float) -> Usage:
        assert job.start_ts is not None and job.end_ts is not None
        seconds = job.end_ts - max(job.start_ts, since)
        if seconds <= 0:
            return usage
        bill = self.config.bill(job.gpu_type or "")
        gpu_s = seconds * job.nodes * job.gpus_per_node * bill
        return charge(usage, usage.ts, job.account, job.user, gpu_s, self.config.half_life_s)

    async def save(self) -> None:
        await self.store.set_kv(KEY, json.dumps(self.usage.to_dict()))
        self._saved = time.time()
