"""One leader per shared store: a dcd whose PostgreSQL store another dcd leads waits here,
as a standby, until it holds the leader lock (see docs/architecture.md, "Leader").

The lock is a session-level advisory lock on the store's own connection, so it lasts exactly
as long as that connection: a leader that dies, or loses the connection, lets a standby in.
A standby loads nothing (the leader's state changes under it) and answers its API socket
(and TLS listener) with 503, who leads and the leader's API address, so that `dcctl` and
health checks say what it is and remote clients go to the leader.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

from aiohttp import web

from dcsched import __version__
from dcsched.daemon.api import serve_tcp
from dcsched.daemon.store import Store, StoreError
from dcsched.protocol.config import DaemonConfig
from dcsched.protocol.sdnotify import notify, watchdog_interval

log = logging.getLogger("dcsched.daemon")
STANDBY_POLL_S = 1.0  # how often a standby tries the lock: the bound on its takeover delay
LEADER_URL_KEY = "leader_api"  # kv: the leader's advertise_url, written at each takeover


def advertise_url(dc: DaemonConfig) -> str:
    """How remote clients reach this dcd: [daemon] advertise_url, else https://FQDN:PORT
    of its listener; "" without a listener."""
    if dc.advertise_url or not dc.listen:
        return dc.advertise_url
    return f"https://{socket.getfqdn()}:{dc.listen.rpartition(':')[2]}"


class Standby:
    def __init__(self, store: Store, dc: DaemonConfig) -> None:
        self.store = store
        self.dc = dc
        self.socket_path = dc.socket
        self.leader = ""  # who leads, as last seen
        self.leader_url = ""  # where the leader's TLS listener is, as it said
        self.problem = ""  # why the store could not be asked, as last seen

    def health(self) -> dict[str, object]:
        who = self.leader or "another dcd (not visible)"
        where = f" at {self.leader_url}" if self.leader_url else ""
        message = f"this dcd is a standby: {who} leads{where}; ask the leader"
        if self.problem:
            message += f" (the store: {self.problem})"
        return {
            "ok": False,
            "role": "standby",
            "leader": self.leader,
            "leader_url": self.leader_url,
            "problems": [message],
            "version": __version__,
            "broker_connected": False,
            "storage_ok": not self.problem,
            "error": {
                "code": "unavailable",
                "message": message,
                "role": "standby",
                "leader": self.leader,
                "leader_url": self.leader_url,
            },
        }

    async def _answer(self, request: web.Request) -> web.Response:
        h = self.health()
        body = h if request.path == "/v1/health" else {"error": h["error"]}
        return web.json_response(body, status=503)

    async def wait(self) -> None:
        """Serves the standby's answers on the API socket until this dcd holds the leader
        lock; the socket is closed again on return (the daemon serves it next)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        Path(self.socket_path).parent.mkdir(parents=True, exist_ok=True)
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)  # the caller checked that nobody answers on it
        try:
            await web.UnixSite(runner, self.socket_path).start()
            await serve_tcp(runner, self.dc)
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
