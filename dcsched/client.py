"""The one small client of the daemon's API (HTTP+JSON on a Unix socket), used by dcsub,
dcctl and dctop. Stdlib only, so the CLI works on any host with the base install."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import quote, urlencode


class ClientError(Exception):
    """Root of the client's errors: each has a message a person can act on."""


class DaemonUnreachable(ClientError):
    pass


class ApiError(ClientError):
    def __init__(self, status: int, code: str, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


class _UnixConnection(http.client.HTTPConnection):
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


class Client:
    def __init__(self, socket_path: str, timeout: float = 15.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(
        self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None
    ) -> Any:
        if query:
            q = {k: v for k, v in query.items() if v is not None}
            if q:
                path += "?" + urlencode(q)
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except FileNotFoundError:
            raise DaemonUnreachable(
                f"no daemon socket at {self.socket_path}; is dcd running? (--socket, "
                "DCSCHED_SOCKET or the config's [daemon] socket pick another)"
            ) from None
        except (ConnectionRefusedError, PermissionError) as exc:
            raise DaemonUnreachable(
                f"cannot connect to {self.socket_path}: {exc.strerror}"
            ) from None
        except TimeoutError:
            raise DaemonUnreachable(
                f"the daemon at {self.socket_path} did not answer in {self.timeout:.0f} s"
            ) from None
        except OSError as exc:
            raise DaemonUnreachable(f"{self.socket_path}: {exc}") from None
        finally:
            conn.close()
        try:
            payload = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            raise ClientError(f"the daemon answered {resp.status} with non-JSON data") from None
        if resp.status >= 400:
            err = payload.get("error", {}) if isinstance(payload, dict) else {}
            details = {k: v for k, v in err.items() if k not in ("code", "message")}
            raise ApiError(
                resp.status,
                str(err.get("code", "error")),
                str(err.get("message", f"HTTP {resp.status}")),
                details,
            )
        return payload

    # Named calls, so that callers never spell paths.
    def health(self) -> dict[str, Any]:
        return dict(self.request("GET", "/v1/health"))

    def submit(self, spec: dict[str, Any]) -> int:
        return int(self.request("POST", "/v1/jobs", spec)["job_id"])

    def jobs(
        self, *, all_states: bool = False, user: str | None = None, state: str | None = None
    ) -> list[dict[str, Any]]:
        q = {"all": "1" if all_states else None, "user": user, "state": state}
        return list(self.request("GET", "/v1/jobs", query=q)["jobs"])

    def job(self, job_id: int | str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/jobs/{quote(str(job_id))}"))

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

    def node_action(self, host: str, action: str, reason: str = "") -> dict[str, Any]:
        body = {"reason": reason} if action == "drain" else None
        return dict(self.request("POST", f"/v1/nodes/{quote(host)}/{action}", body))

    def node_history(self, host: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/nodes/{quote(host)}/history"))

    def explain(self, job_id: int | str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/jobs/{quote(str(job_id))}/explain"))

    def fairshare(self) -> dict[str, Any]:
        return dict(self.request("GET", "/v1/fairshare"))

    def gpus(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/gpus")["gpus"])

    def cluster(self) -> dict[str, Any]:
        return dict(self.request("GET", "/v1/cluster"))
