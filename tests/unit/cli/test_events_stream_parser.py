"""The client's side of `/v1/events`: the SSE parser, the reconnecting stream (against a
scripted server on a Unix socket), and dcctl's lines for events."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dcsched import client as client_module
from dcsched.cli.dcctl import _JobWatch, event_line
from dcsched.client import (
    ApiError,
    Client,
    DaemonUnreachable,
    EventStream,
    SSEParser,
    StreamEvent,
)


def feed_all(parser: SSEParser, *chunks: bytes | str) -> list[StreamEvent]:
    return [ev for c in chunks for ev in parser.feed(c)]


# --- the parser ---------------------------------------------------------------------------


def test_one_event_with_id_kind_and_json_data() -> None:
    evs = SSEParser().feed(b'id: e1-3\nevent: job\ndata: {"id": 42, "state": "RUNNING"}\n\n')
    assert evs == [StreamEvent("job", "e1-3", {"id": 42, "state": "RUNNING"})]


def test_chunks_split_anywhere_give_the_same_events() -> None:
    stream = (
        'id: e1-1\nevent: hello\ndata: {"cursor": "e1-1"}\n\n'
        ": keep-alive\n\n"
        'id: e1-2\nevent: node\ndata: {"host": "n1", "state": "offline", "note": "é"}\n\n'
    ).encode()
    whole = SSEParser().feed(stream)
    assert [e.kind for e in whole] == ["hello", "node"]
    for size in (1, 2, 3, 7):
        parts = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert feed_all(SSEParser(), *parts) == whole  # a UTF-8 character split too


def test_multi_line_data_joins_with_newlines() -> None:
    evs = SSEParser().feed('event: job\nid: c-1\ndata: {"id": 1,\ndata:  "state": "PENDING"}\n\n')
    assert evs == [StreamEvent("job", "c-1", {"id": 1, "state": "PENDING"})]
    (text,) = SSEParser().feed("data: first\ndata:second\ndata\n\n")
    assert text.data == {"text": "first\nsecond\n"}  # `data` alone is an empty line
    assert text.kind == "message"  # no event field: the default kind


def test_comments_are_counted_and_never_events() -> None:
    p = SSEParser()
    assert p.feed(": keep-alive\n\n: keep-alive\n\n:\n\n") == []
    assert p.comments == 3
    (ev,) = p.feed(': between fields\nevent: job\n: here too\ndata: {"id": 7}\n\n')
    assert ev == StreamEvent("job", "", {"id": 7})


def test_crlf_and_cr_line_ends_even_split_between_chunks() -> None:
    evs = feed_all(SSEParser(), "event: job\r", "\ndata: 1\r", "\r", "event: node\rdata: 2\r\n\r\n")
    assert [(e.kind, e.data) for e in evs] == [("job", {"value": 1}), ("node", {"value": 2})]


def test_the_id_persists_and_an_event_without_data_is_not_dispatched() -> None:
    p = SSEParser("start-0")
    assert p.feed("id: e-5\nevent: job\n\n") == []  # no data: nothing, but the id is kept
    assert p.last_id == "e-5"
    (ev,) = p.feed('event: job\ndata: {"id": 1}\n\n')
    assert ev.cursor == "e-5"
    assert p.feed("id: bad\x00id\nretry: 3000\nretry: soon\n\n") == []
    assert (p.last_id, p.retry_ms) == ("e-5", 3000)  # an id with NUL is ignored


def test_reset_event_carries_the_new_cursor() -> None:
    (ev,) = SSEParser("old-9").feed('id: new-0\nevent: reset\ndata: {"cursor": "new-0"}\n\n')
    assert (ev.kind, ev.cursor, ev.data) == ("reset", "new-0", {"cursor": "new-0"})


def test_an_incomplete_event_waits_for_its_blank_line() -> None:
    p = SSEParser()
    assert p.feed('id: a-1\nevent: job\ndata: {"id": 2}\n') == []
    assert p.feed("\n") == [StreamEvent("job", "a-1", {"id": 2})]


def test_a_leading_byte_order_mark_is_dropped() -> None:
    assert SSEParser().feed(b'\xef\xbb\xbfevent: job\ndata: {"id": 3}\n\n')[0].kind == "job"


# --- the stream, against a scripted server ------------------------------------------------

Script = Callable[[int, str], bytes | None]  # (connection number, request line) -> response


class FakeDaemon:
    """Answers each connection on a Unix socket with what `script` says, then closes it."""

    def __init__(self, path: Path, script: Script) -> None:
        self.path, self.script = path, script
        self.requests: list[str] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    more = conn.recv(4096)
                    if not more:
                        break
                    head += more
                line = head.split(b"\r\n", 1)[0].decode()
                self.requests.append(line)
                answer = self.script(len(self.requests), line)
                if answer is not None:
                    with contextlib.suppress(OSError):
                        conn.sendall(answer)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.path.unlink(missing_ok=True)
        self.thread.join(5)


def sse(body: str) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        + body.encode()
    )


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "d.sock"


def test_a_dropped_stream_resumes_from_the_last_cursor(sock_path: Path) -> None:
    def script(n: int, line: str) -> bytes:
        if n == 1:
            return sse(
                'id: e-0\nevent: hello\ndata: {"cursor": "e-0"}\n\n'
                'id: e-1\nevent: job\ndata: {"id": 1, "state": "PENDING"}\n\n'
            )
        if n == 2:
            return sse(": keep-alive\n\n")  # up, then dropped again with nothing new
        return sse('id: e-2\nevent: job\ndata: {"id": 1, "state": "STARTING"}\n\n')

    fake = FakeDaemon(sock_path, script)
    try:
        with Client(str(sock_path)).events(kinds=["job", "node"], timeout=10) as stream:
            got = [next(stream) for _ in range(3)]
        assert [(e.kind, e.cursor) for e in got] == [
            ("hello", "e-0"),
            ("job", "e-1"),
            ("job", "e-2"),
        ]
        assert fake.requests[0] == "GET /v1/events?kinds=job%2Cnode HTTP/1.1"
        assert fake.requests[1] == "GET /v1/events?since=e-1&kinds=job%2Cnode HTTP/1.1"
        assert fake.requests[2] == fake.requests[1]
    finally:
        fake.close()


class FakeClock:
    """The stream's clock, moved on only by its backoff waits: what it waits is exact,
    however slow the machine."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wait(self, seconds: float | None = None) -> bool:
        assert seconds is not None
        self.waits.append(seconds)
        self.now += seconds
        return False  # not closed


def on_clock(monkeypatch: pytest.MonkeyPatch, stream: EventStream) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(client_module, "time", clock)
    monkeypatch.setattr(stream._closing, "wait", clock.wait)
    return clock


def test_a_daemon_gone_longer_than_the_timeout_ends_the_stream(
    sock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeDaemon(sock_path, lambda n, line: sse('id: e-1\nevent: job\ndata: {"id": 1}\n\n'))
    stream = Client(str(sock_path)).events(since="e-0", timeout=1.0)
    clock = on_clock(monkeypatch, stream)
    assert next(stream).cursor == "e-1"
    fake.close()  # the socket file is gone: every reconnection fails
    with pytest.raises(DaemonUnreachable, match="no daemon socket"):
        next(stream)
    # It kept trying, backing off, for the whole timeout and not past it.
    assert len(clock.waits) >= 2
    assert sum(clock.waits) == pytest.approx(1.0)
    assert fake.requests == ["GET /v1/events?since=e-0 HTTP/1.1"]


def test_no_daemon_at_first_is_reported_at_once(
    sock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = Client(str(sock_path)).events(timeout=30)
    clock = on_clock(monkeypatch, stream)
    with pytest.raises(DaemonUnreachable, match="no daemon socket"):
        next(stream)
    assert clock.waits == []  # no retry, no backoff


NOT_FOUND = b'{"error": {"code": "http_404", "message": "Not Found"}}'
ANSWER_404 = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(NOT_FOUND), NOT_FOUND)
)


def test_an_older_daemon_answers_404(sock_path: Path) -> None:
    fake = FakeDaemon(sock_path, lambda n, line: ANSWER_404)
    try:
        with pytest.raises(ApiError) as err:
            next(Client(str(sock_path)).events())
        assert err.value.status == 404
        # `dcctl logs -f` then polls the job as before.
        assert _JobWatch.open(Client(str(sock_path))) is None
    finally:
        fake.close()


def test_close_from_another_thread_ends_a_blocked_read(sock_path: Path) -> None:
    held = threading.Event()
    # A server that keeps the connection open: a plain socket, answered by hand.
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(sock_path))
    srv.listen()
    conns: list[socket.socket] = []

    def accept() -> None:
        conn, _ = srv.accept()
        conns.append(conn)
        conn.recv(4096)
        conn.sendall(sse('id: e-0\nevent: hello\ndata: {"cursor": "e-0"}\n\n'))
        held.set()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    stream = Client(str(sock_path)).events()
    got: list[StreamEvent] = []
    reader = threading.Thread(target=lambda: got.extend(stream), daemon=True)
    reader.start()
    try:
        assert held.wait(10)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [e.kind for e in got] == ["hello"]
        stream.close()
        reader.join(10)
        assert not reader.is_alive()
        assert stream.closed
    finally:
        stream.close()
        for c in conns:
            c.close()
        srv.close()
        t.join(5)


# --- dcctl's lines ------------------------------------------------------------------------


def test_event_lines() -> None:
    now = time.mktime((2024, 1, 1, 12, 1, 2, 0, 0, -1))
    job = StreamEvent("job", "c-1", {"id": 42, "state": "RUNNING", "reason": "", "user": "u"})
    assert event_line(job, now) == "12:01:02  job 42  RUNNING"
    failed = StreamEvent(
        "job", "c-2", {"id": 43, "state": "FAILED", "reason": "node 0 (n1) ended with exit code 3"}
    )
    assert event_line(failed, now) == "12:01:02  job 43  FAILED  node 0 (n1) ended with exit code 3"
    node = StreamEvent("node", "c-3", {"host": "n1", "state": "offline"})
    assert event_line(node, now) == "12:01:02  node n1 offline"
    drained = StreamEvent("node", "c-4", {"host": "n1", "drained": True, "reason": "by root"})
    assert event_line(drained, now) == "12:01:02  node n1 drained (by root)"
    busy = {"host": "n1", "drained": True, "reason": "fw", "drain_state": "draining"}
    assert event_line(StreamEvent("node", "c-4", busy), now) == "12:01:02  node n1 draining (fw)"
    idle = {**busy, "drain_state": "drained"}
    assert event_line(StreamEvent("node", "c-4", idle), now) == "12:01:02  node n1 drained (fw)"
    resumed = StreamEvent("node", "c-5", {"host": "n1", "drained": False, "reason": ""})
    assert event_line(resumed, now) == "12:01:02  node n1 resumed"
    fault = StreamEvent("node", "c-6", {"host": "n2", "gpu_fault": 3})
    assert event_line(fault, now) == "12:01:02  node n2 GPU 3 fault"
    assert event_line(StreamEvent("hello", "c-0", {"cursor": "c-0"}), now) is None
    assert "reset" in (event_line(StreamEvent("reset", "d-0", {"cursor": "d-0"}), now) or "")
