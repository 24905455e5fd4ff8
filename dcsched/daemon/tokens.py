"""Short-lived API tokens for remote clients (as Slurm's auth/jwt): the local Unix socket
issues one to the caller's uid (`POST /v1/tokens`, `dcctl token`), and the TLS listener
takes it in `Authorization: Bearer ...` as that caller.

A token is a JWT signed with HS256: `{"sun": user, "uid": uid, "iat": issued, "exp":
expiry}`. The key is `[daemon] token_key_file`, else derived from the cluster key, so that
every dcd of a site (leader and standbys) accepts the tokens of the others. Pure functions:
the clock is an argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

HEADER = {"alg": "HS256", "typ": "JWT"}
MAX_TOKEN_BYTES = 4096
# A token may be used this many seconds before its `iat` (clocks of two daemons differ).
CLOCK_SKEW_S = 60.0


class TokenError(Exception):
    """Why a token is refused, in words a person can act on."""


@dataclass(frozen=True, slots=True)
class Claims:
    uid: int
    user: str
    issued: float
    expires: float


def derive_key(cluster_key: bytes) -> bytes:
    """The token key from the cluster key: never the cluster key itself, so a token's
    signature says nothing about the key that signs the agents' commands."""
    return hmac.new(cluster_key, b"dcsched api tokens v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, signing_input: str) -> str:
    return _b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


def issue(key: bytes, uid: int, user: str, now: float, lifetime_s: float) -> str:
    claims = {"sun": user, "uid": uid, "iat": int(now), "exp": int(now + lifetime_s)}
    head = _b64(json.dumps(HEADER, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{head}.{body}.{_sign(key, f'{head}.{body}')}"


def verify(key: bytes, token: str, now: float) -> Claims:
    """The claims of a token this key signed and that has not expired; TokenError else."""
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError("the token is too long to be one of ours")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("not a token (expected three dot-separated parts, as `dcctl token`)")
    head, body, sig = parts
    if not hmac.compare_digest(_sign(key, f"{head}.{body}"), sig):
        raise TokenError("the token's signature does not match (another site's, or altered)")
    try:
        header = json.loads(_unb64(head))
        claims = json.loads(_unb64(body))
        uid, user = claims["uid"], claims["sun"]
        issued, expires = float(claims["iat"]), float(claims["exp"])
    except (ValueError, KeyError, TypeError):
        raise TokenError("the token's contents are not readable") from None
    if header != HEADER or not isinstance(uid, int) or not isinstance(user, str):
        raise TokenError("the token's header or claims are not ours")
    if now >= expires:
        raise TokenError("the token has expired; get a new one with `dcctl token` on the head")
    if issued > now + CLOCK_SKEW_S:
        raise TokenError("the token was issued in the future (check the daemons' clocks)")
    return Claims(uid, user, issued, expires)
