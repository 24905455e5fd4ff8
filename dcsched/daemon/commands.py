"""Commands to agents: stored first, then published signed, retried until acknowledged.

A command is signed afresh on every send so that a retry is never refused as a replay;
the agent executes each cmd_id at most once, so a retry is safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

import msgspec

from dcsched.daemon.aio import wait_event
from dcsched.daemon.bus import Bus
from dcsched.daemon.store import Store
from dcsched.protocol.codec import encode, sign
from dcsched.protocol.messages import Command, FetchLog, LogChunk

log = logging.getLogger("dcsched.commands")
_command = msgspec.json.Decoder(Command)


def new_cmd_id() -> str:
    return uuid.uuid4().hex


class CommandSender:
    def __init__(self, store: Store, bus: Bus, key: bytes | None, retry_s: float) -> None:
        self.store = store
        self.bus = bus
        self.key = key
        self.retry_s = retry_s
        self.wake = asyncio.Event()
        self._last_sent: dict[str, float] = {}
        self._logs: dict[str, asyncio.Future[LogChunk]] = {}
        # Set by the daemon. An agent that is offline cannot receive (its session is clean):
        # its commands wait, and go out when its status says online again.
        self.offline: Callable[[str], bool] = lambda host: False

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await wait_event(self.wake, self.retry_s / 2)
            self.wake.clear()
            if self.bus.connected.is_set():
                try:
                    await self.send_due()
                except Exception:
                    log.exception("sending commands failed; retrying")

    async def send_due(self) -> None:
        now = time.monotonic()
        pending = await self.store.unacked_commands()
        live = {c.cmd_id for c in pending}
        for cid in [c for c in self._last_sent if c not in live]:
            del self._last_sent[cid]
        for cmd in pending:
            last = self._last_sent.get(cmd.cmd_id)
            if (last is not None and now - last < self.retry_s) or self.offline(cmd.host):
                continue
            payload = sign(_command.decode(cmd.payload), self.key)
            if await self.bus.publish(self.bus.topics.host(cmd.host, "cmd"), payload, qos=1):
                self._last_sent[cmd.cmd_id] = now
                await self.store.command_sent(cmd.cmd_id)
                if cmd.attempts >= 3 and cmd.attempts % 10 == 3:
                    log.warning(
                        "%s command %s to %s unacknowledged after %d sends",
                        cmd.kind,
                        cmd.cmd_id,
                        cmd.host,
                        cmd.attempts + 1,
                    )

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
                await self.bus.publish(self.bus.topics.host(host, "cmd"), sign(cmd, self.key))
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


def command_row(host: str, cmd: Command) -> tuple[str, str, str, bytes]:
    kind = type(cmd).__name__.lower()
    return (cmd.cmd_id, host, kind, encode(cmd))
