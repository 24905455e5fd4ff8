"""The one small client of the daemon's API, used by dcsub, dcctl and dctop: HTTP+JSON on
the local Unix socket, or over TLS to a list of daemons (a login node), with a token, where
it follows the leader. Stdlib only, so the CLI works on any host with the base install."""

from __future__ import annotations

import codecs
import contextlib
import http.client
import json
import os
import re
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

# The daemon writes a keep-alive comment at least this often on an idle event stream.
KEEPALIVE_S = 15.0
DEFAULT_PORT = 6818
TOKEN_FILE = "~/.dcsched/token"


class ClientError(Exception):
    """Root of the client's errors: each has a message a person can act on."""


class DaemonUnreachable(ClientError):
    pass


class ApiError(ClientError):
    def __init__(self, status: int, code: str, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


class UnixConnection(http.client.HTTPConnection):
    """HTTP over the daemon's Unix socket (for the client, the benchmarks and tests)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.unix_path)
        except OSError:
            s.close()
            raise
        self.sock = s


def _readable(sock: socket.socket) -> bool:
    """Whether `sock` has something to read now (for an idle connection: its end)."""
    try:
        ready, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):  # closed, or a descriptor select cannot take
        return True
    return bool(ready)


def server_url(address: str) -> str:
    """`head:6818`, `head` or `https://head:6818` as `https://head:6818`."""
    text = address.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
        raise ClientError(
            f"daemon address {address!r}: expected HOST:PORT or https://HOST:PORT "
            "(the API is served over TLS only)"
        )
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ClientError(f"daemon address {address!r}: the port is not a number") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"https://{host}:{port}"


def read_token(token_file: str = "") -> str | None:
    """$DCSCHED_TOKEN, else the token file (given, else ~/.dcsched/token); None if none."""
    env = os.environ.get("DCSCHED_TOKEN", "").strip()
    if env:
        return env
    path = Path(token_file or TOKEN_FILE).expanduser()
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        if token_file:
            raise ClientError(f"token file {token_file} not found; `dcctl token --save`") from None
        return None
    except OSError as exc:
        raise ClientError(f"token file {path}: {exc.strerror}") from None


def _with_query(path: str, query: dict[str, Any] | None) -> str:
    q = {k: v for k, v in (query or {}).items() if v is not None}
    return path + "?" + urlencode(q) if q else path


def _payload(status: int, raw: bytes) -> Any:
    """The JSON of an answer; an ApiError for an error status."""
    try:
        payload = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        raise ClientError(f"the daemon answered {status} with non-JSON data") from None
    if status >= 400:
        err = payload.get("error", {}) if isinstance(payload, dict) else {}
        if not isinstance(err, dict):
            err = {}
        details = {k: v for k, v in err.items() if k not in ("code", "message")}
        raise ApiError(
            status,
            str(err.get("code", "error")),
            str(err.get("message", f"HTTP {status}")),
            details,
        )
    return payload


def _standby(exc: ApiError) -> bool:
    return exc.status == 503 and exc.details.get("role") == "standby"


class Client:
    """The local socket (`socket_path`), or `servers` (`https://HOST:PORT`, tried in order;
    the one that leads is remembered and a standby's word on the leader is followed) with
    a token (default: read_token()) and a CA file for their certificates."""

    def __init__(
        self,
        socket_path: str = "",
        timeout: float = 15.0,
        *,
        servers: Sequence[str] = (),
        token: str | None = None,
        ca_file: str = "",
    ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.servers = [server_url(s) for s in servers]
        self.token = token
        self.ca_file = ca_file
        self._ssl: ssl.SSLContext | None = None
        self._current = 0  # the server that answered last: the leader, as far as we know
        # The socket's connection kept open between calls: a connection per call cost the
        # daemon as much again as the call itself (a submission: bench/daemon_scale.py).
        self._idle: dict[str | None, http.client.HTTPConnection] = {}

    @property
    def target(self) -> str:
        """What this client talks to, for messages: the socket or the servers."""
        return ",".join(self.servers) if self.servers else self.socket_path

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            try:
                self._ssl = ssl.create_default_context(cafile=self.ca_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise ClientError(f"CA file {self.ca_file}: {exc}") from None
        return self._ssl

    def _headers(self) -> dict[str, str]:
        if not self.servers:
            return {}
        if self.token is None:
            self.token = read_token() or ""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def connection(self, server: str | None, timeout: float) -> http.client.HTTPConnection:
        """A connection to a server (None: the Unix socket)."""
        if server is None:
            return UnixConnection(self.socket_path, timeout)
        parts = urlsplit(server)
        assert parts.hostname is not None
        return http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=self._tls()
        )

    def order(self) -> list[str | None]:
        """The servers to try, the last one that answered first; [None]: the socket."""
        if not self.servers:
            return [None]
        n = self._current % len(self.servers)
        return [*self.servers[n:], *self.servers[:n]]

    def answered(self, server: str | None) -> None:
        if server is not None:
            self._current = self.servers.index(server)

    def follow(self, exc: ApiError) -> None:
        """A standby said where the leader listens: try it too, next."""
        self.follow_url(str(exc.details.get("leader_url") or ""))

    def follow_url(self, url: str) -> None:
        if self.servers and url:
            with contextlib.suppress(ClientError):
                url = server_url(url)
                if url not in self.servers:
                    self.servers.append(url)

    def _unreachable(self, exc: OSError, server: str | None = None) -> DaemonUnreachable:
        """The one error, with a message a person can act on, for a daemon not there."""
        if server is not None:
            if isinstance(exc, ssl.SSLCertVerificationError):
                return DaemonUnreachable(
                    f"{server}: its certificate is not trusted ({exc.verify_message}); "
                    "pass the site's CA with --ca-file or $DCSCHED_CA_FILE"
                )
            if isinstance(exc, TimeoutError):
                return DaemonUnreachable(f"{server} did not answer in {self.timeout:.0f} s")
            return DaemonUnreachable(f"cannot connect to {server}: {exc.strerror or exc}")
        if isinstance(exc, FileNotFoundError):
            return DaemonUnreachable(
                f"no daemon socket at {self.socket_path}; is dcd running? (--socket, "
                "DCSCHED_SOCKET or the config's [daemon] socket pick another)"
            )
        if isinstance(exc, ConnectionRefusedError | PermissionError):
            return DaemonUnreachable(f"cannot connect to {self.socket_path}: {exc.strerror}")
        if isinstance(exc, TimeoutError):
            return DaemonUnreachable(
                f"the daemon at {self.socket_path} did not answer in {self.timeout:.0f} s"
            )
        return DaemonUnreachable(f"{self.socket_path}: {exc}")

    def _kept(self, server: str | None) -> http.client.HTTPConnection | None:
        """The connection kept open from the last call to `server`, unless the daemon has
        closed it meanwhile (idle too long, restarted): then None."""
        conn = self._idle.pop(server, None)
        if conn is not None and (conn.sock is None or _readable(conn.sock)):
            conn.close()  # an idle connection has nothing to read but its end
            return None
        return conn

    def _keep(self, server: str | None, conn: http.client.HTTPConnection) -> None:
        """Keeps a connection to the local socket for the next call, when both sides let it
        stay open (one: a call made meanwhile from another thread had its own). Not over
        TLS: a daemon that stops waits for each open TLS connection's close_notify."""
        if server is not None or conn.sock is None or self._idle.setdefault(None, conn) is not conn:
            conn.close()

    def close(self) -> None:
        """Closes the connections kept for the next call (also done when the client goes)."""
        while self._idle:
            _, conn = self._idle.popitem()
            conn.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # half-built, or at interpreter exit
            self.close()

    def request(
        self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None
    ) -> Any:
        """One call, to the leader: a server that cannot be reached or stands by is passed
        over for the next (a standby's answer to a read is kept, and returned if no leader
        answers: it is read from the store and marked as a standby's). A call that changes
        something is sent to the next only when the one before cannot have acted on it (no
        connection, or a standby's refusal): one lost after it was sent is reported, not
        repeated (its outcome is unknown). A connection to the socket stays open for the next
        call; one the daemon closed (idle too long, restarted) is noticed before anything is
        sent on it, except in the instant of the close itself: then a change is reported as
        lost, never sent twice."""
        path = _with_query(path, query)
        data = None if body is None else json.dumps(body).encode()
        headers = self._headers()
        if data is not None:
            headers["Content-Type"] = "application/json"
        errors: list[ClientError] = []
        tried: set[str | None] = set()
        fallback: tuple[str, Any] | None = None  # a standby's read: used if no leader answers
        while True:
            todo = [s for s in self.order() if s not in tried]
            if not todo:
                break
            server = todo[0]
            tried.add(server)
            conn = self._kept(server)
            reused = conn is not None
            if conn is None:
                conn = self.connection(server, self.timeout)
                try:
                    conn.connect()
                except OSError as exc:
                    conn.close()
                    errors.append(self._unreachable(exc, server))
                    continue
            try:
                try:
                    conn.request(method, path, body=data, headers=headers)
                except OSError:
                    if not reused:
                        raise
                    # A kept connection the daemon had closed just now: nothing was sent.
                    conn.close()
                    tried.discard(server)
                    continue
                try:
                    resp = conn.getresponse()
                except http.client.RemoteDisconnected:
                    if not (reused and method in ("GET", "HEAD")):
                        raise
                    conn.close()  # closed when it was reused; a read is safe to repeat
                    tried.discard(server)
                    continue
                raw = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                err = (
                    self._unreachable(exc, server)
                    if isinstance(exc, OSError)
                    else DaemonUnreachable(f"{server or self.socket_path}: {exc}")
                )
                if method not in ("GET", "HEAD"):
                    raise DaemonUnreachable(
                        f"{err} after the {method} {path.split('?')[0]} was sent: it may "
                        "or may not have been done; look (e.g. dcctl queue) before repeating"
                    ) from None
                errors.append(err)
                continue
            self._keep(server, conn)
            try:
                result = _payload(resp.status, raw)
            except ApiError as exc:
                if not (_standby(exc) and server is not None):
                    self.answered(server)
                    raise
                self.follow(exc)
                errors.append(exc)
                continue
            if server is not None and resp.getheader("X-Dcsched-Role") == "standby":
                self.follow_url(resp.getheader("X-Dcsched-Leader") or "")
                fallback = fallback or (server, result)
                continue
            self.answered(server)
            return result
        if fallback is not None:
            self.answered(fallback[0])
            return fallback[1]
        if len(errors) == 1:
            raise errors[0]
        standbys = [e for e in errors if isinstance(e, ApiError)]
        if standbys:
            raise standbys[-1]  # it says who leads
        raise DaemonUnreachable("no daemon answered: " + "; ".join(str(e) for e in errors))

    # Named calls, so that callers never spell paths.
    def health(self) -> dict[str, Any]:
        return dict(self.request("GET", "/v1/health"))

    def whoami(self) -> dict[str, Any]:
        """Who the daemon takes this client for: uid, user, admin."""
        return dict(self.request("GET", "/v1/whoami"))

    def new_token(self, lifetime_s: float | None = None) -> dict[str, Any]:
        """A token for remote calls as this user (the local socket only issues them)."""
        body = None if lifetime_s is None else {"lifetime_s": lifetime_s}
        return dict(self.request("POST", "/v1/tokens", body))

    def submit(self, spec: dict[str, Any], *, force: bool = False) -> int:
        """`force` (admins): queue it even when no node of the cluster could run it."""
        q = {"force": "1" if force else None}
        return int(self.request("POST", "/v1/jobs", spec, query=q)["job_id"])

    def jobs(
        self,
        *,
        all_states: bool = False,
        user: str | None = None,
        state: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[dict[str, Any]]:
        """Waiting and running jobs; `all_states` adds finished ones; `since`/`until` (Unix
        times) list only the jobs that ended in that window."""
        q = {
            "all": "1" if all_states else None,
            "user": user,
            "state": state,
            "since": None if since is None else repr(since),
            "until": None if until is None else repr(until),
        }
        return list(self.request("GET", "/v1/jobs", query=q)["jobs"])

    def job(self, job_id: int | str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/jobs/{quote(str(job_id))}"))

    def update(self, job_id: int | str, fields: dict[str, Any]) -> dict[str, Any]:
        """New time_limit, nice and/or qos; the job as it is now."""
        return dict(self.request("POST", f"/v1/jobs/{quote(str(job_id))}/update", fields))

    def job_action(self, job_id: int | str, action: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/v1/jobs/{quote(str(job_id))}/{action}"))

    def logs(
        self, job_id: int | str, node: int = 0, offset: int = -1, max_bytes: int = 65536
    ) -> dict[str, Any]:
        return dict(
            self.request(
                "GET",
                f"/v1/jobs/{quote(str(job_id))}/logs",
                query={"node": node, "offset": offset, "max_bytes": max_bytes},
            )
        )

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/nodes")["nodes"])

    def node_action(
        self, host: str, action: str, reason: str = "", requeue: bool = False
    ) -> dict[str, Any]:
        body: dict[str, Any] | None = {"reason": reason} if reason or action == "drain" else None
        if body is not None and requeue:
            body["requeue"] = True
        return dict(self.request("POST", f"/v1/nodes/{quote(host)}/{action}", body))

    def drain_history(self, host: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/nodes/{quote(host)}/drains"))

    def audit(
        self,
        user: str | None = None,
        since: float | None = None,
        limit: int | None = None,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        """Audit entries, newest first (an admin's query may name any user)."""
        q = {"user": user, "since": since, "limit": limit, "before": before}
        return list(self.request("GET", "/v1/audit", query=q)["entries"])

    def node_history(self, host: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/nodes/{quote(host)}/history"))

    def explain(self, job_id: int | str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/jobs/{quote(str(job_id))}/explain"))

    def fairshare(self) -> dict[str, Any]:
        return dict(self.request("GET", "/v1/fairshare"))

    def forecast(self, limit: int = 100) -> dict[int, float | None]:
        """job id -> when it would start (`GET /v1/forecast`), for the first `limit` pending
        jobs in priority order; None: not within the forecast."""
        got = self.request("GET", "/v1/forecast", query={"limit": limit})["jobs"]
        return {int(j["job_id"]): j["est_start"] for j in got}

    def gpus(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/gpus")["gpus"])

    def cluster(self) -> dict[str, Any]:
        return dict(self.request("GET", "/v1/cluster"))

    def accounting(self, **filters: Any) -> dict[str, Any]:
        """Finished jobs' accounting: user, account, state, since, until, limit."""
        return dict(self.request("GET", "/v1/accounting", query=filters))

    def node_events(self, host: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/nodes/{quote(host)}/events"))

    def efficiency(self, job_id: int | str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/jobs/{quote(str(job_id))}/efficiency"))

    def gpu_columns(self) -> dict[str, Any]:
        """Every GPU's telemetry as one list per field (`GET /v1/gpus?form=columns`). An
        older daemon answers its full rows instead: the answer then has "gpus", not "keys"."""
        return dict(self.request("GET", "/v1/gpus", query={"form": "columns"}))

    def jobs_by_id(self, ids: Iterable[int | str]) -> list[dict[str, Any]]:
        """These jobs' listing rows, any state; unknown ids are left out. An older daemon
        ignores `ids` and lists every waiting and running job."""
        q = {"ids": ",".join(str(i) for i in ids)}
        return list(self.request("GET", "/v1/jobs", query=q)["jobs"])

    def jobs_changed_since(self, cursor: str = "") -> dict[str, Any]:
        """The jobs that changed since `cursor` (`GET /v1/jobs?changed_since=`): `{"cursor",
        "reset", "jobs", "nodes_changed"}`; `reset` (always so for an empty cursor) means
        read everything, then ask from `cursor`. An older daemon ignores the query and lists
        every waiting and running job: the answer then has no "cursor"."""
        return dict(self.request("GET", "/v1/jobs", query={"changed_since": cursor}))

    def events(
        self,
        since: str | None = None,
        kinds: str | Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> EventStream:
        """Job and node changes as they happen (`GET /v1/events`), for as long as it is
        iterated. A dropped connection is reopened from the last cursor seen, after a short
        backoff; `timeout` (default: the client's) is how long the daemon may be gone before
        the stream gives up with DaemonUnreachable. The first connection is not retried: a
        daemon not there is reported at once, and an older daemon without the stream
        answers ApiError 404 at the first event. `close()` ends it, from any thread."""
        return EventStream(self, since, kinds, self.timeout if timeout is None else timeout)


# --- server-sent events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of `/v1/events`: `job`, `node`, `hello` (the first, when no cursor was
    given) or `reset` (the changes since the cursor are gone: re-read everything)."""

    kind: str
    cursor: str  # resume after this event with `since=cursor`
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "cursor": self.cursor, "data": self.data}


_LINE_END = re.compile(r"\r\n|\r|\n")


class SSEParser:
    """Incremental parser of a text/event-stream (the WHATWG rules): feed it bytes as they
    arrive, in chunks split anywhere, and it returns the events completed so far. Lines end
    in LF, CRLF or CR; `:` lines are comments; `data` lines join with newlines; the `id`
    persists from one event to the next (it is the cursor); `retry` is kept; an event
    without data is not dispatched. Data that is a JSON object is the event's data; other
    JSON is {"value": ...}, and text that is not JSON {"text": ...}."""

    def __init__(self, last_id: str = "") -> None:
        self.last_id = last_id
        self.retry_ms: int | None = None
        self.comments = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._started = False
        self._line = ""  # the incomplete last line
        self._after_cr = False  # a chunk ended in CR: an LF first in the next is the same end
        self._kind = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes | str) -> list[StreamEvent]:
        text = self._decoder.decode(chunk) if isinstance(chunk, bytes) else chunk
        if not text:
            return []
        if not self._started:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        self._after_cr = text.endswith("\r")
        *lines, self._line = _LINE_END.split(self._line + text)
        out = []
        for line in lines:
            ev = self._line_done(line)
            if ev is not None:
                out.append(ev)
        return out

    def _line_done(self, line: str) -> StreamEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._kind = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> StreamEvent | None:
        kind, data = self._kind or "message", self._data
        self._kind, self._data = "", []
        if not data:
            return None
        text = "\n".join(data)
        try:
            value = json.loads(text)
        except ValueError:
            return StreamEvent(kind, self.last_id, {"text": text})
        return StreamEvent(
            kind, self.last_id, value if isinstance(value, dict) else {"value": value}
        )


class EventStream:
    """The iterator `Client.events` returns; see there. `cursor` is the last cursor seen."""

    BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)

    def __init__(
        self,
        client: Client,
        since: str | None,
        kinds: str | Iterable[str] | None,
        timeout: float,
    ) -> None:
        self.client = client
        self.cursor = since or ""
        if kinds is not None and not isinstance(kinds, str):
            kinds = ",".join(kinds)
        self.kinds = kinds or None
        self.timeout = timeout
        self._pending: deque[StreamEvent] = deque()
        self._conn: http.client.HTTPConnection | None = None
        self._resp: http.client.HTTPResponse | None = None
        # The socket itself: the connection lets go of it when the response will close it.
        self._sock: socket.socket | None = None
        self._parser = SSEParser(self.cursor)
        self._connected_once = False
        self._passed = 0  # servers passed over before the first connection
        self._down_since: float | None = None  # when the connection was lost
        self._tries = 0
        self._closing = threading.Event()
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[StreamEvent]:
        return self

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Ends the stream; an iteration blocked in another thread stops."""
        self._closing.set()
        self._release()

    def _release(self) -> None:
        with self._lock:
            conn, resp, sock = self._conn, self._resp, self._sock
            self._conn, self._resp, self._sock = None, None, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a read blocked in another thread
        for closing in (resp, conn):
            if closing is not None:
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    closing.close()

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    def __next__(self) -> StreamEvent:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._closing.is_set():
                raise StopIteration
            resp = self._resp or self._open()
            if resp is None:
                continue  # it backed off; try again
            try:
                chunk = resp.read1(65536)
            except (OSError, http.client.HTTPException, ValueError, AttributeError):
                chunk = b""  # AttributeError: closed under us by close()
            if not chunk:
                self._lost()
                continue
            self._down_since, self._tries = None, 0
            self._pending.extend(self._parser.feed(chunk))
            # Resume after what was parsed: the events pending are given out all the same.
            self.cursor = self._parser.last_id

    def _open(self) -> http.client.HTTPResponse | None:
        """Connects; None after a failed reconnection and its backoff."""
        c = self.client
        path = _with_query("/v1/events", {"since": self.cursor or None, "kinds": self.kinds})
        # Idle streams carry a keep-alive every KEEPALIVE_S: a longer silence is a dead one.
        # With several servers, each try goes to the next one after a failure: the leader.
        server = c.order()[0]
        conn = c.connection(server, KEEPALIVE_S + c.timeout)
        try:
            conn.request("GET", path, headers={"Accept": "text/event-stream", **c._headers()})
            sock = conn.sock
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            err = (
                c._unreachable(exc, server)
                if isinstance(exc, OSError)
                else DaemonUnreachable(f"{server or c.socket_path}: {exc}")
            )
            self._failed(err, server)
            return None
        if resp.status >= 400:
            raw = resp.read()
            conn.close()
            try:
                _payload(resp.status, raw)
            except ApiError as exc:
                if not (_standby(exc) and server is not None):
                    raise
                c.follow(exc)
                self._failed(exc, server)
                return None
        ctype = resp.getheader("Content-Type", "")
        if not ctype.startswith("text/event-stream"):
            conn.close()
            raise ClientError(f"the daemon answered /v1/events with {ctype!r}, not events")
        with self._lock:
            if self._closing.is_set():
                resp.close()
                conn.close()
                return None
            self._conn, self._resp, self._sock = conn, resp, sock
        self._connected_once = True
        # A new connection starts a new event, but the cursor goes on.
        self._parser = SSEParser(self.cursor)
        return resp

    def _failed(self, err: ClientError, server: str | None) -> None:
        """A connection that did not open: the next server is tried (at once while some
        are left untried, else after a backoff)."""
        c = self.client
        if server is not None and len(c.servers) > 1:
            c._current = (c.servers.index(server) + 1) % len(c.servers)
            self._passed += 1
            if not self._connected_once:
                if self._passed >= len(c.servers):
                    raise err
                return
        elif not self._connected_once:
            raise err
        self._backoff(err)

    def _lost(self) -> None:
        self._release()
        if self._closing.is_set():
            return
        if self._down_since is None:
            self._down_since = time.monotonic()
        if self._tries:  # it dropped again at once: back off before the next try
            self._backoff(None)
        self._tries += 1

    def _backoff(self, err: ClientError | None) -> None:
        """Waits before the next connection; raises when the daemon has been gone too long."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        gone = now - self._down_since
        if gone >= self.timeout:
            raise DaemonUnreachable(
                f"{err or 'the event stream keeps dropping'} "
                f"(the event stream has been down for {gone:.0f} s)"
            )
        delay = self.BACKOFF_S[min(self._tries, len(self.BACKOFF_S) - 1)]
        self._tries += 1
        self._closing.wait(min(delay, self.timeout - gone))
