"""The simulation harness: decisions applied as the daemon applies them (table tests)."""

from __future__ import annotations

import pytest

from dcsched.scheduler import (
    Decisions,
    QosLevel,
    RunningJob,
    SchedulerConfig,
    Snapshot,
    Start,
    Weights,
    decide,
)
from dcsched.scheduler.simulate import Cost, SimJob, Simulator, forecast
from tests.unit.scheduler.sched_builders import H, job, node, running, snap

# "high" may preempt preemptible "normal" jobs; 60 s grace
PREEMPTING = SchedulerConfig(qos={"high": QosLevel(priority=10, preempt=("normal",))})


def _long_and_urgent(long_s: float) -> list[SimJob]:
    return [
        SimJob(job("long", 8, submit=0.0, preemptible=True), long_s),
        SimJob(job("urgent", 8, submit=100.0, qos="high"), 50.0),
    ]


@pytest.mark.parametrize(
    ("cost", "long_finish", "lost_gpu_s"),
    [
        # signalled at 100, stops at 160 (grace); 900 s of work left + 300 s redone
        (Cost(300.0), 210.0 + 900.0 + 300.0, 8 * (300.0 + 60.0)),
        # checkpoints every 40 s: the 20 s since the last one are lost too
        (Cost(300.0, 40.0), 210.0 + 900.0 + 320.0, 8 * (320.0 + 60.0)),
        (Cost(0.0), 210.0 + 900.0, 8 * 60.0),
    ],
)
def test_preemption_with_grace_and_restart_cost(
    cost: Cost, long_finish: float, lost_gpu_s: float
) -> None:
    seen: list[tuple[float, Snapshot]] = []
    # a pass every 30 s: one sees the victim in its grace
    sim = Simulator([node("n0", gpu_type="sim")], PREEMPTING, cost, pass_interval_s=30.0)
    records = sim.run(_long_and_urgent(1000.0), lambda s, now, d: seen.append((now, s)))
    long, urgent = records["long"], records["urgent"]
    # the urgent job waits out the grace, while the victim is passed as terminating
    assert (urgent.first_start_s, urgent.finish_s) == (160.0, 210.0)
    assert any(r.job_id == "long" and r.terminating for _, s in seen for r in s.running)
    assert (long.first_start_s, long.finish_s, long.preemptions) == (0.0, long_finish, 1)
    assert long.lost_gpu_s == lost_gpu_s
    # back in the queue as the daemon requeues: same submit time, one more restart, and
    # the 160 s it held its GPUs as attained service
    requeued = [p for now, s in seen if now > 0 for p in s.pending if p.job_id == "long"]
    assert requeued and {(p.submit_ts, p.restarts, p.attained_s) for p in requeued} == {
        (0.0, 1, 160.0)
    }


def test_a_victim_whose_work_ends_within_the_grace_completes() -> None:
    records = Simulator([node("n0")], PREEMPTING, Cost(300.0)).run(_long_and_urgent(130.0))
    assert (records["long"].finish_s, records["long"].preemptions) == (130.0, 0)
    assert records["long"].lost_gpu_s == 0.0
    assert records["urgent"].first_start_s == 130.0


def test_usage_accrues_billed_gpu_seconds_through_fairshare() -> None:
    config = SchedulerConfig(billing={"H100": 2.5}, half_life_s=1e12)
    sim = Simulator([node("n0", gpu_type="H100"), node("n1", gpu_type="A10")], config)
    sim.run(
        [
            SimJob(job("h", 8, account="a", user="x", gpu_type="H100"), 100.0),
            SimJob(job("c", 2, account="b", user="y", gpu_type="A10"), 100.0),
        ]
    )
    assert sim.usage.gpu_seconds == {
        ("a", "x"): pytest.approx(8 * 100 * 2.5),
        ("b", "y"): pytest.approx(2 * 100 * 1.0),
    }


def test_no_usage_for_policies_that_ignore_it() -> None:
    sim = Simulator([node("n0")], SchedulerConfig(policy="greedy"))
    sim.run([SimJob(job("j", 1), 10.0)])
    assert sim.usage.gpu_seconds == {}


def test_a_start_on_gpus_that_are_not_free_is_an_error() -> None:
    def twice(snapshot: Snapshot, now: float) -> Decisions:
        return Decisions(tuple(Start(j.job_id, (("n0", (0,)),)) for j in snapshot.pending))

    sim = Simulator([node("n0")], SchedulerConfig(), decide_fn=twice)
    with pytest.raises(ValueError, match="not free"):
        sim.run([SimJob(job("a", 1), 10.0), SimJob(job("b", 1), 10.0)])


def test_periodic_passes_while_jobs_wait() -> None:
    times: list[float] = []
    sim = Simulator([node("n0", 1)], PREEMPTING, pass_interval_s=100.0)
    sim.run(
        [SimJob(job("a", 1), 350.0), SimJob(job("b", 1, submit=1.0), 10.0)],
        lambda s, now, d: times.append(now),
    )
    # no pass at 1.0: nothing could start or be preempted then
    assert times == [0.0, 101.0, 201.0, 301.0, 350.0]


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        Simulator([node("n0")], SchedulerConfig()).run([SimJob(job("a"), 1.0)] * 2)


def test_a_job_that_can_never_start_ends_the_run_with_periodic_passes() -> None:
    sim = Simulator([node("n0", 1)], SchedulerConfig(), pass_interval_s=10.0)
    records = sim.run([SimJob(job("huge", 8), 1.0), SimJob(job("ok", 1), 5.0)])
    assert records["huge"].first_start_s is None and records["ok"].finish_s == 5.0


def test_completed_runs_are_remembered_per_user_and_time_limit() -> None:
    """The run history `las` may estimate from (Snapshot.history), kept as dcd keeps it."""
    jobs = [
        SimJob(job("a", 1, submit=0.0, limit=3600.0), 100.0),
        SimJob(job("b", 1, submit=0.0, limit=3600.0), 200.0),
        SimJob(job("c", 1, submit=0.0, limit=7200.0, user="v"), 300.0),
        SimJob(job("d", 1, submit=500.0), 10.0),
    ]
    seen: list[Snapshot] = []
    sim = Simulator([node("n0")], SchedulerConfig())
    sim.run(jobs, lambda s, now, d: seen.append(s))
    assert seen[-1].history == {("u", 3600.0): (100.0, 200.0), ("v", 7200.0): (300.0,)}
    assert sim.history[("u", 3600.0)] == (100.0, 200.0, 10.0)


# The daemon's planning: the harness run forward from a snapshot, every job to its limit.
NOW = 10_000.0


def _cluster() -> Snapshot:
    half = node("n0", free=range(4, 8))  # GPUs 0-3 run `r` until NOW + 600 (its limit)
    pending = [
        job("whole", 8, submit=NOW - 50, limit=3 * H),  # first by age; needs all 8
        job("short", 4, submit=NOW - 10, limit=300.0),  # backfills before whole's start
        job("next", 8, submit=NOW - 5, limit=H),  # after whole's 3 h
        job("held", 1, submit=NOW - 60, held=True),
        job("never", 9, submit=NOW - 60),  # no node has 9 GPUs
    ]
    run = [running("r", {"n0": range(4)}, start=NOW - 3000, limit=3600.0)]
    return snap([half], pending, run, weights=Weights(job_size=0, fairshare=0))


@pytest.mark.parametrize(
    ("job_id", "expected"),
    [
        ("short", NOW),  # fits beside r and ends (by its limit) before whole may start
        ("whole", NOW + 600),  # r ends at its limit, and short before it
        ("next", NOW + 600 + 3 * H),
    ],
)
def test_forecast_runs_every_job_to_its_limit(job_id: str, expected: float) -> None:
    assert forecast(_cluster(), NOW, [job_id]) == {job_id: expected}


def test_forecast_leaves_out_what_never_starts_and_what_is_not_pending() -> None:
    got = forecast(_cluster(), NOW, ["held", "never", "r", "nosuch", "whole"])
    assert got == {"whole": NOW + 600}


def test_forecast_agrees_with_the_pass_for_the_reserved_job_and_bounds_its_passes() -> None:
    s = _cluster()
    assert decide(s, NOW).pending["whole"].est_start == NOW + 600
    assert forecast(s, NOW, ["next"], max_passes=1) == {}  # one pass: next is not started
    assert forecast(s, NOW, ["next"], give_up=lambda: True) == {}  # the caller's budget


def test_forecast_ends_overdue_and_terminating_jobs_after_the_grace() -> None:
    overdue = running("late", {"n0": range(8)}, start=NOW - 2 * H, limit=H)
    s = snap([node("n0", free=())], [job("j", 8, submit=NOW)], [overdue])
    grace = s.config.preempt_grace_s
    assert forecast(s, NOW, ["j"]) == {"j": NOW + grace}
    stopping = running("stop", {"n0": range(8)}, start=NOW - 60, limit=H, terminating=True)
    s = snap([node("n0", free=())], [job("j", 8, submit=NOW)], [stopping])
    assert forecast(s, NOW, ["j"]) == {"j": NOW + grace}


@pytest.mark.parametrize(
    ("config", "victim", "expected"),
    [
        # a QOS that preempts: urgent starts after the victim's grace, the victim requeued
        (
            PREEMPTING,
            running("long", {"n0": range(8)}, start=NOW - 60, limit=10 * H, preemptible=True),
            {"urgent": NOW + 60, "after": NOW + 60 + H},
        ),
        # las: the job that has run 5 h yields to the new one
        (
            SchedulerConfig(policy="las"),
            running("old", {"n0": range(8)}, start=NOW - 5 * H, limit=10 * H, preemptible=True),
            None,
        ),
    ],
)
def test_forecast_preempts_a_running_job_and_requeues_it(
    config: SchedulerConfig, victim: RunningJob, expected: dict[str, float] | None
) -> None:
    """A running job of the snapshot preempted in the forecast goes back to the queue (it
    was a KeyError: the simulator had no request for it)."""
    pending = [
        job(
            "urgent",
            8,
            submit=NOW,
            qos="high" if expected else "normal",
            preemptible=expected is None,
        ),
        job("after", 8, submit=NOW),
    ]
    s = Snapshot((node("n0", free=()),), tuple(pending), (victim,), config)
    got = forecast(s, NOW, ["urgent", "after"])
    assert got["urgent"] == NOW + config.preempt_grace_s
    if expected is not None:
        assert got == expected


@pytest.mark.parametrize(
    ("depends", "finished", "expected"),
    [
        ((("afterok", "r"),), {}, NOW + 600),  # r runs to its limit, taken as completed
        ((("afterany", "r"),), {}, NOW + 600),
        ((("after", "r"),), {}, NOW),  # r runs: holds now (4 GPUs free)
        ((("afterok", "done"),), {"done": "COMPLETED"}, NOW),  # already held
        ((("afterok", "done"),), {"done": "FAILED"}, None),  # never
        ((("afternotok", "r"),), {}, None),  # r is taken to complete: never
        ((("afterok", "first"),), {}, NOW + 600 + H),  # a chain: after first, after r
    ],
)
def test_forecast_follows_dependencies(
    depends: tuple[tuple[str, str], ...], finished: dict[str, str], expected: float | None
) -> None:
    """Dependencies on jobs that end within the forecast hold once they end (they were
    never met: the harness passed no `finished` on, and every dependent job had no time)."""
    pending = [
        job("first", 8, submit=NOW - 10),
        job("dep", 4, submit=NOW, depends=depends),
    ]
    run = [running("r", {"n0": range(4)}, start=NOW - 3000, limit=3600.0)]
    s = snap([node("n0", free=range(4, 8))], pending, run, finished=finished)
    assert forecast(s, NOW, ["dep"]).get("dep") == expected
