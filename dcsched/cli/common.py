"""What dcsub and dcctl share: finding the daemon, printing tables and errors."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from dcsched.client import ApiError, Client, ClientError, read_token
from dcsched.protocol.config import ConfigError, api_target
from dcsched.protocol.durations import format_duration


def client_from(args: argparse.Namespace, timeout: float = 15.0) -> Client:
    """The client of the connection options (see protocol.config.api_target)."""
    t = api_target(args.socket, args.server, args.ca_file, args.config)
    if not t.servers:
        return Client(t.socket, timeout)
    token = read_token(t.token_file) or ""
    return Client(timeout=timeout, servers=t.servers, token=token, ca_file=t.ca_file)


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
