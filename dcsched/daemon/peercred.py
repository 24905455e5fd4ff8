"""The identity of the process at the other end of a Unix socket (SO_PEERCRED)."""

from __future__ import annotations

import pwd
import socket
import struct
import time
from typing import Any

_UCRED = struct.Struct("3i")  # pid, uid, gid
NAME_TTL_S = 60.0
_names: dict[int, tuple[str, float]] = {}


def peer_uid(sock: socket.socket | Any) -> int:
    """`sock` is a socket or asyncio's TransportSocket wrapper of one."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    _pid, uid, _gid = _UCRED.unpack(raw)
    return int(uid)


def user_name(uid: int) -> str:
    """The uid's login name, looked up at most once a minute per uid (NSS can be slow)."""
    now = time.monotonic()
    hit = _names.get(uid)
    if hit is not None and now - hit[1] < NAME_TTL_S:
        return hit[0]
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid{uid}"
    if len(_names) > 10_000:
        _names.clear()
    _names[uid] = (name, now)
    return name
