from __future__ import annotations

from pathlib import Path

import pytest

from dcsched.protocol.jobfile import JobFileError, load_job_file, locate
from dcsched.protocol.jobspec import JobSpecError, parse_duration, runs_python, validate_spec

GOOD = """\
name = "llama-ft"
command = ["train.py", "--epochs", "3"]
account = "vision"
[resources]
nodes = 2
gpus_per_node = 8
gpu_type = "H100"
time_limit = "4h"
[torchrun]
nproc_per_node = 8
[env]
NCCL_DEBUG = "WARN"
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "job.toml"
    p.write_text(text)
    return p


def test_brief_example_is_valid_and_workdir_defaults_to_the_files_folder(tmp_path: Path) -> None:
    spec = load_job_file(_write(tmp_path, GOOD))
    assert spec.resources.nodes == 2
    assert spec.time_limit_s == 4 * 3600
    assert spec.nproc_per_node == 8
    assert spec.workdir == str(tmp_path.resolve())
    assert spec.env == {"NCCL_DEBUG": "WARN"}


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (GOOD.replace("gpus_per_node = 8", "gpu_per_node = 8"), 6, "did you mean 'gpus_per_node'"),
        (GOOD.replace("nodes = 2", 'nodes = "two"'), 5, "Expected `int`"),
        (GOOD.replace('"4h"', '"4 hours"'), 8, "cannot read '4 hours' as a duration"),
        (GOOD.replace("nodes = 2", "nodes = 0"), 5, "out of range"),
        (GOOD.replace('account = "vision"', 'acount = "vision"'), 3, "did you mean 'account'"),
        (GOOD.replace('command = ["train.py", "--epochs", "3"]', "command = []"), 2, "non-empty"),
        (GOOD + '"1BAD" = "x"\n', 13, "environment variable"),
        (GOOD.replace("[torchrun]", "[torchrun"), 9, "TOML syntax"),
    ],
)
def test_bad_files_name_the_line_and_the_reason(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    with pytest.raises(JobFileError) as err:
        load_job_file(_write(tmp_path, text))
    first = err.value.problems[0]
    assert first.line == line, str(err.value)
    assert words in first.message
    assert str(first).startswith(f"{tmp_path / 'job.toml'}:{line}:")


def test_every_unknown_key_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("gpus_per_node", "gpu_per_node").replace("account", "acount")
    with pytest.raises(JobFileError) as err:
        load_job_file(_write(tmp_path, text))
    assert len(err.value.problems) == 2


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match="No such file"):
        load_job_file(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 5400),  # a bare number is minutes, as in Slurm
        ("90", 5400),
        ("30s", 30),
        ("30m", 1800),
        ("4h", 14400),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1:30:00", 5400),
        ("1-00:00:10", 86410),
    ],
)
def test_durations(value: str | int, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "4x", "-5", 0, "h"])
def test_bad_durations(value: str | int) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_api_validation_uses_the_same_rules() -> None:
    with pytest.raises(JobSpecError) as err:
        validate_spec({"name": "x", "command": ["a"], "resources": {"nodez": 1}})
    assert err.value.problems[0].key == "resources.nodez"
    with pytest.raises(JobSpecError):
        validate_spec(["not", "a", "table"])


def test_locate_handles_dotted_keys_and_tables() -> None:
    text = 'name = "x"\nresources.nodes = 3\n[torchrun]\npython = "/p"\n'
    assert locate(text, ("resources", "nodes")) == 2
    assert locate(text, ("torchrun", "python")) == 4
    assert locate(text, ("absent",)) is None


@pytest.mark.parametrize(
    ("command", "python", "expected"),
    [
        (["train.py", "--lr", "1"], None, True),
        (["/abs/path/train.py"], "/venv/bin/python", True),
        (["-m", "pkg.train"], None, True),
        (["bash", "run.sh"], None, False),
        (["./train"], "/venv/bin/python", False),
        (["python", "train.py"], None, False),  # each worker runs `python train.py` itself
        (["train"], True, True),  # a script without .py, said so
        (["train.py"], False, False),
    ],
)
def test_which_commands_run_as_python_scripts(
    command: list[str], python: str | bool | None, expected: bool
) -> None:
    assert runs_python(command, python) is expected


def test_python_may_be_a_path_or_false() -> None:
    with pytest.raises(JobSpecError, match="must be an absolute path"):
        validate_spec({"name": "x", "command": ["a"], "torchrun": {"python": "venv/python"}})
    ok = validate_spec({"name": "x", "command": ["a"], "torchrun": {"python": False}})
    assert ok.torchrun.python is False
