"""The `las` policy: least-attained-service preemption only where it pays."""

from __future__ import annotations

from collections.abc import Iterable
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


# the victim's user ran jobs of its 24 h limit for 10 h and 20 h; the pending job's user
# ran 1 h-limit jobs of 10 minutes
RUNS = {("u", 24 * H): (2 * H, 3 * H, 10 * H, 20 * H), ("p", H): (600.0,) * 4}


@pytest.mark.parametrize(
    ("ran", "victim_gpus", "history", "want"),
    [
        # no history: served 1.1 h, 1 GPU x 1.1 h does not pay for 16 GPUs' restart
        (1.1 * H, 16, {}, False),
        # history: served 1.1 h, expected E[run - 1.1 h | run > 1.1 h] = 7.65 h more: pays
        (1.1 * H, 16, RUNS, True),
        # served 3 h, expected 12 h more; charged the pending job's 10 minutes: still pays
        (3 * H, 8, RUNS, True),
        # the pending job's expected run is charged: 1 GPU x 12 h < 64 GPUs x (6 min + 10 min)
        (3 * H, 64, RUNS, False),
        # outlived every recorded run: no estimate, back to what it has had, capped by
        # what its limit leaves (3 h): pays for 8 GPUs x 16 min, not for 16
        (21 * H, 8, RUNS, True),
        (21 * H, 16, RUNS, False),
    ],
)
def test_worth_it_from_history(
    ran: float, victim_gpus: int, history: dict[tuple[str, float], tuple[float, ...]], want: bool
) -> None:
    nodes: dict[str, Iterable[int]] = {f"n{i}": range(8) for i in range(victim_gpus // 8)}
    v = running("v", nodes, start=NOW - ran, limit=24 * H, preemptible=True)
    j = job("p", 1, limit=H, user="p")
    assert worth_it(j, v, NOW, replace(LAS, min_run_s=H), history) is want


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
    assert e.details == (
        "preempted for job short (policy las): served 8 GPU(s) x 5.0 h > job short's 1 x 0 s;"
        " ran 5.0 h >= min_run 1.0 h; preemption 1 of at most 1; its time limit leaves 19.0 h"
        " > job short's 1.0 h; expected gain 1 GPU(s) x 5.0 h (no history: what it has had,"
        " capped by its limit) > cost 8 GPU(s) x 360 s (restart 300 s + grace 60 s + job"
        " short's expected run 0 s)",
    )
    assert explain(s, NOW, "short").preempts == ("long",)
    # with history: the victim's user's runs of this limit give the expected gain, the
    # pending job's user's runs its expected run
    runs = {("u", 24 * H): (10 * H, 20 * H, 2 * H, 3 * H), ("u", H): (600.0,) * 4}
    on = replace(LAS, use_history=True)
    e = explain(replace(s, history=runs, config=on), NOW, "long")
    assert "expected gain 1 GPU(s) x 10.0 h (from u's last 4 runs of this limit)" in e.details[0]
    assert "short's expected run 600 s)" in e.details[0]
    # not asked for (use_history = false): the history is not used
    assert "no history" in explain(replace(s, history=runs), NOW, "long").details[0]
