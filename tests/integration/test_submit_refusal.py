"""What can never run is refused at submit with the numbers; `explain` gives numbers for
every reason (asked vs free, use vs limit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dcsched.client import ApiError, Client
from tests.conftest import Broker
from tests.integration.daemon_harness import (
    ScriptedAgent,
    api,
    run_on,
    running_daemon,
    until,
    write_config,
)


def _spec(name: str, nodes: int = 1, gpus: int = 1, **kw: Any) -> dict[str, Any]:
    res = {"nodes": nodes, "gpus_per_node": gpus, "time_limit": "1h"}
    res.update(kw.pop("resources", {}))
    return {"name": name, "command": ["t.py"], "workdir": "/tmp", "resources": res, **kw}


async def test_impossible_requests_are_refused_with_numbers_and_explain_has_numbers(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    sched = "[scheduler.limits]\nmax_gpus_per_user = 3\n"
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix, sched)) as d,
        ScriptedAgent(mosquitto, prefix, "n1", gpus=2) as a1,
        ScriptedAgent(mosquitto, prefix, "n2", gpus=2),
    ):
        c = Client(d.config.daemon.socket)
        await until(lambda: len(d.cluster.nodes) == 2, what="both nodes known")
        with pytest.raises(ApiError, match="the largest node has 2") as err:
            await api(c, "submit", _spec("wide", gpus=16))
        assert err.value.details["problems"][0]["key"] == "resources"
        with pytest.raises(ApiError, match="the cluster has 2 nodes with at least 1 GPUs"):
            await api(c, "submit", _spec("many", nodes=3))
        with pytest.raises(ApiError, match=r"GPU type .B200.; the cluster has H100 \(2 nodes"):
            await api(c, "submit", _spec("typed", resources={"gpu_type": "B200"}))
        # an admin (the tests run as root) may queue it anyway: forced, or held
        forced = await api(c, "submit", _spec("forced", gpus=16), force=True)
        held = await api(c, "submit", _spec("held", gpus=16, hold=True))
        why = await api(c, "explain", forced)
        assert "BadConstraints" in why["reasons"]
        assert any("the largest node has 2" in t for t in why["details"])
        assert (await api(c, "job", held))["state"] == "HELD"

        first = await api(c, "submit", _spec("first", gpus=2))
        await run_on(a1, c, first)
        capped = await api(c, "submit", _spec("capped", gpus=2))
        await until(lambda: _has_reason(c, capped, "AssocMaxGRESPerUser"))
        why = await api(c, "explain", capped)
        text = dict(zip(why["reasons"], why["details"], strict=True))
        assert "runs 2 GPUs, asks 2 more; the limit is 3" in text["AssocMaxGRESPerUser"]


async def _has_reason(c: Client, job: int, reason: str) -> bool:
    return reason in (await api(c, "explain", job))["reasons"]
