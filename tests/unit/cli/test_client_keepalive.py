"""The client keeps its connection to the daemon between calls, and never sends a change
twice because of it: a kept connection the daemon closed meanwhile is replaced before
anything is sent on it (a real Unix socket server here)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcsched.client import Client, DaemonUnreachable


class Server:
    """HTTP/1.1 on a Unix socket. `plan` says what to do with each request in turn:
    "answer" (and keep the connection), "answer-close" (answer, then close it), "hangup"
    (read it and close without an answer). Counts connections and requests."""

    def __init__(self, path: str, plan: list[str]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen()
        self.plan = plan
        self.connections = 0
        self.closed = 0  # connections this server closed
        self.requests: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        try:
            self._requests(conn)
        finally:
            conn.close()
            self.closed += 1

    def _requests(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            while len(buf) < length:
                buf += conn.recv(65536)
            buf = buf[length:]
            self.requests.append(lines[0].split(" ")[0])
            what = self.plan.pop(0) if self.plan else "answer"
            if what == "hangup":
                return
            body = json.dumps({"job_id": len(self.requests), "jobs": []}).encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            if what == "answer-close":
                return


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[str, list[Server]]]:
    path = str(tmp_path / "d.sock")
    servers: list[Server] = []
    yield path, servers
    for s in servers:
        s.sock.close()


def test_calls_share_one_connection(serve: tuple[str, list[Server]]) -> None:
    path, servers = serve
    servers.append(s := Server(path, []))
    c = Client(path)
    assert [c.submit({"name": "x"}) for _ in range(3)] == [1, 2, 3]
    c.jobs()
    assert (s.connections, len(s.requests)) == (1, 4)
    c.close()
    c.jobs()
    assert s.connections == 2


def test_a_connection_the_daemon_closed_is_replaced_before_a_change_is_sent(
    serve: tuple[str, list[Server]],
) -> None:
    path, servers = serve
    servers.append(s := Server(path, ["answer-close"]))
    c = Client(path)
    c.jobs()
    deadline = time.monotonic() + 30
    while not s.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert c.submit({"name": "x"}) == 2  # on a new connection, sent once
    assert (s.connections, s.requests) == (2, ["GET", "POST"])


def test_a_change_lost_on_a_kept_connection_is_reported_not_repeated(
    serve: tuple[str, list[Server]],
) -> None:
    path, servers = serve
    servers.append(s := Server(path, ["answer", "hangup", "answer", "hangup"]))
    c = Client(path)
    c.jobs()
    with pytest.raises(DaemonUnreachable, match="may or may not have been done"):
        c.submit({"name": "x"})
    assert s.requests == ["GET", "POST"]
    c.jobs()
    c.jobs()  # lost on its kept connection: a read is asked again, on a new one
    assert s.requests == ["GET", "POST", "GET", "GET", "GET"]
