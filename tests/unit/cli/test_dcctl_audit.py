from __future__ import annotations

import argparse
import datetime

import pytest

from dcsched.cli.dcctl import build_parser, when


def test_since_reads_the_duration_grammar_of_job_files_or_a_date() -> None:
    assert when("30m", now=10_000.0) == 10_000.0 - 1800
    assert when("1:30:00", now=10_000.0) == 10_000.0 - 5400
    assert when("2d", now=200_000.0) == 200_000.0 - 2 * 86400
    at = datetime.datetime(2026, 11, 25, 18, 0)
    assert when("2026-11-25T18:00") == at.timestamp()
    with pytest.raises(argparse.ArgumentTypeError, match="how long ago"):
        when("yesterday")


def test_audit_arguments() -> None:
    a = build_parser().parse_args(["audit", "--user", "bob", "--since", "1h", "--json"])
    assert (a.cmd, a.user, a.json) == ("audit", "bob", True)
    assert isinstance(a.since, float)


class _Stub:
    """Answers of the API, as the client returns them (one piece faked: the daemon)."""

    def job(self, job_id: str) -> dict[str, object]:
        return {
            "id": 7,
            "name": "j",
            "user": "alice",
            "uid": 1000,
            "account": "a",
            "qos": "normal",
            "state": "PENDING",
            "nodes": 1,
            "gpus_per_node": 1,
            "time_limit_s": 60,
            "submit_ts": 1.0,
            "spec": {"name": "j", "resources": {}},
            "hidden": ["command", "env", "torchrun", "workdir"],
        }

    def nodes(self) -> list[dict[str, object]]:
        return [
            {
                "host": "n1",
                "state": "drained",
                "simulated": False,
                "drain_reason": "bad fan",
                "addr": "10.0.0.1",
                "gpus": 8,
                "model": "H100",
                "gpus_allocated": 0,
                "jobs": [],
                "agent_version": "0.1.0",
                "backend": "nvml",
                "driver": "550",
            }
        ]

    def drain_history(self, host: str) -> dict[str, object]:
        return {"history": [{"ts": 5.0, "user": "root", "drained": True, "reason": "bad fan"}]}

    def audit(self, **kw: object) -> list[dict[str, object]]:
        return [
            {"ts": 2.0, "user": "bob", "action": "read_log", "target": "job 7"}
            | {"result": "refused", "status": 403, "detail": "job 7 belongs to alice"},
            {"ts": 1.0, "user": "alice", "action": "submit", "target": "job 7"}
            | {"result": "ok", "status": 201, "detail": "j"},
        ]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from dcsched.cli import dcctl

    a = build_parser().parse_args(argv)
    fn = {"show": dcctl.cmd_show, "show-node": dcctl.cmd_show_node, "audit": dcctl.cmd_audit}
    assert fn[a.cmd](_Stub(), a) == 0  # type: ignore[arg-type]
    return capsys.readouterr().out


def test_show_of_another_users_job_says_what_is_hidden(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(["show", "7"], capsys)
    assert "Hidden = command, env, torchrun, workdir (only its owner or an admin sees)" in out
    assert "Command" not in out


def test_show_node_prints_the_drain_history(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(["show-node", "n1"], capsys)
    assert "Reason = bad fan" in out
    assert out.splitlines()[-1].split()[1:] == ["drain", "root", "bad", "fan"]


def test_audit_prints_oldest_first(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _run(["audit"], capsys).splitlines()
    assert lines[0].split() == ["TIME", "USER", "ACTION", "TARGET", "RESULT", "DETAIL"]
    assert lines[1].split()[1:3] == ["alice", "submit"]
    assert "refused (403)" in lines[2]


def test_show_node_takes_a_hostlist(capsys: pytest.CaptureFixture[str]) -> None:
    from dcsched.cli import dcctl

    a = build_parser().parse_args(["show-node", "n[1-2]"])
    assert dcctl.cmd_show_node(_Stub(), a) == 1  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert "Host = n1" in out and "Reason = bad fan" in out
    assert "no node 'n2'" in err
