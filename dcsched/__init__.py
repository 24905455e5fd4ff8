"""dcsched: a GPU-cluster monitor and job scheduler."""

from __future__ import annotations

__version__ = "0.1.0"

# Third-party modules of the optional parts, and the extra that installs each.
EXTRA_OF = {
    "aiohttp": "daemon",
    "aiosqlite": "daemon",
    "prometheus_client": "daemon",
    "textual": "tui",
    "pynvml": "agent",
    "amqtt": "demo",
}


def missing_extra(prog: str, exc: ModuleNotFoundError) -> str | None:
    """What to tell a user whose install lacks the extra `prog` needs; None when the missing
    module is not one of an extra's (a broken install: let the error show)."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is None:
        return None
    return (
        f"{prog}: this install lacks the {extra!r} part ({top} is not installed). "
        f"Install it into the same environment: pip install 'dcsched[{extra}]'"
    )
