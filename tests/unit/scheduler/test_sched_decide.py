"""decide(): the whole pipeline, as table tests and Hypothesis properties."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sched_builders import H, busy, job, node, running, snap

from dcsched.scheduler import (
    Decisions,
    JobRequest,
    Limits,
    NodeView,
    QosLevel,
    RunningJob,
    SchedulerConfig,
    Snapshot,
    Weights,
    decide,
)

# only age counts, and it never caps: priority order is submit order for a whole test
AGE_ONLY = SchedulerConfig(
    weights=Weights(age=1000, fairshare=0, job_size=0, qos=0, nice=0), max_age_s=1e12
)


def started(d: Decisions) -> list[str]:
    return [s.job_id for s in d.starts]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("fifo", ["j1"]), ("greedy", ["j1", "j3"]), ("default", ["j1", "j3"])],
)
def test_policies_on_a_blocked_queue(policy: str, expected: list[str]) -> None:
    pending = [job("j1", 4, submit=0), job("j2", 8, submit=1), job("j3", 2, submit=2)]
    d = decide(snap([node("a")], pending, policy=policy, config=None), 10.0)
    assert sorted(started(d)) == expected
    assert d.pending["j2"].reasons == ("Resources",)


def test_fifo_is_not_blocked_by_a_held_job() -> None:
    pending = [job("held", 8, held=True), job("j", 8, submit=1)]
    d = decide(snap([node("a")], pending, policy="fifo"), 5.0)
    assert started(d) == ["j"]
    assert d.pending["held"].reasons[0] == "JobHeldUser"


def backfill_case(**kw: object) -> Snapshot:
    # a: busy until 10 h; b: 4 busy until 2 h. big wants both nodes whole.
    nodes = [busy("a"), busy("b", used=4)]
    run = [
        running("r1", {"a": range(8)}, limit=10 * H),
        running("r2", {"b": range(4)}, limit=2 * H),
    ]
    pending = [
        job("big", 8, nodes=2, submit=-3 * H, limit=5 * H),
        job("long", 4, submit=-2 * H, limit=12 * H),
        job("short", 4, submit=-H, limit=H),
    ]
    return snap(nodes, pending, run, config=replace(AGE_ONLY, **kw))  # type: ignore[arg-type]


def test_backfill_starts_only_what_ends_before_the_reservation() -> None:
    d = decide(backfill_case(), 0.0)
    assert started(d) == ["short"]
    assert d.pending["big"] == replace(d.pending["big"], reasons=("Resources",), est_start=10 * H)
    # long would fit the free GPUs but would delay big: it waits on priority
    assert d.pending["long"].reasons == ("Priority",)
    assert d.pending["long"].est_start == 15 * H
    assert [(r.job_id, r.start_ts) for r in d.reservations] == [("big", 10 * H), ("long", 15 * H)]
    assert d.reservations[0].nodes == (("a", 8), ("b", 8))


def test_greedy_has_no_reservations() -> None:
    d = decide(backfill_case(policy="greedy"), 0.0)
    assert started(d) == ["long"]
    assert d.reservations == ()


def test_backfill_depth_zero_is_greedy_without_estimates() -> None:
    d = decide(backfill_case(backfill_depth=0), 0.0)
    assert started(d) == ["long"]
    assert d.pending["big"].est_start is None


PREEMPT = SchedulerConfig(
    qos={"high": QosLevel(priority=100, preempt=("scavenger",)), "scavenger": QosLevel()}
)


@pytest.mark.parametrize(
    ("victims", "expected"),
    [
        # the youngest preemptible job goes first; just enough of them
        ([("old", 0.0, True, "scavenger"), ("young", 50.0, True, "scavenger")], ("young",)),
        # not opted in, or a QOS that may not be preempted: nothing to do
        ([("a", 0.0, False, "scavenger"), ("b", 50.0, False, "scavenger")], ()),
        ([("a", 0.0, True, "normal"), ("b", 50.0, True, "normal")], ()),
    ],
)
def test_preemption(victims: list[tuple[str, float, bool, str]], expected: tuple) -> None:
    run = [
        running(jid, {"a": range(4 * i, 4 * i + 4)}, start=t, limit=10 * H, preemptible=p, qos=q)
        for i, (jid, t, p, q) in enumerate(victims)
    ]
    d = decide(snap([busy("a")], [job("h", 4, qos="high")], run, config=PREEMPT), 100.0)
    assert d.preempt == expected
    if expected:
        assert d.pending["h"].est_start == 100.0
        assert d.reservations[0].nodes == (("a", 4),)
        # next pass: the victim is terminating; nobody else is preempted for the same job
        again = [replace(r, terminating=r.job_id in expected) for r in run]
        d2 = decide(snap([busy("a")], [job("h", 4, qos="high")], again, config=PREEMPT), 101.0)
        assert d2.preempt == ()
        assert d2.pending["h"].est_start == 101.0


def test_dependencies_and_holds_in_a_pass() -> None:
    pending = [
        job("after", depends=(("afterok", "r"),)),
        job("never", depends=(("afterok", "f"),)),
        job("ok", depends=(("afterany", "f"),)),
    ]
    s = snap([node("a")], pending, [running("r", {"a": [7]})], finished={"f": "FAILED"})
    d = decide(s, 0.0)
    assert started(d) == ["ok"]
    assert d.pending["after"].reasons == ("Dependency",)
    assert d.pending["never"].reasons == ("DependencyNeverSatisfied",)


def test_a_job_over_its_cap_does_not_block_the_queue() -> None:
    cfg = replace(AGE_ONLY, policy="fifo", limits=Limits(max_gpus_per_user=4))
    pending = [job("a1", 4, user="ann"), job("a2", 4, user="ann", submit=1), job("b", 4, submit=2)]
    d = decide(snap([node("n")], pending, config=cfg), 10.0)
    assert started(d) == ["a1", "b"]
    assert d.pending["a2"].reasons == ("AssocMaxGRESPerUser",)


def test_default_config_is_the_default_policy() -> None:
    assert SchedulerConfig().policy == "default"


# ---- properties -----------------------------------------------------------------------


@st.composite
def snapshots(draw: st.DrawFn, policy: str | None = None) -> Snapshot:
    n_nodes = draw(st.integers(1, 5))
    nodes: list[NodeView] = []
    run: list[RunningJob] = []
    for i in range(n_nodes):
        size = draw(st.sampled_from([2, 4, 8]))
        state = draw(st.sampled_from(["up", "up", "up", "drained", "down"]))
        bad = draw(st.frozensets(st.integers(0, size - 1), max_size=1))
        used = draw(st.integers(0, size))
        nodes.append(node(f"n{i}", size, range(used, size), state=state, unhealthy=bad))
        if used:
            run.append(
                running(
                    f"r{i}",
                    {f"n{i}": range(used)},
                    start=-draw(st.integers(0, 5)) * H,
                    limit=draw(st.integers(1, 10)) * H,
                )
            )
    pending = [
        job(
            f"j{k}",
            draw(st.sampled_from([1, 2, 4, 8])),
            nodes=draw(st.sampled_from([1, 1, 1, 2])),
            submit=float(k),
            limit=draw(st.integers(1, 10)) * H,
            user=draw(st.sampled_from(["u1", "u2"])),
        )
        for k in range(draw(st.integers(0, 10)))
    ]
    pol = policy or draw(st.sampled_from(["fifo", "greedy", "default"]))
    return snap(nodes, pending, run, config=replace(AGE_ONLY, policy=pol))


@given(snapshots())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_no_gpu_is_given_twice_and_only_free_healthy_gpus(s: Snapshot) -> None:
    d = decide(s, 100.0)
    views = {n.name: n for n in s.nodes}
    seen: set[tuple[str, int]] = set()
    for start in d.starts:
        req = next(j for j in s.pending if j.job_id == start.job_id)
        names = [name for name, _ in start.allocation]
        assert len(set(names)) == req.nodes == len(names)
        assert names == sorted(names, key=[n.name for n in s.nodes].index)
        for name, gpus in start.allocation:
            v = views[name]
            assert v.state == "up"
            assert len(gpus) == req.gpus_per_node
            assert set(gpus) <= v.free - v.unhealthy
            for g in gpus:
                assert (name, g) not in seen
                seen.add((name, g))
    assert set(started(d)) | set(d.pending) == {j.job_id for j in s.pending}
    assert not set(started(d)) & set(d.pending)


@given(snapshots(policy="default"))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_reservations_are_not_delayed_by_lower_jobs(s: Snapshot) -> None:
    d = decide(s, 0.0)
    event(f"reservations: {min(len(d.reservations), 3)}")
    order = [j.job_id for j in s.pending]  # submit order == priority order here
    for r in d.reservations:
        higher = tuple(j for j in s.pending if order.index(j.job_id) <= order.index(r.job_id))
        alone = decide(replace(s, pending=higher), 0.0)
        assert alone.pending[r.job_id].est_start == r.start_ts


def run_to_limits(s: Snapshot, head: str, limit_passes: int = 60) -> float | None:
    """Replay with every job running to its full time limit; when does `head` start?"""
    now = 0.0
    nodes = {n.name: n for n in s.nodes}
    pending: list[JobRequest] = list(s.pending)
    run: list[RunningJob] = [r for r in s.running]
    for _ in range(limit_passes):
        d = decide(
            replace(s, nodes=tuple(nodes.values()), pending=tuple(pending), running=tuple(run)), now
        )
        for st_ in d.starts:
            if st_.job_id == head:
                return now
            req = next(j for j in pending if j.job_id == st_.job_id)
            pending.remove(req)
            run.append(
                RunningJob(req.job_id, req.user, req.account, now, req.time_limit_s, st_.allocation)
            )
            for name, gpus in st_.allocation:
                nodes[name] = replace(nodes[name], free=nodes[name].free - set(gpus))
        ends = [max(now, r.start_ts + r.time_limit_s) for r in run]
        if not ends:
            return None
        now = max(now + 1e-9, min(ends)) if min(ends) > now else min(ends)
        still = []
        for r, end in zip(run, ends, strict=True):
            if end <= now:
                for name, gpus in r.allocation:
                    nodes[name] = replace(nodes[name], free=nodes[name].free | set(gpus))
            else:
                still.append(r)
        run = still
    return None


@given(snapshots(policy="default"))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_head_job_is_not_starved(s: Snapshot) -> None:
    d = decide(s, 0.0)
    event(f"has reservation: {bool(d.reservations)}")
    if not d.reservations:
        return
    head = d.reservations[0]
    got = run_to_limits(s, head.job_id)
    assert got is not None and got <= head.start_ts
