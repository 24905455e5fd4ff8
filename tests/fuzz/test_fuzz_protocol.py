"""Bad input at the edges that parse: job files and job specs, and every message type on the
bus. Each is refused with a clear error or dropped and counted; nothing else is raised."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcsched.protocol.codec import Codec, event_codec, status_codec, telemetry_codec
from dcsched.protocol.jobfile import JobFileError, load_job_file
from dcsched.protocol.jobspec import JobSpec, JobSpecError, spec_to_dict, validate_spec
from dcsched.protocol.messages import Command, SignedCommand
from tests.fuzz.strategies import FUZZ, broken_message, json_values, mutated

GOOD_SPEC: dict[str, Any] = {
    "name": "train",
    "command": ["train.py", "--epochs", "3"],
    "workdir": "/tmp",
    "account": "default",
    "nice": 0,
    "dependency": ["afterok:1"],
    "resources": {"nodes": 2, "gpus_per_node": 4, "gpu_type": "H100", "time_limit": "1h"},
    "torchrun": {"nproc_per_node": 4, "python": "/usr/bin/python3"},
    "env": {"A": "b"},
}


def _check_spec(raw: Any) -> None:
    try:
        spec = validate_spec(raw)
    except JobSpecError as exc:
        assert exc.problems
        for p in exc.problems:
            assert isinstance(p.key, str) and p.message
        return
    assert isinstance(spec, JobSpec)
    assert spec.time_limit_s > 0
    assert validate_spec(spec_to_dict(spec)) == spec  # what was accepted reads back the same


@FUZZ
@given(json_values)
def test_any_json_is_a_spec_or_a_list_of_problems(raw: Any) -> None:
    _check_spec(raw)


@FUZZ
@given(mutated(GOOD_SPEC))
def test_a_spec_with_one_thing_wrong_is_a_spec_or_a_list_of_problems(raw: Any) -> None:
    _check_spec(raw)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f'"{k}" = {_toml_value(x)}' for k, x in v.items()) + "}"
    return '""'  # None has no TOML form


@FUZZ
@given(
    st.one_of(
        st.text(max_size=200),
        mutated(GOOD_SPEC).map(
            lambda d: (
                "\n".join(f'"{k}" = {_toml_value(v)}' for k, v in d.items())
                if isinstance(d, dict)
                else str(d)
            )
        ),
    )
)
def test_any_job_file_is_a_spec_or_problems_with_their_lines(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("jobs") / "job.toml"
    try:
        path.write_text(text)
    except UnicodeEncodeError:
        path.write_bytes(text.encode("utf-8", "surrogatepass"))  # not UTF-8: refused
    try:
        spec = load_job_file(path)
    except JobFileError as exc:
        assert exc.problems
        for p in exc.problems:
            assert p.file == str(path) and p.message
            assert p.line is None or 1 <= p.line <= max(1, len(text.splitlines()))
        return
    assert isinstance(spec, JobSpec)


def test_a_job_file_that_is_not_utf8_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_bytes(b'name = "\xff\xfe"\n')
    with pytest.raises(JobFileError) as err:
        load_job_file(path)
    assert err.value.problems[0].file == str(path)
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads("x = \x00")  # the stdlib's own refusal of a NUL, for reference


_CODECS: list[Codec[Any]] = [
    telemetry_codec(),
    status_codec(),
    event_codec(),
    Codec(Command, "command"),
    Codec(SignedCommand, "command envelope"),
]


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=300), broken_message(), json_values.map(lambda v: repr(v).encode())
    )
)
def test_every_codec_decodes_or_drops_and_counts(payload: bytes) -> None:
    for codec in _CODECS:
        before = sum(codec.dropped.values())
        msg = codec.decode_or_drop(payload, "fuzz")
        assert (msg is None) == (sum(codec.dropped.values()) == before + 1)


@FUZZ
@given(st.integers(1, 200_000), st.sampled_from(["[", '{"a":']))
def test_deep_nesting_is_dropped_not_raised(depth: int, opener: str) -> None:
    for codec in _CODECS:
        assert codec.decode_or_drop((opener * depth).encode(), "fuzz") is None
