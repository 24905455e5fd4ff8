"""The daemon's MQTT client matches incoming messages against paho's per-topic callbacks
(none) without making a reference cycle per message, and still finds any that are added."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import aiomqtt

from dcsched.daemon.bus import _no_topic_callbacks


def test_no_garbage_cycle_per_message_and_callbacks_still_match() -> None:
    async def check() -> None:
        client = aiomqtt.Client("127.0.0.1", 1883)  # never connected
        _no_topic_callbacks(client)
        table: Any = client._client._on_message_filtered  # paho's, untyped
        gc.collect()
        gc.disable()
        try:
            for _ in range(100):
                assert list(table.iter_match("dcsched/v1/hosts/n1/telemetry")) == []
            assert gc.collect() == 0
        finally:
            gc.enable()
        table["dcsched/v1/hosts/+/status"] = "cb"
        assert list(table.iter_match("dcsched/v1/hosts/n1/status")) == ["cb"]
        assert list(table.iter_match("dcsched/v1/hosts/n1/telemetry")) == []

    asyncio.run(check())
