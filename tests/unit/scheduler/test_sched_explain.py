"""explain(): every factor, every reason, the estimated start; JSON-friendly."""

from __future__ import annotations

import json

import pytest
from sched_builders import H, busy, job, node, running, snap

from dcsched.scheduler import explain


def test_explain_lists_every_reason_and_every_factor() -> None:
    s = snap(
        [busy("a")],
        [job("j", 4, held=True, depends=(("afterok", "r"),))],
        [running("r", {"a": range(8)}, limit=2 * H)],
    )
    e = explain(s, 0.0, "j")
    assert e.state == "pending"
    # held, a dependency and no free GPUs: all three, hold first
    assert e.reasons == ("JobHeldUser", "Dependency", "Resources")
    assert [f.name for f in e.factors] == ["age", "fairshare", "job_size", "qos", "nice"]
    assert e.priority == pytest.approx(sum(f.contribution for f in e.factors))
    assert e.est_start is None
    assert not e.starving
    assert explain(s, 6 * 86400.0, "j").starving
    d = json.loads(json.dumps(e.to_dict()))
    assert d["reasons"] == ["JobHeldUser", "Dependency", "Resources"]
    assert d["factors"][0]["name"] == "age"


def test_explain_estimates_even_beyond_the_backfill_depth() -> None:
    pending = [job(f"j{i}", 8, submit=float(i), limit=H) for i in range(5)]
    s = snap([busy("a")], pending, [running("r", {"a": range(8)}, limit=2 * H)], backfill_depth=1)
    e = explain(s, 0.0, "j4")
    assert e.reasons == ("Resources",)
    # after the one held reservation (j0 over [2 h, 3 h)); j1..j3 hold nothing
    assert e.est_start == 3 * H
    assert e.rank == 5 and e.queue_length == 5
    assert explain(s, 0.0, "j0").reservation == (("a", 8),)


def test_explain_a_job_that_would_start_and_a_running_one() -> None:
    s = snap([node("a", 8, range(4, 8))], [job("j", 2)], [running("r", {"a": range(4)})])
    assert explain(s, 0.0, "j").state == "starting"
    assert explain(s, 0.0, "r").state == "running"
    with pytest.raises(KeyError):
        explain(s, 0.0, "nope")
