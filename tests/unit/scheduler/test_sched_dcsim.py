"""dcsim replay: the reference rows of ../shared/traces/README.md, reproduced exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dcsched.cli.dcsim import TraceJob, load_trace, main, replay
from dcsched.scheduler import SchedulerConfig

TRACES = Path(__file__).resolve().parents[3] / ".." / "shared" / "traces"
TINY = TRACES / "tiny60.csv"
ITP = TRACES / "itp-dev.csv"
KEYS = {
    "jobs",
    "avg_jct_s",
    "avg_queue_s",
    "p50_queue_s",
    "p99_queue_s",
    "max_queue_s",
    "makespan_s",
    "gpu_util",
    "per_account",
    "wall_s",
    "pass_ms",
}

needs_tiny = pytest.mark.skipif(not TINY.is_file(), reason=f"no trace at {TINY}")
needs_itp = pytest.mark.skipif(not ITP.is_file(), reason=f"no trace at {ITP}")


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
    assert set(out["per_account"]["a8"]) == {"jobs", "avg_queue_s", "gpu_seconds"}
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


@needs_itp
def test_itp_dev_greedy_reference_row() -> None:
    # fifo's row (37 s here) is checked by the command in docs/scheduler.md
    r = replay(load_trace(ITP), 40, 8, SchedulerConfig(policy="greedy"))
    got = [round(r[k]) for k in ("avg_jct_s", "avg_queue_s", "p99_queue_s", "makespan_s")]
    assert got == [26100, 10066, 81002, 5181063]


@needs_itp
def test_itp_dev_default_meets_the_targets() -> None:
    trace = load_trace(ITP)
    greedy = {  # per-account average queueing delay under greedy, same run
        "t01": 37331,
        "t02": 9167,
        "t05": 4071,
        "t06": 19056,
        "t09": 6742,
        "t10": 5921,
    }
    r = replay(trace, 40, 8, SchedulerConfig())
    assert r["avg_jct_s"] <= 21000
    assert r["p99_queue_s"] <= 60000
    for account, a in r["per_account"].items():
        assert a["avg_queue_s"] <= greedy[account], account
    assert r["wall_s"] <= 60


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
