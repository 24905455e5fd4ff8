"""dcsched: a GPU-cluster monitor and job scheduler."""

from __future__ import annotations

import logging
import os
import sys

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


# syslog priorities for the levels, as sd-daemon(3) prefixes lines on a journald stream
_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelname, 6)}>{super().format(record)}"


def setup_logging(level: str) -> None:
    """Plain lines with their level on stderr. Under systemd (stderr is the journal) without
    a timestamp, which journald adds, and with the level as a priority journalctl filters on
    (`journalctl -u dcd -p warning`)."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
