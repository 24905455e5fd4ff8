"""Accounting from telemetry: energy-counter deltas, means per GPU, GPU-seconds per run."""

from __future__ import annotations

import dataclasses

import pytest

from dcsched.daemon.accounting import (
    Accounting,
    GpuUse,
    JobUse,
    dump,
    load,
    run_gpu_seconds,
    summary,
)
from dcsched.daemon.lifecycle import Job, Part
from dcsched.daemon.model import Model
from dcsched.protocol.messages import GpuSample, Telemetry
from tests.unit.daemon.builders import make_job

JOB = make_job(
    id=7,
    name="t",
    account="ml",
    state="RUNNING",
    spec={},
    gpus_per_node=2,
    submit_ts=50.0,
    start_ts=100.0,
    parts=(Part(0, "n1", (0, 1), "L1", state="running"),),
)


def sample(i: int, energy: float | None, util: float = 50.0, mem: int = 1 << 30) -> GpuSample:
    return GpuSample(index=i, uuid=f"u{i}", util=util, mem_used=mem, energy_j=energy)


def test_energy_is_the_sum_of_counter_deltas_and_a_counter_reset_starts_over() -> None:
    g = GpuUse()
    for e in (1000.0, 1100.0, 1250.0, 5.0, 25.0, None, 45.0):
        g.add(sample(0, e))
    assert g.energy_j == 100 + 150 + 20 + 20  # nothing for the reset (1250 -> 5)


@pytest.mark.parametrize(
    ("old", "new", "gpu_s"),
    [
        # the run ends in a final state: end - start, times the GPUs held
        (JOB, dataclasses.replace(JOB, state="COMPLETED", end_ts=160.0), 120.0),
        # requeued: the run is over (start_ts cleared), counted up to now (200)
        (JOB, dataclasses.replace(JOB, state="REQUEUED", start_ts=None, parts=()), 200.0),
        # still running, or never started: no run ends
        (JOB, dataclasses.replace(JOB, state="COMPLETING"), 0.0),
        (
            dataclasses.replace(JOB, state="PENDING", start_ts=None, parts=()),
            dataclasses.replace(JOB, state="CANCELLED", start_ts=None, parts=(), end_ts=150.0),
            0.0,
        ),
    ],
)
def test_run_gpu_seconds(old: Job, new: Job, gpu_s: float) -> None:
    assert run_gpu_seconds(old, new, 200.0) == gpu_s


def test_telemetry_of_a_running_job_is_accumulated_per_gpu() -> None:
    model = Model(lambda host: "h100")
    model.install(JOB, None)
    acct = Accounting(model)
    other = dataclasses.replace(JOB, id=8, state="STARTING")  # not running yet: not counted
    model.install(other, None)
    for seq, (e0, e1) in enumerate(((10.0, 20.0), (40.0, 60.0))):
        acct.on_telemetry(
            Telemetry(
                host="n1",
                ts=seq,
                seq=seq,
                gpus=[sample(0, e0, util=100.0), sample(1, e1, util=50.0), sample(2, 0.0)],
            )
        )
    assert set(acct.jobs) == {7}
    row = acct.row(dataclasses.replace(JOB, state="COMPLETED", end_ts=136.0), 72.0, 200.0)
    assert row["energy_kwh"] == pytest.approx((30 + 40) / 3.6e6)
    assert row["mean_util"] == 75.0
    assert row["gpu_hours"] == pytest.approx(72 / 3600)
    assert [g["gpu"] for g in row["per_gpu"]] == [0, 1]  # GPU 2 is not the job's
    assert row["alloc"] == {"n1": [0, 1]}


def test_a_requeued_jobs_earlier_runs_count_in_its_total() -> None:
    model = Model(lambda host: "h100")
    acct = Accounting(model)
    acct.committed(JOB, dataclasses.replace(JOB, state="REQUEUED"), 50.0)
    row = acct.row(dataclasses.replace(JOB, state="COMPLETED", end_ts=130.0), 60.0, 130.0)
    assert row["gpu_hours"] == pytest.approx(110 / 3600)
    acct.committed(JOB, dataclasses.replace(JOB, state="COMPLETED"), 60.0)
    assert acct.jobs == {}


def test_a_job_with_no_telemetry_has_unknown_means() -> None:
    row = summary(JOB, JobUse(), 0.0, 200.0)
    assert (row["mean_util"], row["max_mem_bytes"], row["energy_kwh"]) == (None, None, 0.0)


def test_the_accumulation_survives_a_dump_and_load_for_live_jobs_only() -> None:
    model = Model(lambda host: "h100")
    acct = Accounting(model)
    use = acct.jobs[7] = JobUse(past_gpu_s=30.0)
    use.gpus[("n1", 0)] = GpuUse(util_sum=150.0, util_n=2, energy_j=40.0, last_energy=1040.0)
    acct.jobs[8] = JobUse()
    again = Accounting(model)
    load(again, dump(acct), live={7})
    assert set(again.jobs) == {7}
    got = again.jobs[7]
    assert (got.past_gpu_s, got.gpus[("n1", 0)]) == (30.0, use.gpus[("n1", 0)])
    got.gpus[("n1", 0)].add(sample(0, 1100.0))  # energy across the restart still counts
    assert got.gpus[("n1", 0)].energy_j == 100.0
