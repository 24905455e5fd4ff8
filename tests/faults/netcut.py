"""A network path to PostgreSQL that a test can cut: a TCP proxy whose listening end sits in
a network namespace of its own, behind a veth pair, so that the client's packets cross a
real link. `cut()` takes the link down: the client's TCP gets no answer at all (no reset,
no ACK: a silent network fault), and the proxy's end, whose keepalives give up within a
few seconds as a server's `tcp_keepalives_*` would, drops the session on the server, so
PostgreSQL releases the client's locks. Needs root and `ip netns` (`NetCut.available()`).

    client (root ns) --veth--> proxy listener (netns) ... proxy --lo--> 127.0.0.1:5432
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import TypeVar

from tests.conftest import free_port

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
# The proxy's end notices a dead peer in about KEEPIDLE + KEEPINTVL * KEEPCNT seconds (or
# USER_TIMEOUT_MS with data unacknowledged): the server's side of a cut, with settings a
# site would give PostgreSQL (docs/scaling.md).
KEEPIDLE, KEEPINTVL, KEEPCNT, USER_TIMEOUT_MS = 1, 1, 2, 3000


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _in_netns(name: str, fn: Callable[[], T]) -> T:
    """fn() run by a thread that has entered the network namespace (setns is per thread)."""
    out: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            out.append(fn())
        except BaseException as exc:
            errors.append(exc)
        finally:
            os.close(fd)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]


class NetCut:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        tag = f"{os.getpid() % 100000}"
        self.ns, self.outer, self.inner = f"dccut{tag}", f"dcva{tag}", f"dcvb{tag}"
        net = 16 + os.getpid() % 200  # a /30 of its own among tests running side by side
        self.outer_ip, self.inner_ip = f"10.213.{net}.1", f"10.213.{net}.2"
        self.port = free_port()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    @staticmethod
    def available() -> str:
        """ "" if a namespace can be made here, else why not."""
        if os.geteuid() != 0:
            return "needs root (ip netns)"
        try:
            subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"ip netns does not work here: {exc}"
        return ""

    @property
    def address(self) -> str:
        """host:port for the client to connect to."""
        return f"{self.inner_ip}:{self.port}"

    def __enter__(self) -> NetCut:
        _ip("netns", "add", self.ns)
        try:
            _ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
            _ip("link", "set", self.inner, "netns", self.ns)
            _ip("addr", "add", f"{self.outer_ip}/30", "dev", self.outer)
            _ip("link", "set", self.outer, "up")
            _ip("-n", self.ns, "addr", "add", f"{self.inner_ip}/30", "dev", self.inner)
            _ip("-n", self.ns, "link", "set", self.inner, "up")
            _ip("-n", self.ns, "link", "set", "lo", "up")
            self._listener = _in_netns(self.ns, self._listen)
        except BaseException:
            self._teardown()
            raise
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.close()
        self._teardown()

    def _teardown(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            _ip("link", "del", self.outer)  # takes its peer with it
        with contextlib.suppress(subprocess.SubprocessError):
            _ip("netns", "del", self.ns)

    def cut(self) -> None:
        """Takes the link down: from now on nothing crosses it, in either direction."""
        _ip("link", "set", self.outer, "down")

    def _listen(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.inner_ip, self.port))
        s.listen(16)
        return s

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                near, _ = self._listener.accept()
            except OSError:
                return
            near.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            near.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPIDLE)
            near.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPINTVL)
            near.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPCNT)
            near.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
            try:
                far = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                near.close()
                continue
            far.settimeout(None)
            with self._lock:
                self._socks += [near, far]
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        """Copies until either end fails or closes, then closes both: the server's session
        ends when the client's end is found dead."""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
