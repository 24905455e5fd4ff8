"""Bad commands against an agent with a cluster key: whatever arrives on its command topic
without a valid signature (garbage, any message, a forged or broken envelope) is dropped and
counted; nothing is answered, launched or raised."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from dcsched.protocol.codec import encode
from dcsched.protocol.config import Config
from tests.fuzz.strategies import FUZZ, broken_message, mutated
from tests.unit.agents.helpers import FakeClient, launch, make_agent


async def test_commands_without_a_valid_signature_are_dropped_and_counted(
    tmp_path: Path, agent_config: Config
) -> None:
    agent = make_agent(agent_config, tmp_path, key=True)
    # A forged envelope, built by hand: what a rogue client without the key can send.
    envelope = {
        "type": "signed",
        "ts": time.time(),
        "nonce": "n" * 24,
        "host": "unit",
        "body": base64.b64encode(encode(launch(tmp_path, ["true"]))).decode(),
        "mac": "0" * 64,
    }
    loop = asyncio.get_running_loop()
    seen = {"payloads": 0}

    @FUZZ
    @example(json.dumps({**envelope, "mac": "\u0080"}).encode())  # once raised TypeError
    @given(
        st.one_of(
            st.binary(max_size=300),
            broken_message(),
            mutated(envelope).map(lambda e: json.dumps(e).encode()),
        )
    )
    def one(payload: bytes) -> None:
        client = FakeClient([payload])
        before = sum(agent.dropped.values())
        asyncio.run_coroutine_threadsafe(agent._receive(client), loop).result(30)  # type: ignore[arg-type]
        assert sum(agent.dropped.values()) == before + 1
        assert client.published == []
        seen["payloads"] += 1

    await asyncio.to_thread(one)
    assert seen["payloads"] > 0 and not agent.jobs
    assert not list((tmp_path / "state").glob("logs/*"))  # nothing was launched
