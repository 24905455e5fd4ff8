"""Bad input against a real daemon (real broker, SQLite file, Unix socket): HTTP requests
with broken bodies, paths and queries, and broken messages of every kind through the bus's
codecs into the daemon's handlers. Every refusal is a 4xx with a JSON error or a counted
drop; no request gets a 500, no handler raises, no job is lost."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dcsched.client import Client, UnixConnection
from dcsched.daemon.events import EventHub
from dcsched.daemon.service import Daemon
from dcsched.protocol.codec import encode
from dcsched.protocol.messages import Ack, Telemetry
from tests.conftest import Broker
from tests.fuzz.strategies import FUZZ, broken_message, json_values, mutated, nasty_text
from tests.fuzz.test_fuzz_protocol import GOOD_SPEC
from tests.integration.daemon_harness import (
    ScriptedAgent,
    api,
    run_on,
    running_daemon,
    until,
    write_config,
)

ROUTES = [
    ("GET", "/v1/health"),
    ("GET", "/v1/whoami"),
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("POST", "/v1/jobs/{job_id}/cancel"),
    ("POST", "/v1/jobs/{job_id}/hold"),
    ("POST", "/v1/jobs/{job_id}/release"),
    ("POST", "/v1/jobs/{job_id}/requeue"),
    ("GET", "/v1/jobs/{job_id}/logs"),
    ("GET", "/v1/jobs/{job_id}/explain"),
    ("GET", "/v1/fairshare"),
    ("GET", "/v1/nodes"),
    ("GET", "/v1/nodes/{host}/history"),
    ("GET", "/v1/nodes/{host}/drains"),
    ("POST", "/v1/nodes/{host}/drain"),
    ("POST", "/v1/nodes/{host}/resume"),
    ("GET", "/v1/gpus"),
    ("GET", "/v1/cluster"),
    ("GET", "/v1/audit"),
    ("DELETE", "/v1/jobs/{job_id}"),
    ("GET", "/v1/nope"),
]
QUERY_KEYS = ["state", "all", "user", "limit", "node", "offset", "max_bytes", "since", "before"]
ids = st.sampled_from(["1", "2", "0", "-1", "999999999", "9" * 25, "1.5", "%00"]) | nasty_text
bodies = st.one_of(
    st.none(),
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    mutated(GOOD_SPEC).map(lambda v: json.dumps(v).encode()),
    st.integers(100, 100_000).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from([b'{"reason": "\\ud800"}', b'{"name": NaN}', b"\xff\xfe", b"{}" * 3]),
)


def _quoted(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes | None]:
    method, path = draw(st.sampled_from(ROUTES))
    path = path.replace("{job_id}", _quoted(draw(ids))).replace(
        "{host}", _quoted(draw(nasty_text) or "h")
    )
    query = draw(st.dictionaries(st.sampled_from(QUERY_KEYS), nasty_text, max_size=3))
    if query:
        path += "?" + urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in query.items()})
    if (method, path) == ("POST", "/v1/jobs") and draw(st.booleans()):
        return method, path, json.dumps(draw(st.just(GOOD_SPEC) | mutated(GOOD_SPEC))).encode()
    return method, path, draw(bodies)


def _send(sock: str, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
    conn = UnixConnection(sock, 30.0)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


async def test_no_request_gets_a_500_and_no_job_is_lost(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix)
    async with running_daemon(conf) as d:
        sock = d.config.daemon.socket
        client = Client(sock)
        await api(client, "submit", {**GOOD_SPEC, "dependency": []})
        accepted: list[int] = []
        seen: Counter[int] = Counter()

        @FUZZ
        @given(requests())
        def one(req: tuple[str, str, bytes | None]) -> None:
            method, path, body = req
            status, raw = _send(sock, method, path, body)
            seen[status] += 1
            assert status < 500, (status, raw[:300])
            if status >= 400:
                err = json.loads(raw)["error"]
                assert isinstance(err["code"], str) and isinstance(err["message"], str)
                assert err["message"]
            elif method == "POST" and path == "/v1/jobs":
                accepted.append(int(json.loads(raw)["job_id"]))

        await asyncio.to_thread(one)
        assert seen[200] and seen[400] and seen[404]  # it reached handlers, and refusals
        listed = {j["id"] for j in await api(client, "jobs", all_states=True)}
        assert set(accepted) <= listed
        assert (await api(client, "health"))["ok"]


# Numbers past what SQLite stores (msgspec reads ints up to 2**64 - 1).
_HUGE_MEM = (
    b'{"type":"telemetry","v":1,"host":"h1","ts":1.0,"seq":9,'
    b'"gpus":[{"index":0,"uuid":"u0","mem_used":18446744073709551615}]}'
)
_HUGE_PID = (
    b'{"type":"job_started","v":1,"host":"h1","job_id":"1","node_rank":0,'
    b'"pid":18446744073709551615,"ts":1.0}'
)


async def test_broken_messages_are_dropped_or_handled_never_raised(
    tmp_path: Path, mosquitto: Broker, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix)
    async with running_daemon(conf) as d, ScriptedAgent(mosquitto, prefix, "h1") as agent:
        client = Client(d.config.daemon.socket)
        one_node = {**GOOD_SPEC, "dependency": [], "resources": {"nodes": 1, "gpus_per_node": 1}}
        job_id = await api(client, "submit", one_node)
        await run_on(agent, client, job_id)
        pending = await api(client, "submit", {**one_node, "resources": {"nodes": 50}}, force=True)
        loop = asyncio.get_running_loop()

        handled: Counter[str] = Counter()

        @FUZZ
        @example(_HUGE_MEM, "h1")
        @example(_HUGE_PID, "h1")
        @example(_HUGE_MEM.replace(b"18446744073709551615", b"9223372036854775807"), "h1")
        @given(broken_message(), st.sampled_from(["h1", "h2"]))
        def one(payload: bytes, topic_host: str) -> None:
            work = _deliver(d, topic_host, payload)
            kind = asyncio.run_coroutine_threadsafe(work, loop).result(30)
            handled[kind] += 1
            # What was taken in can be saved: one host's odd numbers must not fail the
            # telemetry flush of every host.
            asyncio.run_coroutine_threadsafe(d._flush_once(), loop).result(30)

        await asyncio.to_thread(one)
        assert handled["dropped"] and handled["handled"]
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors]  # no tracebacks logged either
        states = {j["id"]: j["state"] for j in await api(client, "jobs", all_states=True)}
        assert set(states) == {job_id, pending}  # none lost, none invented
        assert (await api(client, "health"))["ok"]


async def _deliver(d: Daemon, host: str, payload: bytes) -> str:
    """What the bus does with a payload on `host`'s topics, then the daemon's handler:
    decode or count a drop; a message naming another host than its topic is not handled."""
    bus = d.bus
    out = "dropped"
    for codec in (bus.telemetry, bus.status, bus.events):
        msg: Any = codec.decode_or_drop(payload, f"{host}/fuzz")
        if msg is None or not bus._accept(codec, msg.host, host, f"{host}/fuzz"):
            continue
        out = "handled"
        if isinstance(msg, Telemetry):
            d.ingest.handle(msg)
        else:
            await d._handle(msg)
    return out


async def test_a_message_naming_another_host_than_its_topic_is_counted(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix)
    async with running_daemon(conf) as d, ScriptedAgent(mosquitto, prefix, "h1") as agent:
        client = Client(d.config.daemon.socket)
        ghost = msgspec.structs.replace(agent.status(), host="ghost")
        await agent.raw("status", encode(ghost))
        await agent.raw("events", encode(Ack(host="ghost", cmd_id="c", job_id="1")))
        await until(
            lambda: d.bus.status.dropped["host_mismatch"] and d.bus.events.dropped["host_mismatch"],
            what="host_mismatch drops",
        )
        dropped = (await api(client, "cluster"))["telemetry"]["dropped"]
        assert dropped["status"] == {"host_mismatch": 1}
        assert dropped["events"] == {"host_mismatch": 1}
        assert "ghost" not in d.cluster.nodes


@FUZZ
@given(st.one_of(nasty_text, st.integers().map(str), st.integers().map(lambda n: f"E-{n}")))
def test_any_event_cursor_resumes_or_resets(cursor: str) -> None:
    hub = EventHub(ring=4)
    hub.epoch = "E"
    for i in range(10):
        hub.publish("job", {"id": i})
    out = hub.since(cursor)
    if out:  # what follows the cursor, in order, to the newest; else [] (up to date) or None
        assert [c.seq for c in out] == list(range(out[0].seq, 11))
