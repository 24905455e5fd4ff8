"""The daemon's error root. Each error carries a stable code for the API's JSON answers."""

from __future__ import annotations

from typing import Any


class DaemonError(Exception):
    code = "internal"
    http_status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(DaemonError):
    code = "invalid_request"
    http_status = 400


class Unauthenticated(DaemonError):
    """A call on the TCP listener without a valid token."""

    code = "unauthenticated"
    http_status = 401


class PermissionDenied(DaemonError):
    code = "permission_denied"
    http_status = 403


class NoSuchThing(DaemonError):
    code = "not_found"
    http_status = 404


class Conflict(DaemonError):
    code = "conflict"
    http_status = 409


class Unavailable(DaemonError):
    code = "unavailable"
    http_status = 503
