"""Fair-share usage (decay, charge, accrue), factors and the sshare-like report."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sched_builders import job, node, running, snap

from dcsched.scheduler import (
    AccountConfig,
    SchedulerConfig,
    Usage,
    accrue,
    charge,
    decay,
    fairshare_report,
)
from dcsched.scheduler.fairshare import factors, warmup
from dcsched.scheduler.sort import factors as sort_factors
from dcsched.scheduler.sort import sort_jobs

DAY = 86400.0


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [(0.0, 100.0), (7 * DAY, 50.0), (14 * DAY, 25.0), (-DAY, 100.0)],
)
def test_decay_halves_every_half_life(elapsed: float, expected: float) -> None:
    u = Usage(10.0, {("a", "u"): 100.0})
    got = decay(u, 10.0 + elapsed, 7 * DAY)
    assert got.gpu_seconds[("a", "u")] == pytest.approx(expected)


def test_charge_decays_first_then_adds() -> None:
    u = charge(Usage(0.0, {("a", "u"): 100.0}), DAY, "a", "u", 10.0, DAY)
    assert u.ts == DAY
    assert u.gpu_seconds[("a", "u")] == pytest.approx(60.0)


def test_accrue_bills_running_jobs_since_the_last_call_by_gpu_type() -> None:
    cfg = SchedulerConfig(billing={"H100": 2.0}, half_life_s=1e18)
    run = [
        running("r1", {"n": [0, 1]}, start=0.0, gpu_type="H100"),
        running("r2", {"n": [2]}, start=50.0, account="b", gpu_type="A100"),
    ]
    u = accrue(Usage(0.0), run, 100.0, cfg)
    assert u.gpu_seconds[("a", "u")] == pytest.approx(2 * 100 * 2.0)
    assert u.gpu_seconds[("b", "u")] == pytest.approx(50.0)
    # a second call only charges the time since the first
    u2 = accrue(u, run, 110.0, cfg)
    assert u2.gpu_seconds[("a", "u")] == pytest.approx(2 * 110 * 2.0)


def test_usage_round_trips_through_json() -> None:
    u = Usage(5.0, {("a", "u1"): 1.5, ("a", "u2"): 2.0, ("b", "x"): 0.0})
    assert Usage.from_dict(json.loads(json.dumps(u.to_dict()))) == u
    with pytest.raises(ValueError, match="usage"):
        Usage.from_dict({"ts": 1.0})


def test_factor_is_half_at_exactly_the_share_and_one_when_unused() -> None:
    cfg = SchedulerConfig(accounts={"a": AccountConfig(shares=1), "b": AccountConfig(shares=1)})
    f = factors(cfg, Usage(0.0, {("a", "u"): 50.0, ("b", "v"): 50.0}), 0.0, [("a", "u")])
    assert f[("a", "u")] == pytest.approx(0.5)
    f = factors(cfg, Usage(0.0, {("a", "u"): 0.0, ("b", "v"): 50.0}), 0.0, [("a", "u")])
    assert f[("a", "u")] == pytest.approx(1.0)


def test_report_rows_like_sshare() -> None:
    cfg = SchedulerConfig(
        accounts={"vision": AccountConfig(shares=3, users={"alice": 1, "bob": 1})}
    )
    usage = Usage(0.0, {("vision", "alice"): 30.0, ("nlp", "carol"): 10.0})
    rep = fairshare_report(cfg, usage, 0.0)
    rows = {(r.account, r.user): r for r in rep.rows}
    assert [(r.account, r.user) for r in rep.rows] == [
        ("nlp", ""),
        ("nlp", "carol"),
        ("vision", ""),
        ("vision", "alice"),
        ("vision", "bob"),
    ]
    assert rows[("vision", "")].norm_shares == pytest.approx(0.75)
    assert rows[("vision", "alice")].norm_shares == pytest.approx(0.375)
    assert rows[("vision", "")].norm_usage == pytest.approx(0.75)
    # bob used nothing but shares the account's usage: better than alice, below 1
    assert rows[("vision", "alice")].fairshare < rows[("vision", "bob")].fairshare < 1.0
    assert json.loads(json.dumps(rep.to_dict()))["rows"][0]["account"] == "nlp"


@given(st.dictionaries(st.sampled_from("abc"), st.floats(0, 1e9), min_size=1))
def test_factors_in_unit_interval_and_ordered_by_usage(used: dict[str, float]) -> None:
    usage = Usage(0.0, {(a, "u"): v for a, v in used.items()})
    f = factors(SchedulerConfig(), usage, 0.0, [(a, "u") for a in used])
    for a, v in used.items():
        assert 0.0 < f[(a, "u")] <= 1.0
        for b, w in used.items():
            if v < w:
                assert f[(a, "u")] >= f[(b, "u")]


# Fair-share weighs in as usage accumulates (fairshare.warmup): on a cluster of 8 GPUs with
# a 7-day half-life it counts fully from 8 x 7 d / 4 = 14 GPU-days of (decayed) usage. Below
# that, minutes of one job must not outweigh an earlier submit (tiny60: a8's 8-GPU jobs went
# by which user had run a 3-minute job, 5 s behind greedy).
FULL = 8 * 7 * DAY / 4


@pytest.mark.parametrize(
    ("other", "early_used", "late_used", "expected"),
    [
        (0.0, 0.0, 0.0, ["early", "late"]),  # nobody ran yet: submit order (age)
        (18000.0, 8 * 147.0, 0.0, ["early", "late"]),  # minutes of usage: still noise
        (FULL, 8 * 147.0, 0.0, ["early", "late"]),  # a small share of a full history
        (FULL, 0.2 * FULL, 0.0, ["late", "early"]),  # early's user used a fifth of it
        (FULL, 0.2 * FULL, 0.2 * FULL, ["early", "late"]),  # both the same: submit order
        (FULL, 0.0, 0.2 * FULL, ["early", "late"]),
        # the same shares of a hundredth of that history count a hundredth as much
        (FULL / 100, 0.002 * FULL, 0.0, ["early", "late"]),
    ],
)
def test_users_go_by_their_usage_once_it_says_something(
    other: float, early_used: float, late_used: float, expected: list[str]
) -> None:
    usage = Usage(
        3600.0,
        {("a1", "u0"): other, ("a8", "u1"): early_used, ("a8", "u2"): late_used},
    )
    pending = [
        job("early", 8, submit=944.0, user="u1", account="a8"),
        job("late", 8, submit=1008.0, user="u2", account="a8"),
    ]
    s = snap([node("n")], pending, config=SchedulerConfig(policy="las"), usage=usage)
    assert [j.job_id for _, j in sort_jobs(s, 3600.0)] == expected


def test_warmup_grows_with_usage_and_the_report_is_slurms() -> None:
    cfg = SchedulerConfig()
    usage = Usage(0.0, {("a", "u"): FULL / 2, ("b", "v"): 0.0})
    assert warmup(cfg, usage, 0.0, 8) == pytest.approx(0.5)
    assert warmup(cfg, usage, 0.0, 4) == 1.0  # half the GPUs: the same usage is a full one
    assert warmup(cfg, Usage(), 0.0, 8) == 0.0
    raw = factors(cfg, usage, 0.0, [("a", "u")])  # gpus=0: Slurm's factor, as sshare shows
    damped = factors(cfg, usage, 0.0, [("a", "u")], gpus=8)
    assert damped[("a", "u")] == pytest.approx(1 - 0.5 * (1 - raw[("a", "u")]))
    row = next(r for r in fairshare_report(cfg, usage, 0.0).rows if r.user == "u")
    assert row.fairshare == raw[("a", "u")]


@pytest.mark.parametrize("billing", [{}, {"H100": 0.5}, {"H100": 2.0}])
def test_the_warmup_measures_the_cluster_in_billed_gpus(billing: dict[str, float]) -> None:
    """Usage is billed GPU-seconds: a cluster billed at 0.5 needed twice the use before its
    fair-share counted fully (damped by half at FULL's GPU-hours)."""
    b = billing.get("H100", 1.0)
    usage = Usage(3600.0, {("a1", "u0"): b * 0.8 * FULL, ("a8", "u1"): b * 0.2 * FULL})
    cfg = SchedulerConfig(policy="las", billing=billing)
    s = snap([node("n")], [job("j", 8, user="u1", account="a8")], config=cfg, usage=usage)
    got = {f.name: f.value for f in sort_factors(s, 3600.0, s.pending[0])}
    slurm = factors(cfg, usage, 3600.0, [("a8", "u1")])[("a8", "u1")]
    assert got["fairshare"] == pytest.approx(slurm) and slurm < 1.0
