"""schemathesis against the OpenAPI description the daemon serves (`/v1/openapi.json`), over
its Unix socket: no 500s, every answer's status, content type and body as described."""

from __future__ import annotations

import asyncio
import functools
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcsched.client import Client
from tests.conftest import Broker
from tests.fuzz.test_fuzz_protocol import GOOD_SPEC
from tests.integration.daemon_harness import (
    ScriptedAgent,
    api,
    running_daemon,
    until,
    write_config,
)

schemathesis = pytest.importorskip("schemathesis")
requests = pytest.importorskip("requests")
urllib3 = pytest.importorskip("urllib3")
from schemathesis import checks as st_checks  # noqa: E402


def unix_session(path: str) -> Any:
    """A requests session whose connections go to the daemon's Unix socket."""

    class Conn(urllib3.connection.HTTPConnection):  # type: ignore[misc]
        def _new_conn(self) -> socket.socket:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            s.connect(path)
            return s

    class Pool(urllib3.HTTPConnectionPool):  # type: ignore[misc]
        ConnectionCls = Conn

    class Adapter(requests.adapters.HTTPAdapter):  # type: ignore[misc]
        def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> Any:
            return Pool("localhost")

    session = requests.Session()
    session.mount("http://dcd/", Adapter())
    return session


CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
]


async def test_the_api_keeps_to_its_openapi_description(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix)
    async with running_daemon(conf) as d:
        client = Client(d.config.daemon.socket)
        await api(client, "submit", {**GOOD_SPEC, "dependency": []})  # job 1 exists
        doc = await api(client, "request", "GET", "/v1/openapi.json")
        schema = schemathesis.openapi.from_dict(doc)
        ops = [
            r.ok()
            for r in schema.get_all_operations()
            if r.ok().path != "/v1/events"  # a stream that does not end
        ]
        session = unix_session(d.config.daemon.socket)

        @settings(
            max_examples=200,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.data())
        def one(data: st.DataObject) -> None:
            op = data.draw(st.sampled_from(ops))
            case = data.draw(op.as_strategy())
            case.call_and_validate(base_url="http://dcd", session=session, checks=CHECKS)

        await asyncio.to_thread(one)
        assert (await api(client, "health"))["ok"]

        # The node and GPU views, with a node to show: every answer as described.
        async with ScriptedAgent(mosquitto, prefix, "h1"):
            await until(lambda: "h1" in d.cluster.nodes, what="node h1")
            await api(client, "node_action", "h1", "drain", "fuzz")
            for path, params in (
                ("/v1/nodes", {}),
                ("/v1/gpus", {}),
                ("/v1/nodes/{host}/drains", {"host": "h1"}),
                ("/v1/jobs/{job_id}", {"job_id": 1}),
                ("/v1/audit", {}),
            ):
                case = schema[path]["GET"].Case(path_parameters=params)
                call = functools.partial(
                    case.call_and_validate, base_url="http://dcd", session=session, checks=CHECKS
                )
                assert (await asyncio.to_thread(call)).status_code == 200
