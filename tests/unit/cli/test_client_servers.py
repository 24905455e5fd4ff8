"""The client's list of daemons: addresses, the token it reads, and what it sends again to
the next daemon (real TLS sockets, a CA made here)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcsched.client import Client, ClientError, DaemonUnreachable, read_token, server_url
from tests.integration.test_broker_auth import make_test_ca


def test_addresses_are_https_with_the_default_port() -> None:
    assert server_url("head1") == "https://head1:6818"
    assert server_url(" head1:7000 ") == "https://head1:7000"
    assert server_url("https://[::1]:7000") == "https://[::1]:7000"
    for bad in ("http://head1:6818", "head1:port", "https://head1:6818/v1"):
        with pytest.raises(ClientError, match="daemon address"):
            server_url(bad)


def test_the_token_comes_from_the_environment_else_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "token"
    f.write_text("from-file\n")
    monkeypatch.setenv("DCSCHED_TOKEN", "from-env")
    assert read_token(str(f)) == "from-env"
    monkeypatch.delenv("DCSCHED_TOKEN")
    assert read_token(str(f)) == "from-file"
    with pytest.raises(ClientError, match="dcctl token --save"):
        read_token(str(tmp_path / "missing"))


class Hangup:
    """A TLS server that reads a request and closes without answering; counts requests."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.ctx = ctx
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    if tls.recv(65536):
                        self.requests += 1
                        self.answer(tls)
            except OSError:
                pass

    def answer(self, tls: ssl.SSLSocket) -> None:
        """Nothing: the connection closes unanswered."""


@pytest.fixture
def two_hangups(tmp_path: Path) -> Iterator[tuple[Hangup, Hangup, Path]]:
    ca, cert, key = make_test_ca(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    a, b = Hangup(ctx), Hangup(ctx)
    yield a, b, ca
    a.sock.close()
    b.sock.close()


def test_a_change_lost_after_it_was_sent_is_not_sent_to_the_next_daemon(
    two_hangups: tuple[Hangup, Hangup, Path],
) -> None:
    a, b, ca = two_hangups
    c = Client(servers=[f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], token="t", ca_file=str(ca))
    with pytest.raises(DaemonUnreachable, match="may or may not have been done"):
        c.submit({"name": "x"})
    assert (a.requests, b.requests) == (1, 0)
    with pytest.raises(DaemonUnreachable, match="no daemon answered"):
        c.jobs()  # a read is safe to ask the next
    assert (a.requests, b.requests) == (2, 1)


class Canned(Hangup):
    """A TLS server that answers every request with one canned HTTP response."""

    def __init__(self, ctx: ssl.SSLContext, body: bytes, headers: str = "") -> None:
        self.response = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{headers}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        super().__init__(ctx)

    def answer(self, tls: ssl.SSLSocket) -> None:
        tls.sendall(self.response)


def test_a_standbys_read_is_used_only_when_no_leader_answers(tmp_path: Path) -> None:
    ca, cert, key = make_test_ca(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    leader = Canned(ctx, b'{"jobs": [{"id": 2}]}')
    standby = Canned(
        ctx,
        b'{"jobs": [{"id": 1}], "standby": {"leader": "dcd@h2:1"}}',
        f"X-Dcsched-Role: standby\r\nX-Dcsched-Leader: https://127.0.0.1:{leader.port}\r\n",
    )
    try:
        # Only the standby is named: it says where the leader is, and the leader answers.
        c = Client(servers=[f"127.0.0.1:{standby.port}"], token="t", ca_file=str(ca))
        assert c.jobs() == [{"id": 2}]
        assert c.jobs() == [{"id": 2}]  # the leader first from now on
        assert (standby.requests, leader.requests) == (1, 2)
        leader.sock.shutdown(socket.SHUT_RDWR)  # the leader gone: the standby's copy
        leader.sock.close()
        assert c.request("GET", "/v1/jobs")["standby"] == {"leader": "dcd@h2:1"}
    finally:
        leader.sock.close()
        standby.sock.close()
