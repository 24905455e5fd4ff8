"""dcsim replay: the reference rows of ../shared/traces/README.md, reproduced exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dcsched.cli.dcsim import TraceJob, load_trace, main, preemptible_share, replay
from dcsched.scheduler import SchedulerConfig

TRACES = Path(__file__).resolve().parents[3] / ".." / "shared" / "traces"
TINY = TRACES / "tiny60.csv"
KEYS = {
    "jobs",
    "avg_jct_s",
    "avg_queue_s",
    "p50_queue_s",
    "p99_queue_s",
    "max_queue_s",
    "makespan_s",
    "gpu_util",
    "preemptions",
    "gpu_hours_lost",
    "per_account",
    "wall_s",
    "pass_ms",
}

needs_tiny = pytest.mark.skipif(not TINY.is_file(), reason=f"no trace at {TINY}")


@needs_tiny
@pytest.mark.parametrize(
    ("policy", "jct", "queue", "p99", "makespan"),
    [("fifo", 1556, 1378, 3846, 5747), ("greedy", 715, 537, 3241, 4806)],
)
def test_tiny60_reference_rows(policy: str, jct: int, queue: int, p99: int, makespan: int) -> None:
    r = replay(load_trace(TINY), 1, 8, SchedulerConfig(policy=policy))
    assert r["jobs"] == 60
    assert (round(r["avg_jct_s"]), round(r["avg_queue_s"])) == (jct, queue)
    assert (round(r["p99_queue_s"]), round(r["makespan_s"])) == (p99, makespan)


@needs_tiny
def test_cli_json_has_exactly_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["replay", str(TINY), "--nodes", "1", "--gpus-per-node", "8", "--policy", "default"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == KEYS
    assert set(out["pass_ms"]) == {"p50", "p99"}
    assert set(out["per_account"]) == {"a1", "a2", "a4", "a8"}
    assert set(out["per_account"]["a8"]) == {"jobs", "avg_queue_s", "avg_jct_s", "gpu_seconds"}
    assert out["jobs"] == 60
    assert main(argv) == 0
    assert "avg JCT" in capsys.readouterr().out


def synthetic(n: int) -> list[TraceJob]:
    return [
        TraceJob(
            f"j{i}", float(i * 100), 500.0 + 37 * (i % 7), 1 + (i % 3) * 3, "u", f"a{i % 2}", 3600.0
        )
        for i in range(n)
    ]


def test_replay_multi_node_jobs_take_whole_nodes() -> None:
    jobs = [
        TraceJob("big", 0.0, 100.0, 12, "u", "a", 3600.0),
        TraceJob("s", 0.0, 50.0, 1, "u", "a", 3600.0),
    ]
    starts: dict[str, float] = {}
    r = replay(jobs, 2, 8, SchedulerConfig(policy="fifo"), starts)
    # 12 GPUs -> 2 whole nodes; the 1-GPU job waits for one of them
    assert starts == {"big": 0.0, "s": 100.0}
    assert r["per_account"]["a"]["gpu_seconds"] == 16 * 100 + 50


@pytest.mark.parametrize("policy", ["fifo", "greedy", "default"])
def test_every_job_runs_once_and_never_before_submit(policy: str) -> None:
    jobs = synthetic(200)
    starts: dict[str, float] = {}
    r = replay(jobs, 3, 8, SchedulerConfig(policy=policy), starts)
    assert r["jobs"] == 200
    assert all(starts[j.job_id] >= j.submit_s for j in jobs)
    assert 0.0 < r["gpu_util"] <= 1.0


def test_cli_rejects_a_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[scheduler.weights]\nagee = 1\n")
    trace = tmp_path / "t.csv"
    trace.write_text("job_id,submit_s,duration_s,gpus,user,account,time_limit_s\nj,0,1,1,u,a,10\n")
    with pytest.raises(SystemExit, match=r"scheduler\.weights\.agee: unknown key"):
        main(["replay", str(trace), "--nodes", "1", "--gpus-per-node", "1", "--config", str(cfg)])


def _write_trace(path: Path, jobs: list[TraceJob]) -> Path:
    rows = ["job_id,submit_s,duration_s,gpus,user,account,time_limit_s"]
    rows += [
        f"{j.job_id},{j.submit_s},{j.duration_s},{j.gpus},{j.user},{j.account},{j.time_limit_s}"
        for j in jobs
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_progress_is_reported_up_to_every_job() -> None:
    seen: list[int] = []
    replay(synthetic(40), 2, 8, SchedulerConfig(policy="greedy"), on_progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 40


def test_a_progress_bar_on_stderr_and_a_one_screen_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = [TraceJob(f"j{i}", float(i), 100.0, 1, "u", f"acct{i % 12}", 200.0) for i in range(48)]
    trace = _write_trace(tmp_path / "t.csv", jobs)
    argv = ["replay", str(trace), "--nodes", "2", "--gpus-per-node", "4", "--policy", "fifo"]
    assert main([*argv, "--progress", "always"]) == 0
    cap = capsys.readouterr()
    assert "replaying" in cap.err and "48/48" in cap.err
    lines = cap.out.splitlines()
    assert lines[0] == "t.csv on 2 x 4 GPUs, policy fifo"
    assert len(lines) <= 24  # one screen, whatever the number of accounts
    assert "... and 4 more accounts (--json has them all)" in cap.out
    assert main([*argv, "--progress", "never"]) == 0
    assert capsys.readouterr().err == ""


def test_preemption_flags_and_the_greedy_figures_alongside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = _write_trace(tmp_path / "t.csv", synthetic(30))
    argv = ["replay", str(trace), "--nodes", "1", "--gpus-per-node", "8", "--json"]
    assert main([*argv, "--preemptible", "all", "--restart-cost", "5m"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == KEYS | {"vs"}
    assert out["vs"]["policy"] == "greedy"
    assert set(out["vs"]["per_account"]) == set(out["per_account"]) == {"a0", "a1"}
    assert set(out["vs"]["per_account"]["a0"]) == {"avg_jct_s", "avg_queue_s"}
    assert main([*argv, "--preemptible", "0.5", "--checkpoint-interval", "1h", "--vs", "none"]) == 0
    assert "vs" not in json.loads(capsys.readouterr().out)
    assert main([*argv[:-1], "--vs", "fifo"]) == 0
    assert "fifo queue" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--preemptible", "1.5", "a fraction in [0, 1] or 'all'"),
        ("--preemptible", "some", "a fraction in [0, 1] or 'all'"),
        ("--restart-cost", "soon", "--restart-cost"),
        ("--checkpoint-interval", "-5", "--checkpoint-interval"),
    ],
)
def test_bad_preemption_flags_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    trace = _write_trace(tmp_path / "t.csv", synthetic(3))
    with pytest.raises(SystemExit):
        main(["replay", str(trace), "--nodes", "1", "--gpus-per-node", "8", flag, value])
    assert message in capsys.readouterr().err


def test_a_fraction_marks_the_same_jobs_whatever_the_order() -> None:
    ids = [f"job-{i}" for i in range(2000)]
    marked = {i for i in ids if preemptible_share(i, 0.25)}
    assert 400 < len(marked) < 600
    assert marked == {i for i in reversed(ids) if preemptible_share(i, 0.25)}
    assert all(preemptible_share(i, 1.0) for i in ids)
    assert not any(preemptible_share(i, 0.0) for i in ids)
