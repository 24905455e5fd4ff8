"""Notices from the daemon appended to a job's log."""

from __future__ import annotations

from pathlib import Path

from dcsched.agents.logs import append_notice


def test_a_notice_is_appended_to_the_log_and_never_through_a_link(tmp_path: Path) -> None:
    log = tmp_path / "node0.log"
    log.write_text("step 1\n")
    assert append_notice(str(log), "warning: idle")
    assert log.read_text() == "step 1\n\n[dcsched] warning: idle\n"
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "node1.log"
    link.symlink_to(target)
    assert not append_notice(str(link), "x")
    assert target.read_text() == ""
    assert not append_notice(str(tmp_path / "missing.log"), "x")
