"""dcsub: every problem of a file at once with file:line and a hint; undecodable and
oversized files refused by --dry-run too; options override the file as sbatch's do."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from dcsched.cli import dcsub
from dcsched.protocol.jobspec import MAX_SPEC_BYTES

GOOD = """\
name = "ft"
command = ["train.py"]
dependency = ["afterok:3"]
[resources]
nodes = 1
gpus_per_node = 2
time_limit = "4h"
"""


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = dcsub.main(list(argv))
        except SystemExit as exc:
            rc = int(exc.code or 0)
    return rc, out.getvalue(), err.getvalue()


def _file(tmp_path: Path, text: str | bytes) -> str:
    p = tmp_path / "job.toml"
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return str(p)


def test_every_problem_at_once_with_its_line_and_a_specific_hint(tmp_path: Path) -> None:
    text = (
        GOOD.replace("nodes = 1", 'nodes = "one"')
        .replace('"4h"', '"4 hours"')
        .replace('name = "ft"', 'name = "ft"\nacount = "x"\nnice = "low"')
    )
    path = _file(tmp_path, text)
    rc, _, err = _run(path, "--dry-run")
    assert rc == 1
    assert f"{path}:2: acount: unknown key" in err
    assert "did you mean 'account'?" in err
    assert f"{path}:3: nice: Expected `int`, got `str`" in err
    assert "hint: a whole number, e.g. nice = 100" in err
    assert f"{path}:7: resources.nodes: Expected `int`, got `str`" in err
    assert "hint: a whole number, e.g. nodes = 2" in err
    assert f"{path}:9: resources.time_limit: cannot read '4 hours'" in err
    assert "Traceback" not in err


def test_a_missing_required_key_and_a_range_error_come_together(tmp_path: Path) -> None:
    rc, _, err = _run(
        _file(tmp_path, GOOD.replace('name = "ft"\n', "").replace("2", "0")), "--dry-run"
    )
    assert rc == 1
    assert "name: the required key 'name' is missing" in err
    assert "resources.gpus_per_node: 0 is out of range" in err


def test_a_file_that_is_not_utf8_is_refused_by_dry_run(tmp_path: Path) -> None:
    path = _file(tmp_path, GOOD.encode() + b'[env]\nX = "caf\xe9"\n')
    rc, _, err = _run(path, "--dry-run")
    assert rc == 1
    assert f"{path}:9: not UTF-8 text (byte 0xe9)" in err
    assert "Traceback" not in err


def test_an_oversized_file_is_refused_by_dry_run(tmp_path: Path) -> None:
    big = GOOD + "[env]\n" + "".join(f'V{i} = "{"x" * 1000}"\n' for i in range(300))
    assert len(big) > MAX_SPEC_BYTES
    rc, _, err = _run(_file(tmp_path, big), "--dry-run")
    assert rc == 1
    assert f"a job may take at most {MAX_SPEC_BYTES}" in err


def test_options_override_the_file(tmp_path: Path) -> None:
    path = _file(tmp_path, GOOD)
    rc, out, _ = _run(path, "--dry-run", "--json", "-t", "90", "--hold", "-d", "afterany:5:6")
    assert rc == 0
    job = json.loads(out)["job"]
    assert job["resources"]["time_limit"] == "90"
    assert job["hold"] is True
    assert job["dependency"] == ["afterany:5:6"]
    rc, out, _ = _run(path, "--dry-run", "--time", "1-12")
    assert rc == 0 and "limit 1-12:00:00" in out
    rc, out, _ = _run(path, "--dry-run", "-t", "90")
    assert "limit 01:30:00" in out  # a bare number is minutes
    rc, out, _ = _run(_file(tmp_path, 'array = "0-3"\n' + GOOD), "--dry-run", "-a", "0-99:2%8")
    assert rc == 0 and "(ft: 50 tasks of 1 node(s)" in out, out
    rc, out, _ = _run(path, "--dry-run", "--json", "--array", "1,3,5")
    assert json.loads(out)["job"]["array"] == "1,3,5"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("-t", "4 hours"), "argument -t/--time: cannot read '4 hours'"),
        (("-d", "before:1"), "--dependency: cannot read 'before:1'"),
        (("-a", "0-x%8"), "--array: cannot read '0-x'"),
    ],
)
def test_bad_options_are_named(tmp_path: Path, args: tuple[str, ...], words: str) -> None:
    rc, _, err = _run(_file(tmp_path, GOOD), "--dry-run", *args)
    assert rc != 0
    assert words in err
