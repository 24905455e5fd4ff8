"""The daemon's MQTT connection: a reconnect loop with jittered exponential backoff.

Telemetry is handed to a synchronous callback inside the receive loop (no awaits on the hot
path); status and events go through a queue to one task, in arrival order.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import aiomqtt
from paho.mqtt.matcher import MQTTMatcher

from dcsched.daemon.aio import wait_event
from dcsched.daemon.brokerauth import DAEMON_USER
from dcsched.protocol.codec import (
    Codec,
    DecodeError,
    event_codec,
    status_codec,
    telemetry_codec,
)
from dcsched.protocol.config import BrokerConfig
from dcsched.protocol.messages import Event, HostStatus, Telemetry
from dcsched.protocol.topics import Topics

log = logging.getLogger("dcsched.bus")


class Bus:
    def __init__(
        self,
        cfg: BrokerConfig,
        client_id: str,
        on_telemetry: Callable[[Telemetry], None],
        *,
        admit: Callable[[str], bool] = lambda host: True,
        known: Callable[[str], bool] = lambda host: True,
        may_connect: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """`admit(host)`: may this host name be a node at all (the `[daemon] hosts` list)?
        `known(host)`: has it told its status? Telemetry and events of a host that has not
        are dropped (and counted), so invented host names cost nothing. `may_connect()`:
        asked before each (re)connection; False (a deposed leader) connects no more."""
        self.cfg = cfg
        self.may_connect = may_connect
        self.admit = admit
        self.known = known
        # Hosts whose status this bus has passed on (the events task may not have handled it
        # yet when the host's next message arrives).
        self._statused: set[str] = set()
        self.topics = Topics(cfg.topic_prefix)
        self.client_id = client_id
        self.on_telemetry = on_telemetry
        # Status and events for the daemon's events task; None tells it to stop.
        self.inbox: asyncio.Queue[HostStatus | Event | None] = asyncio.Queue()
        self.telemetry = telemetry_codec()
        self.status = status_codec()
        self.events = event_codec()
        self.connected = asyncio.Event()
        self.connected_at = time.monotonic()  # of the last (re)connection
        self.reconnects = 0
        self._client: aiomqtt.Client | None = None
        self._password = cfg.password()  # read once: a bad file is a start-up error
        self._tls = cfg.tls_context()

    def codecs(self) -> dict[str, Any]:
        return {"telemetry": self.telemetry, "status": self.status, "events": self.events}

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        client = self._client
        if client is None or not self.connected.is_set():
            return False
        try:
            await client.publish(topic, payload, qos=qos, retain=retain)
        except aiomqtt.MqttError as exc:
            log.warning("publish to %s failed: %s", topic, exc)
            return False
        return True

    async def run(self, stop: asyncio.Event) -> None:
        host, port = self.cfg.host_port()
        delay = 0.5
        while not stop.is_set():
            started = time.monotonic()
            if self.may_connect is not None and not await self.may_connect():
                # The leaders of a store share one session: a deposed leader that connected
                # again would take it from the new one (the broker drops the older client).
                log.warning("not the leader any more: not connecting to the broker again")
                await stop.wait()
                break
            try:
                mqtt = aiomqtt.Client(
                    host,
                    port,
                    identifier=self.client_id,
                    clean_session=False,
                    # The ACL that `dcd broker-auth` writes knows the daemon as "dcd".
                    username=self.cfg.username or DAEMON_USER,
                    password=self._password,
                    tls_context=self._tls,
                    keepalive=self.cfg.keepalive_s,
                    queue_type=_inbound_queue(self._take_telemetry),
                )
                _no_topic_callbacks(mqtt)
                async with mqtt as client:
                    self._client = client
                    for kind, qos in (("telemetry", 0), ("status", 1), ("events", 1)):
                        await client.subscribe(self.topics.all_hosts(kind), qos=qos)  # type: ignore[arg-type]
                    self.connected_at = time.monotonic()
                    self.connected.set()
                    log.info("connected to broker %s:%d", host, port)
                    await _until_stopped(self._receive(client), stop)
            except aiomqtt.MqttError as exc:
                log.warning("broker %s:%d: %s", host, port, exc)
            finally:
                self.connected.clear()
                self._client = None
            if stop.is_set():
                break
            self.reconnects += 1
            if time.monotonic() - started > 30:
                delay = 0.5  # a connection that lived a while resets the backoff
            wait = delay * random.uniform(0.5, 1.5)
            log.info("reconnecting in %.1f s", wait)
            await wait_event(stop, wait)
            delay = min(delay * 2, 30.0)

    def _take_telemetry(self, message: aiomqtt.Message) -> bool:
        """Telemetry, the bulk of the traffic, is ingested as it is read (see
        `_inbound_queue`); True when `message` was telemetry."""
        where = self.topics.parse(message.topic.value)
        if where is not None and where[1] == "status":
            self._note_status(message, where[0])
        if where is None or where[1] != "telemetry":
            return False
        payload = message.payload
        if isinstance(payload, bytes | bytearray):
            topic = message.topic.value
            t = self.telemetry.decode_or_drop(bytes(payload), topic)
            if t is not None and self._accept(self.telemetry, t.host, where[0], topic):
                try:
                    self.on_telemetry(t)
                except Exception:  # this runs inside paho's read loop: it must not break it
                    log.exception("telemetry from %s not ingested", where[0])
        return True

    def _note_status(self, message: aiomqtt.Message, host: str) -> None:
        """A host's status counts from its arrival, not from when the events task gets to
        it: the telemetry right behind a new host's first status must not be refused."""
        payload = message.payload
        if host in self._statused or not isinstance(payload, bytes | bytearray):
            return
        try:
            st = self.status.decode(bytes(payload))  # counted, if bad, when it is handled
        except DecodeError:
            return
        if st.host == host and self.admit(host):
            self._statused.add(host)

    def _accept(self, codec: Codec[Any], host: str, topic_host: str, topic: str) -> bool:
        """Whether a decoded message may go on; a refusal is counted under its reason."""
        if host != topic_host:
            codec.drop("host_mismatch", topic, f"names host {host!r}")
        elif not self.admit(host):
            codec.drop("unknown_host", topic, f"{host!r} is not in [daemon] hosts")
        elif codec is self.status:
            self._statused.add(host)
            return True
        elif host not in self._statused and not self.known(host):
            codec.drop("no_status", topic, f"{host!r} has sent no status")
        else:
            return True
        return False

    async def _receive(self, client: aiomqtt.Client) -> None:
        parse = self.topics.parse
        async for message in client.messages:
            where = parse(message.topic.value)
            payload = message.payload
            if where is None or not isinstance(payload, bytes | bytearray):
                continue
            host, kind = where
            topic = message.topic.value
            msg: HostStatus | Event | None = None
            if kind == "status":
                msg = self.status.decode_or_drop(bytes(payload), topic)
                codec: Codec[Any] = self.status
            elif kind == "events":
                msg = self.events.decode_or_drop(bytes(payload), topic)
                codec = self.events
            if msg is not None and self._accept(codec, msg.host, host, topic):
                self.inbox.put_nowait(msg)


async def _until_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """Runs `work` until it ends (its errors propagate) or `stop` is set (it is cancelled)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        task.cancel()
    if task.done() and not task.cancelled():
        task.result()


def _inbound_queue(
    take: Callable[[aiomqtt.Message], bool],
) -> type[asyncio.Queue[aiomqtt.Message]]:
    """aiomqtt's incoming-message queue (its `queue_type` option) with a short cut: what
    `take` consumes never enters the queue. aiomqtt's message iterator costs a task and an
    `asyncio.wait` per message, a third of a core at 1,000 hosts' telemetry a second; paho
    reads on the event loop, so `take` runs there, synchronously, before anything else."""

    class Inbound(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            if not take(item):
                super().put_nowait(item)

    return Inbound


class _NoTopicCallbacks(MQTTMatcher):
    """paho's table of per-topic callbacks, which the daemon leaves empty: matching a message
    against it then finds nothing without paho's recursive closure, a reference cycle per
    message (1,000 a second at 1,000 hosts) that only the cyclic collector would free."""

    def iter_match(self, topic: str) -> Iterator[Any]:
        if not self._root._children:
            return iter(())
        return super().iter_match(topic)  # type: ignore[no-untyped-call,no-any-return]


def _no_topic_callbacks(client: aiomqtt.Client) -> None:
    paho = getattr(client, "_client", None)
    if type(getattr(paho, "_on_message_filtered", None)) is MQTTMatcher:
        paho._on_message_filtered = _NoTopicCallbacks()  # type: ignore[no-untyped-call,union-attr]
