"""Commands to agents: journaled first, then published signed, retried until acknowledged.

The unacknowledged ones are kept in memory (loaded from the store at start-up) so that a
retry round reads nothing from disk. A command is signed afresh on every send so that a
retry is never refused as a replay; the agent executes each cmd_id at most once, so a retry
is safe. Fire-and-forget commands (AckExit, QueryJob, FetchLog) are not journaled: each is
asked again if its answer does not come.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable

import msgspec

from dcsched.daemon.aio import wait_event
from dcsched.daemon.bus import Bus
from dcsched.daemon.store import CommandRow
from dcsched.protocol.codec import encode, sign
from dcsched.protocol.messages import Command, FetchLog, LogChunk

log = logging.getLogger("dcsched.commands")
_command = msgspec.json.Decoder(Command)


def new_cmd_id() -> str:
    return uuid.uuid4().hex


def command_row(host: str, job_id: int, cmd: Command, now: float) -> CommandRow:
    return CommandRow(cmd.cmd_id, host, job_id, type(cmd).__name__.lower(), encode(cmd), now)


class CommandSender:
    def __init__(
        self,
        bus: Bus,
        key: bytes | None,
        retry_s: float,
        offline: Callable[[str], bool],
        leading: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.bus = bus
        # Asked before each batch of sends (a shared store: is the leader lock still held?),
        # so that a deposed leader sends nothing more once it could know.
        self.leading = leading
        self.deposed = False
        self.key = key
        # The daemon's epoch (set at start-up, see Daemon.open): every command carries it, and
        # an agent refuses commands from an older epoch than the newest it has accepted.
        self.epoch = 0
        self.retry_s = retry_s
        # An agent that is offline cannot receive (its session is clean): its commands
        # wait, and go out when its status says online again.
        self.offline = offline
        self.wake = asyncio.Event()
        self.pending: dict[str, CommandRow] = {}  # journaled, not yet acknowledged
        self._last_sent: dict[str, float] = {}
        self._attempts: dict[str, int] = {}
        self._logs: dict[str, asyncio.Future[LogChunk]] = {}

    def add(self, rows: list[CommandRow]) -> None:
        """Commands the store has journaled: they go out now."""
        for r in rows:
            self.pending[r.cmd_id] = r
        if rows:
            self.wake.set()

    def acked(self, cmd_id: str) -> CommandRow | None:
        """The command an ack answers, or None for a repeated or unknown ack."""
        self._last_sent.pop(cmd_id, None)
        self._attempts.pop(cmd_id, None)
        return self.pending.pop(cmd_id, None)

    def unacked(self, job_id: int, kind: str) -> list[CommandRow]:
        return [c for c in self.pending.values() if c.job_id == job_id and c.kind == kind]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await wait_event(self.wake, self.retry_s / 2)
            self.wake.clear()
            if self.bus.connected.is_set():
                try:
                    await self.send_due()
                except Exception:
                    log.exception("sending commands failed; retrying")

    async def _may_send(self) -> bool:
        if not self.deposed and self.leading is not None and not await self.leading():
            log.warning("not the leader any more: sending no more commands")
            self.deposed = True
        return not self.deposed

    async def send_due(self) -> None:
        now = time.monotonic()
        due = [
            cmd
            for cmd in self.pending.values()
            if now - self._last_sent.get(cmd.cmd_id, -math.inf) >= self.retry_s
            and not self.offline(cmd.host)
        ]
        if not due or not await self._may_send():
            return
        for cmd in due:
            if cmd.cmd_id not in self.pending:
                continue  # acknowledged meanwhile
            payload = sign(_command.decode(cmd.payload), self.key, host=cmd.host, epoch=self.epoch)
            if await self.bus.publish(self.bus.topics.host(cmd.host, "cmd"), payload, qos=1):
                self._last_sent[cmd.cmd_id] = now
                n = self._attempts[cmd.cmd_id] = self._attempts.get(cmd.cmd_id, 0) + 1
                if n >= 4 and n % 10 == 4:
                    log.warning(
                        "%s command %s to %s unacknowledged after %d sends",
                        cmd.kind,
                        cmd.cmd_id,
                        cmd.host,
                        n,
                    )

    async def send_once(self, host: str, cmd: Command) -> bool:
        """An idempotent command that is not journaled; False if the broker is not reached."""
        if not await self._may_send():
            return False
        payload = sign(cmd, self.key, host=host, epoch=self.epoch)
        return await self.bus.publish(self.bus.topics.host(host, "cmd"), payload)

    # Log fetches are interactive: not stored, answered within a deadline or not at all.
    async def fetch_log(
        self, host: str, job_id: int, rank: int, offset: int, max_bytes: int, timeout: float = 5.0
    ) -> LogChunk:
        fut: asyncio.Future[LogChunk] = asyncio.get_running_loop().create_future()
        ids: list[str] = []
        try:
            deadline = time.monotonic() + timeout
            while True:
                # A fresh id per try: the agent answers each id once.
                cmd = FetchLog(
                    cmd_id=new_cmd_id(),
                    job_id=str(job_id),
                    node_rank=rank,
                    offset=offset,
                    max_bytes=max_bytes,
                )
                ids.append(cmd.cmd_id)
                self._logs[cmd.cmd_id] = fut
                await self.send_once(host, cmd)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), min(left, 1.5))
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        raise
        finally:
            for cid in ids:
                self._logs.pop(cid, None)

    def on_log_chunk(self, chunk: LogChunk) -> None:
        fut = self._logs.get(chunk.cmd_id)
        if fut is not None and not fut.done():
            fut.set_result(chunk)
