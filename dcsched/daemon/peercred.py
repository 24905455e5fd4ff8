"""The identity of the process at the other end of a Unix socket (SO_PEERCRED)."""

from __future__ import annotations

import pwd
import socket
import struct
from typing import Any

_UCRED = struct.Struct("3i")  # pid, uid, gid


def peer_uid(sock: socket.socket | Any) -> int:
    """`sock` is a socket or asyncio's TransportSocket wrapper of one."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    _pid, uid, _gid = _UCRED.unpack(raw)
    return int(uid)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"
