"""Pieces of a job's log file for FetchLog: `dcctl logs` works without a shared filesystem."""

from __future__ import annotations

import os

from dcsched.protocol.messages import FetchLog, LogChunk

# Leaves room under the protocol's payload limit for JSON escaping of the text.
MAX_CHUNK = 96 * 1024


def read_chunk(host: str, cmd: FetchLog, path: str) -> LogChunk:
    want = max(0, min(cmd.max_bytes, MAX_CHUNK))
    base = LogChunk(
        host=host,
        cmd_id=cmd.cmd_id,
        job_id=cmd.job_id,
        node_rank=cmd.node_rank,
        offset=max(cmd.offset, 0),
        size=0,
    )
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = max(0, size - want) if cmd.offset < 0 else min(cmd.offset, size)
            f.seek(start)
            data = f.read(want)
    except FileNotFoundError:
        base.error = f"no log for job {cmd.job_id} node {cmd.node_rank} on {host}"
        return base
    except OSError as exc:
        base.error = f"cannot read {path}: {exc.strerror}"
        return base
    base.offset, base.size = start, size
    base.data = data.decode("utf-8", errors="replace")
    return base
