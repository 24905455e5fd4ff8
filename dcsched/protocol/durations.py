"""The one duration grammar of the project: job files, CLI flags and the config file.

Slurm's forms `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`, and unit forms
`90s`, `30m`, `4h`, `2d`, `1w`, `1h30m`, `1.5h`. A bare number (an integer or a string of
digits) is in the caller's unit: minutes where a person types a time limit (job files,
`dcsub -t`, `dcctl update`), as in Slurm; seconds for config keys documented in seconds.
"""

from __future__ import annotations

import math
import re
from typing import Literal

BareUnit = Literal["minutes", "seconds"]

FORMS = '"90" (minutes), "90:00", "1:30:00", "2-00", "2-12:00", "1-00:00:10", "90m", "4h", "2d"'

_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_UNITS = re.compile(r"(?:\d+(?:\.\d+)?\s*[smhdw]\s*)+")
_UNIT_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_CLOCK = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
_BARE = {"minutes": 60.0, "seconds": 1.0}


def parse_duration(value: object, *, bare: BareUnit = "minutes") -> float:
    """Seconds (> 0) from a number or one of the forms above; ValueError says what to write."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value) * _BARE[bare]
    elif isinstance(value, str):
        seconds = _parse_text(value.strip().lower(), bare)
    else:
        raise ValueError(f"expected a duration, got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


def parse_seconds(value: object) -> float:
    """A duration whose bare numbers are seconds (config keys documented in seconds)."""
    return parse_duration(value, bare="seconds")


def _parse_text(text: str, bare: BareUnit) -> float:
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text) * _BARE[bare]
    if _UNITS.fullmatch(text):
        return sum(float(n) * _UNIT[u] for n, u in _UNIT_PART.findall(text))
    m = _CLOCK.fullmatch(text)
    if m is None:
        raise ValueError(f"cannot read {text!r} as a duration; write e.g. {FORMS}")
    days, first, second, third = m.groups()
    if days is None:
        if third is not None:  # HH:MM:SS
            h, mi, s = int(first), int(second), int(third)
        else:  # MM:SS (MM alone is a bare number, handled above)
            h, mi, s = 0, int(first), int(second)
        lead = "hours" if third is not None else "minutes"
    else:  # D-HH, D-HH:MM, D-HH:MM:SS
        h, mi, s = int(first), int(second or 0), int(third or 0)
        lead = "days"
        if h >= 24:
            raise ValueError(f"{text!r}: hours after the day must be below 24")
    if any(part is not None and int(part) >= 60 for part in (second, third)):
        raise ValueError(f"{text!r}: minutes and seconds after the {lead} must be below 60")
    return (int(days or 0) * 24 + h) * 3600.0 + mi * 60 + s


def format_duration(seconds: float) -> str:
    """Slurm's [D-]HH:MM:SS, which parse_duration reads back."""
    s = max(0, int(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"
