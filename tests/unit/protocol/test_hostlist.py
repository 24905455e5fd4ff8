"""Slurm hostlist expressions, both ways."""

from __future__ import annotations

import pytest

from dcsched.protocol.hostlist import compress, expand


@pytest.mark.parametrize(
    ("expr", "hosts"),
    [
        ("n1", ["n1"]),
        ("n1,n2", ["n1", "n2"]),
        ("gpu[001-003]", ["gpu001", "gpu002", "gpu003"]),
        ("gpu[1-2,5],login", ["gpu1", "gpu2", "gpu5", "login"]),
        ("rack[08-10]-a", ["rack08-a", "rack09-a", "rack10-a"]),
        ("n[1-2],n2", ["n1", "n2"]),
        (" n1 , n2 ", ["n1", "n2"]),
    ],
)
def test_expand(expr: str, hosts: list[str]) -> None:
    assert expand(expr) == hosts


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("gpu[1-", "'[' without ']'"),
        ("gpu1-]", "']' without '['"),
        ("gpu[a-b]", "write N or N-M"),
        ("gpu[5-1]", "runs backwards"),
        ("gpu[1-2][3]", "one [...] per name"),
        ("", "no host named"),
        ("n[0-999999]", "more than"),
    ],
)
def test_bad_expressions_say_why(expr: str, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        expand(expr)


@pytest.mark.parametrize(
    ("hosts", "expr"),
    [
        (["gpu001", "gpu002", "gpu003", "gpu005"], "gpu[001-003,005]"),
        (["n1"], "n1"),
        (["login", "n2", "n1"], "login,n[1-2]"),
        (["a1-x", "a2-x"], "a[1-2]-x"),
    ],
)
def test_compress_reads_back(hosts: list[str], expr: str) -> None:
    assert compress(hosts) == expr
    assert sorted(expand(expr)) == sorted(hosts)
