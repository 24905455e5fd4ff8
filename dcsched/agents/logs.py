"""Pieces of a job's log file for FetchLog: `dcctl logs` works without a shared filesystem."""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

from dcsched.protocol.messages import FetchLog, LogChunk

# Leaves room under the protocol's payload limit for JSON escaping of the text.
MAX_CHUNK = 96 * 1024


def open_no_follow(path: str) -> BinaryIO:
    """Opens a job's file for reading as root without following a symlink a user may have put
    there, nor hanging on a FIFO: OSError(ELOOP) for a link, OSError(EINVAL) for not a file."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise OSError(errno.EINVAL, "not a regular file")
    return f


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
        with open_no_follow(path) as f:
            size = os.fstat(f.fileno()).st_size
            start = max(0, size - want) if cmd.offset < 0 else min(cmd.offset, size)
            f.seek(start)
            data = f.read(want)
    except FileNotFoundError:
        base.error = f"no log for job {cmd.job_id} node {cmd.node_rank} on {host}"
        return base
    except OSError as exc:
        why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        base.error = f"cannot read {path}: {why}"
        return base
    if len(data) == want and want:
        data = _whole_characters(data)  # the rest of a split character comes next time
    base.offset, base.size, base.next_offset = start, size, start + len(data)
    base.data = data.decode("utf-8", errors="replace")
    return base


def _whole_characters(data: bytes) -> bytes:
    """Drops a UTF-8 sequence cut off at the end (at most 3 bytes)."""
    for back in range(1, min(4, len(data)) + 1):
        lead = data[-back]
        if lead & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for the lead byte
        need = 4 if lead >= 0xF0 else 3 if lead >= 0xE0 else 2 if lead >= 0xC0 else 1
        return data if back >= need else data[:-back]
    return data


def append_notice(path: str, text: str) -> bool:
    """Appends a line from dcsched to a job's log (root, in the root-owned logs folder; the
    file itself is the user's, so a link or a FIFO there is refused, never followed)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        os.write(fd, f"\n[dcsched] {text}\n".encode())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
