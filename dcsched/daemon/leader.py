"""One leader per shared store: a dcd whose PostgreSQL store another dcd leads waits here,
as a standby, until it holds the leader lock (see docs/architecture.md, "Leader").

The lock is a session-level advisory lock on the store's own connection, so it lasts exactly
as long as that connection: a leader that dies, or loses the connection, lets a standby in.
A standby runs no loop and sends nothing. On its API socket (and TLS listener) it answers
reads from a copy of the store's state, reloaded when older than a second and marked as a
standby's (no telemetry, no scheduler reasons); everything else, and `/v1/health`, gets 503
with who leads and the leader's API address, so that `dcctl` and health checks say what it
is and remote clients take their changes to the leader.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from dcsched import __version__
from dcsched.daemon.api import Handler
from dcsched.daemon.store import Store, StoreError
from dcsched.protocol.config import DaemonConfig
from dcsched.protocol.sdnotify import notify, watchdog_interval

log = logging.getLogger("dcsched.daemon")
STANDBY_POLL_S = 1.0  # how often a standby tries the lock: the bound on its takeover delay
_encode = msgspec.json.Encoder().encode
LEADER_URL_KEY = "leader_api"  # kv: the leader's advertise_url, written at each takeover


def advertise_url(dc: DaemonConfig) -> str:
    """How remote clients reach this dcd: [daemon] advertise_url, else https://FQDN:PORT
    of its listener; "" without a listener."""
    if dc.advertise_url or not dc.listen:
        return dc.advertise_url
    return f"https://{socket.getfqdn()}:{dc.listen.rpartition(':')[2]}"


# What a standby cannot answer from the store: the leader's live feed, telemetry, the
# scheduler's reasoning, and logs (fetched from the agents by a command).
LEADER_ONLY_GETS = ("/v1/events", "/v1/gpus", "/v1/metrics", "/v1/forecast")
LEADER_ONLY_SUFFIXES = ("/logs", "/history", "/explain")
READ_MAX_AGE_S = 1.0  # a standby's copy of the store is reloaded when older than this


class Standby:
    """Waits for the leader lock; meanwhile answers reads from a copy of the store's state
    (the `reads` app, a daemon's API that runs no loop: `reload` refreshes its memory from
    the store, `serve` opens its socket and listener as the daemon does) and refuses
    everything else with who leads and where."""

    def __init__(
        self,
        store: Store,
        dc: DaemonConfig,
        reads: web.Application,
        reload: Callable[[], Awaitable[None]],
        serve: Callable[[], Awaitable[web.AppRunner]],
    ) -> None:
        self.store = store
        self.dc = dc
        self.socket_path = dc.socket
        self.reads = reads
        self.reload = reload
        self.serve = serve
        self.leader = ""  # who leads, as last seen
        self.leader_url = ""  # where the leader's TLS listener is, as it said
        self.problem = ""  # why the store could not be asked, as last seen
        self._loaded = -float("inf")  # monotonic time of the copy's last reload
        self._loaded_at = 0.0  # its wall-clock time, as readers are told
        self._reloading = asyncio.Lock()

    def _who(self) -> str:
        who = self.leader or "another dcd (not visible)"
        return who + (f" at {self.leader_url}" if self.leader_url else "")

    def refusal(self, why: str) -> dict[str, object]:
        message = f"this dcd is a standby, leader is {self._who()}: {why}"
        if self.problem:
            message += f" (the store: {self.problem})"
        return {
            "code": "unavailable",
            "message": message,
            "role": "standby",
            "leader": self.leader,
            "leader_url": self.leader_url,
        }

    def health(self) -> dict[str, object]:
        error = self.refusal("it answers reads from the store; changes go to the leader")
        return {
            "ok": False,
            "role": "standby",
            "leader": self.leader,
            "leader_url": self.leader_url,
            "problems": [f"standby, leader is {self._who()}"],
            "version": __version__,
            "broker_connected": False,
            "storage_ok": not self.problem,
            "error": error,
        }

    @staticmethod
    def serves(request: web.Request) -> bool:
        """Can a standby answer this from the store? Reads, and a token for the socket's
        caller (it changes nothing)."""
        if request.method == "POST":
            return request.path == "/v1/tokens"
        if request.method not in ("GET", "HEAD"):
            return False
        path = request.path
        return not (
            path in LEADER_ONLY_GETS
            or path.endswith(LEADER_ONLY_SUFFIXES)
            or "changed_since" in request.query
        )

    @web.middleware
    async def front(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/v1/health":
            return web.json_response(self.health(), status=503)
        if not self.serves(request):
            what = (
                "telemetry, logs and the event stream come from the leader"
                if request.method in ("GET", "HEAD")
                else "it answers reads only; send changes to the leader"
            )
            return web.json_response({"error": self.refusal(what)}, status=503)
        try:
            await self._fresh()
        except StoreError as exc:
            self.problem = str(exc)
            body = {"error": self.refusal("its store cannot be read")}
            return web.json_response(body, status=503)
        resp = await handler(request)
        return self._marked(resp)

    async def _fresh(self) -> None:
        if time.monotonic() - self._loaded <= READ_MAX_AGE_S:
            return
        async with self._reloading:  # one reload for the readers that wait on it
            if time.monotonic() - self._loaded > READ_MAX_AGE_S:
                started, at = time.monotonic(), time.time()
                await self.reload()
                self._loaded, self._loaded_at = started, at

    def _marked(self, resp: web.StreamResponse) -> web.StreamResponse:
        """Says that the answer is a standby's: headers, and in a JSON object a `standby`
        member (who leads, when the copy was read, what it lacks)."""
        resp.headers["X-Dcsched-Role"] = "standby"
        if self.leader_url:
            resp.headers["X-Dcsched-Leader"] = self.leader_url
        body = getattr(resp, "body", None)
        if resp.status != 200 or not isinstance(body, bytes) or not body.startswith(b"{"):
            return resp
        note = _encode(
            {
                "leader": self.leader,
                "leader_url": self.leader_url,
                "read_at": self._loaded_at,
                "note": "read by a standby from the store: no telemetry, no scheduler reasons",
            }
        )
        head = body.rstrip()[:-1].rstrip()
        assert isinstance(resp, web.Response)
        resp.body = head + (b"," if head != b"{" else b"") + b'"standby":' + note + b"}"
        return resp

    async def wait(self) -> None:
        """Serves the standby's answers on the API socket until this dcd holds the leader
        lock; the socket is closed again on return (the daemon serves it next)."""
        self.reads.middlewares.insert(0, self.front)
        runner = await self.serve()  # the socket (its mode and group) and the TLS listener
        try:
            notify(f"READY=1\nSTATUS=standby: {self.leader or 'another dcd'} leads")
            await self._poll()
        finally:
            await runner.cleanup()
            if os.path.exists(self.socket_path):
                os.unlink(self.socket_path)

    async def _poll(self) -> None:
        dog = watchdog_interval()
        while True:
            try:
                if await self.store.try_lead():
                    log.info("this dcd now holds the leader lock: taking over")
                    return
                who = await self.store.leader()
                self.leader_url = await self.store.get_kv(LEADER_URL_KEY) or ""
                if who != self.leader or self.problem:
                    log.warning(
                        "standby: %s leads; waiting for the leader lock",
                        who or "another dcd (not visible)",
                    )
                    notify(f"STATUS=standby: {who or 'another dcd'} leads")
                self.leader, self.problem = who, ""
            except StoreError as exc:
                if str(exc) != self.problem:
                    log.error("standby: cannot reach the state store: %s", exc)
                self.problem = str(exc)
            if dog is not None:
                notify("WATCHDOG=1")
            await asyncio.sleep(min(STANDBY_POLL_S, dog or STANDBY_POLL_S))
