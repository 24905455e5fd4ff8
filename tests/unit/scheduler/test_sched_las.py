"""The `las` policy: least-attained-service preemption only where it pays."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dcsched.scheduler import SchedulerConfig, decide, explain
from dcsched.scheduler.preempt import worth_it
from dcsched.scheduler.simulate import Cost, SimJob, Simulator
from tests.unit.scheduler.sched_builders import H, job, node, running, snap

LAS = SchedulerConfig(policy="las", min_run_s=H, preempt_cost_s=300.0, max_preemptions=1)
NOW = 10 * H


@pytest.mark.parametrize(
    ("victim", "pending", "want"),
    [
        # ran 3 h of a 24 h limit: a 1-GPU, 1 h job may take its GPU
        ({}, {}, True),
        # ran less than min_run in this run
        ({"start": NOW - 0.5 * H}, {}, False),
        # already preempted as often as allowed
        ({"restarts": 1}, {}, False),
        # the pending job's limit does not end before the victim's
        ({"limit": 4 * H}, {"limit": 2 * H}, False),
        # the pending job has had more service than the victim
        ({}, {"attained_s": 4 * H}, False),
        # 1 GPU x 3 h of expected wait saved pays for 8 GPUs x (300 s + 60 s grace)
        ({"gpus": 8}, {}, True),
        # but 1.1 h saved does not pay for 16 GPUs' restart
        ({"gpus": 16, "start": NOW - 1.1 * H}, {}, False),
    ],
)
def test_worth_it(victim: dict[str, float], pending: dict[str, float], want: bool) -> None:
    gpus = int(victim.get("gpus", 1))
    v = running(
        "v",
        {"n0": range(gpus)},
        start=victim.get("start", NOW - 3 * H),
        limit=victim.get("limit", 24 * H),
        preemptible=True,
    )
    v = replace(v, restarts=int(victim.get("restarts", 0)))
    j = job("p", 1, limit=pending.get("limit", H), attained_s=pending.get("attained_s", 0.0))
    assert worth_it(j, v, NOW, LAS) is want


def test_decide_preempts_a_long_runner_for_a_short_job_and_says_why() -> None:
    v = running("long", {"n0": range(8)}, start=NOW - 3 * H, limit=24 * H, preemptible=True)
    s = snap([node("n0", free=())], [job("short", 1, limit=H, submit=NOW)], [v], config=LAS)
    d = decide(s, NOW)
    assert d.preempt == ("long",)
    assert [r.job_id for r in d.reservations] == ["short"]
    # not a preemptible job, or under `default`: nothing
    assert decide(replace(s, running=(replace(v, preemptible=False),)), NOW).preempt == ()
    assert decide(replace(s, config=replace(LAS, policy="default")), NOW).preempt == ()


def test_in_the_harness_a_short_job_overtakes_and_the_victim_resumes_once() -> None:
    jobs = [
        SimJob(job("long", 8, limit=72 * H, preemptible=True), 20 * H),
        *(
            SimJob(job(f"s{i}", 8, submit=(2 + i) * H, limit=H, preemptible=True), 0.5 * H)
            for i in range(3)
        ),
    ]
    config = replace(LAS, preempt_grace_s=60.0)
    records = Simulator([node("n0")], config, Cost(300.0)).run(jobs)
    # the first short job preempts (after min_run); the cap keeps later ones waiting
    assert records["long"].preemptions == 1
    assert records["s0"].first_start_s == 2 * H + 60
    assert records["s1"].first_start_s == records["long"].finish_s
    assert records["long"].lost_gpu_s == 8 * (300 + 60)
    assert records["long"].finish_s == 2 * H + 60 + 0.5 * H + (20 * H - 2 * H) + 300


def test_reserve_after_lets_lower_jobs_use_the_gpus_meanwhile() -> None:
    busy = running("r", {"n0": range(4)}, start=NOW - 600, limit=H)
    pending = [job("big", 8, submit=NOW - 600, limit=H), job("small", 4, submit=NOW, limit=2 * H)]
    config = SchedulerConfig(reserve_after_s=1800.0, weights=replace(LAS.weights, job_size=0))
    d = decide(snap([node("n0", free=range(4, 8))], pending, [busy], config=config), NOW)
    assert [s.job_id for s in d.starts] == ["small"] and d.reservations == ()
    held = decide(snap([node("n0", free=range(4, 8))], pending, [busy]), NOW)
    assert held.starts == () and held.reservations[0].job_id == "big"


def test_explain_says_why_a_running_job_is_preempted() -> None:
    v = running("long", {"n0": range(8)}, start=NOW - 5 * H, limit=24 * H, preemptible=True)
    s = snap([node("n0", free=())], [job("short", 1, limit=H, submit=NOW)], [v], config=LAS)
    e = explain(s, NOW, "long")
    assert e.state == "running"
    assert e.details and e.details[0].startswith("preempted for job short: it has had more")
    assert explain(s, NOW, "short").preempts == ("long",)
