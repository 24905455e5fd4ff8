"""Slurm's hostlist expressions: `gpu[001-016,020],login1` <-> a list of host names.

A bracket holds comma-separated numbers and ranges; a range keeps the zero padding of its
first number (`gpu[001-016]` is gpu001 ... gpu016). One bracket per name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_HOSTS = 65536  # an expression this large is a typo, not a cluster
_NAME = re.compile(r"^([^\[\],]*)\[([^\[\]]+)\]([^\[\],]*)$")


def _split(expr: str) -> list[str]:
    """Top-level commas only: those inside brackets belong to the bracket."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(expr):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"{expr!r}: ']' without '['")
        elif ch == "," and depth == 0:
            parts.append(expr[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"{expr!r}: '[' without ']'")
    parts.append(expr[start:])
    return [p.strip() for p in parts if p.strip()]


def expand(expr: str) -> list[str]:
    """Host names, in order, without repeats; ValueError says what is wrong."""
    out: dict[str, None] = {}
    for part in _split(expr):
        m = _NAME.match(part)
        if m is None:
            if "[" in part or "]" in part:
                raise ValueError(f"cannot read {part!r}: one [...] per name, e.g. gpu[001-016]")
            out[part] = None
            continue
        head, body, tail = m.groups()
        for item in body.split(","):
            lo, sep, hi = item.strip().partition("-")
            if not lo.isdigit() or (sep and not hi.isdigit()):
                raise ValueError(f"cannot read {item!r} in {part!r}: write N or N-M")
            a, b = int(lo), int(hi) if sep else int(lo)
            if b < a:
                raise ValueError(f"{item!r} in {part!r}: the range runs backwards")
            if len(out) + b - a + 1 > MAX_HOSTS:
                raise ValueError(f"{expr!r} names more than {MAX_HOSTS} hosts")
            for n in range(a, b + 1):
                out[f"{head}{n:0{len(lo)}d}{tail}"] = None
    if not out:
        raise ValueError("no host named")
    return list(out)


_NUMBERED = re.compile(r"^(.*?)(\d+)(\D*)$")


def compress(hosts: Iterable[str]) -> str:
    """The shortest usual expression: runs of numbered names with the same prefix, suffix
    and width folded into brackets, in the order first seen."""
    groups: dict[tuple[str, str, int], list[int]] = {}
    order: list[tuple[str, str, int] | str] = []
    for h in dict.fromkeys(hosts):
        m = _NUMBERED.match(h)
        if m is None:
            order.append(h)
            continue
        key = (m.group(1), m.group(3), len(m.group(2)))
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(int(m.group(2)))
    out = []
    for item in order:
        if isinstance(item, str):
            out.append(item)
            continue
        head, tail, width = item
        nums = sorted(set(groups[item]))
        if len(nums) == 1:
            out.append(f"{head}{nums[0]:0{width}d}{tail}")
            continue
        runs, start, prev = [], nums[0], nums[0]
        for n in [*nums[1:], None]:
            if n is not None and n == prev + 1:
                prev = n
                continue
            runs.append(
                f"{start:0{width}d}" if start == prev else f"{start:0{width}d}-{prev:0{width}d}"
            )
            if n is not None:
                start = prev = n
        out.append(f"{head}[{','.join(runs)}]{tail}")
    return ",".join(out)
