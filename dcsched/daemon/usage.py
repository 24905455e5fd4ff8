"""Fair-share usage: decayed, billed GPU-seconds per (account, user), accrued on every
scheduling pass and kept in the store so that a restart does not forgive anybody."""

from __future__ import annotations

import json
import logging
import time

from dcsched.daemon.model import Ended
from dcsched.daemon.store import Store, StoreError
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

    def accrue(self, running: tuple[RunningJob, ...], ended: list[Ended], now: float) -> Usage:
        """Charges running jobs up to now and the jobs that ended since the last accrual."""
        usage = self.usage
        since = usage.ts
        for job in ended:
            seconds = job.end_ts - max(job.start_ts, since)
            if seconds > 0:
                gpu_s = seconds * job.gpus * self.config.bill(job.gpu_type)
                usage = charge(
                    usage, usage.ts, job.account, job.user, gpu_s, self.config.half_life_s
                )
        self.usage = accrue(usage, running, now, self.config)
        return self.usage

    async def save_if_due(self, now: float) -> None:
        if now - self._saved > SAVE_EVERY_S:
            try:
                await self.save()
            except StoreError as exc:
                log.warning("fair-share usage not saved: %s", exc)

    async def save(self) -> None:
        await self.store.set_kv(KEY, json.dumps(self.usage.to_dict()))
        self._saved = time.time()
