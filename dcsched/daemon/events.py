"""The change feed behind `GET /v1/events`: every journaled job change and node change, in
order, numbered, kept in a bounded ring so that a client can resume from its cursor.

A cursor is "<epoch>-<seq>"; the epoch changes with every daemon start, so a client that
resumes across a restart (or from further back than the ring holds) is told to re-read
everything once (a `reset` event) instead of silently missing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any

RING = 20_000


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    kind: str  # "job" | "node"
    data: dict[str, Any]


class EventHub:
    def __init__(self, ring: int = RING) -> None:
        self.epoch = secrets.token_hex(4)
        self.seq = 0
        self._ring: deque[Change] = deque(maxlen=ring)
        self._new = asyncio.Event()

    def cursor(self, seq: int | None = None) -> str:
        return f"{self.epoch}-{self.seq if seq is None else seq}"

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        self.seq += 1
        self._ring.append(Change(self.seq, kind, data))
        # Wake every waiting stream once; each re-arms on its next wait.
        self._new.set()
        self._new = asyncio.Event()

    def since(self, cursor: str) -> list[Change] | None:
        """Changes after `cursor`; None when they cannot all be given (reset needed)."""
        epoch, _, seq_text = cursor.partition("-")
        try:
            seq = int(seq_text)
        except ValueError:
            return None
        if epoch != self.epoch or seq > self.seq:
            return None
        if seq == self.seq:
            return []
        if not self._ring or self._ring[0].seq > seq + 1:
            return None
        start = seq + 1 - self._ring[0].seq
        return [self._ring[i] for i in range(start, len(self._ring))]

    def waiter(self) -> asyncio.Event:
        """Set at the next publish: take it before reading, so no change slips between."""
        return self._new

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
