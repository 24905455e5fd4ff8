"""What dcsub and dcctl share: finding the daemon, printing tables and errors."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from dcsched.client import ApiError, Client, ClientError
from dcsched.protocol.config import ConfigError, load_config, socket_path
from dcsched.protocol.durations import format_duration


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--socket",
        help="daemon API socket (default: $DCSCHED_SOCKET, else the config's [daemon] socket)",
    )
    p.add_argument(
        "--config", help="config file (default: $DCSCHED_CONFIG, else /etc/dcsched/dcsched.toml)"
    )


def client_from(args: argparse.Namespace) -> Client:
    """--socket, else $DCSCHED_SOCKET, else the config's socket; the config is read only
    when needed, and a config file named explicitly must exist."""
    if args.socket or os.environ.get("DCSCHED_SOCKET"):
        return Client(socket_path(args.socket, None))
    named = args.config or os.environ.get("DCSCHED_CONFIG")
    return Client(socket_path(None, load_config(args.config, missing_ok=not named)))


def run_cli(prog: str, fn: Callable[[], int]) -> int:
    """Runs a command, turning every expected failure into one line on stderr."""
    try:
        return fn()
    except ApiError as exc:
        print(f"{prog}: {exc.message}", file=sys.stderr)
        for p in exc.details.get("problems", []):
            hint = f" (hint: {p['hint']})" if p.get("hint") else ""
            print(f"  {p['key']}: {p['message']}{hint}", file=sys.stderr)
        return 1
    except (ClientError, ConfigError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(out)


def duration(seconds: float | None) -> str:
    """Slurm's [D-]HH:MM:SS; "" for None."""
    return "" if seconds is None else format_duration(seconds)


def timestamp(ts: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts)) if ts else ""


def pct(v: float | None) -> str:
    return "" if v is None else f"{v:.0f}%"
